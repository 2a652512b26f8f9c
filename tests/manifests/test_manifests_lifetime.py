"""``exit_with_parent`` in this process, with ``os.getppid`` and ``os._exit`` replaced (the crash test in
``tests/generators`` kills a real parent; this one pins the checks mutmut can see)."""

from __future__ import annotations

import os

import pytest

from manifests import lifetime


class Exited(SystemExit):
    pass


@pytest.fixture
def exits(monkeypatch):
    codes: list[int] = []

    def fake_exit(code):
        codes.append(code)
        raise Exited(code)  # ends the calling thread, as os._exit would end the process

    monkeypatch.setattr(os, "_exit", fake_exit)
    return codes


def test_a_worker_whose_parent_is_already_gone_exits_at_once(monkeypatch, exits):
    monkeypatch.setattr(os, "getppid", lambda: 1)  # re-parented to init
    with pytest.raises(Exited):
        lifetime.exit_with_parent(4242)
    assert exits == [1]


@pytest.mark.filterwarnings(
    "ignore::pytest.PytestUnhandledThreadExceptionWarning"
)  # the watch "exits" by raising
def test_the_watch_exits_once_the_parent_changes_and_not_before(monkeypatch, exits):
    parents = iter([4242, 4242, 4242, 1])  # the first check, two polls with the parent alive, then init
    checks: list[int] = []

    def getppid():
        checks.append(1)
        return next(parents, 1)

    monkeypatch.setattr(os, "getppid", getppid)
    thread = lifetime.exit_with_parent(4242, poll_seconds=0.01)
    assert thread.daemon and thread.name == "exit-with-parent"
    thread.join(timeout=5)
    assert not thread.is_alive() and exits == [1] and len(checks) == 4
