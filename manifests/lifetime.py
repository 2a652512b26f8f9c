"""Worker processes that never outlive the process that started them.

A worker started with ``multiprocessing`` keeps running when its parent is killed
(``kill -9``, or ``SIGTERM``, whose default action skips every ``finally``): it goes on
downloading, may write into a work dir a re-run is already using, and blocks for good on
a result queue nobody reads. ``exit_with_parent`` is called first thing in the worker;
a daemon thread checks the parent's pid every ``poll_seconds`` and ends the worker at
once (``os._exit``, no clean-up of its own: the work it held was not stored, so a re-run
does it again, and the store's temporary files are swept by the next run).
"""

from __future__ import annotations

import os
import threading
import time

POLL_SECONDS = 0.5


def exit_with_parent(parent_pid: int, poll_seconds: float = POLL_SECONDS) -> threading.Thread:
    """End this process (exit code 1) as soon as ``parent_pid`` is no longer its parent.

    Exits at once when the parent is already gone. Works wherever ``os.getppid`` does
    (an orphan is re-parented to init or a subreaper). Returns the watching thread.
    """
    if os.getppid() != parent_pid:
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(poll_seconds)
            if os.getppid() != parent_pid:
                os._exit(1)

    thread = threading.Thread(target=watch, name="exit-with-parent", daemon=True)
    thread.start()
    return thread
