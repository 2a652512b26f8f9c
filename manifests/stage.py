"""The stage contract and the one runner that stores what stages return.

A **stage** is an object that turns a batch of records in the state it accepts into
records in the next state, or rejected with a reason code. It reads the store (images,
earlier records) but never writes it::

    class Stage(Protocol):
        name: str                   # "generate", "localize", ... (the history's stage name)
        accepts: tuple[State, ...]  # the states it takes; others are skipped, untouched
        batch_size: int             # records per ``run`` call

        def run(self, batch: list[Record], store: ManifestStore) -> Iterable[Output]: ...
        def takes(self, record: Record) -> bool: ...  # optional: e.g. only generated sources
        def finish(self, store) -> dict[str, bytes]: ...  # optional: files written after the last batch

``run`` may yield its outputs as they finish (the scraper does, while downloads are in
flight) or return a list; it gets deep copies, so a record it half-changed before
raising is never stored. ``Output.files`` are written (atomically) before the record
that refers to them, so a record never points at a missing file. ``Output(record,
unchanged=True)`` returns a record the stage looked at and left as it was (a review
still pending): it is not written again.

**The runner** (``run_stage``) selects the records in the accepted states (from the
store, or from a given list), batches them, calls the stage, writes every output as soon
as the stage yields it, and reports progress. An exception in ``run`` is retried record
by record; a record that still fails is stored ``rejected`` by that stage with reason
``error`` and the exception as the detail, and the batch goes on. Re-running a stage
resumes: records already past it are not in its accepted states.

The CLI commands and the Prefect flows both call ``run_stage``; only the runner calls
``store.put`` for a stage.
"""

from __future__ import annotations

import contextvars
import hashlib
import logging
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from PIL import Image

from manifests.record import ImageInfo, Record, State
from manifests.store import ManifestStore, png_bytes
from manifests.workdir import WorkDir

logger = logging.getLogger(__name__)

ERROR = "error"
"""The reason code of a record whose stage raised on it (the detail holds the exception)."""


@dataclass
class Output:
    """One finished record and the files it refers to (relative path in the work dir -> bytes)."""

    record: Record
    files: dict[str, bytes] = field(default_factory=dict)
    unchanged: bool = False  # looked at, left as it was: not written again


def with_image(record: Record, image: Image.Image) -> Output:
    """The output of a record with a new image: ``images/<id>.png``, and ``record.image`` set to it."""
    data = png_bytes(image)
    path = WorkDir.image(record.id)
    record.image = ImageInfo(
        path=path, sha256=hashlib.sha256(data).hexdigest(), width=image.width, height=image.height
    )
    return Output(record, {path: data})


@runtime_checkable
class Stage(Protocol):
    """See the module docstring: a batch of records in, finished records (``Output``) out."""

    name: str
    accepts: tuple[State, ...]
    batch_size: int

    def run(self, batch: list[Record], store: ManifestStore) -> Iterable[Output]: ...


@dataclass
class StageRun:
    """What one ``run_stage`` call did: the stored records in input order, and counts."""

    stage: str
    records: list[Record]
    skipped: int = 0
    errors: int = 0


Progress = Callable[[Record], None]
"""Called with each record right after it is stored (from the runner's writer threads, one at a time).
If it has a ``start(total)`` method, the runner first calls it with the number of records to process."""


def select(store: ManifestStore, states: Sequence[State], where: Callable[[Record], bool] | None = None):
    """The store's records in ``states`` (id order) that ``where`` accepts."""
    return [r for r in store.iter(states) if where is None or where(r)]


def run_stage(
    stage: Stage,
    store: ManifestStore,
    records: Iterable[Record] | None = None,
    *,
    where: Callable[[Record], bool] | None = None,
    limit: int | None = None,
    progress: Progress | None = None,
) -> StageRun:
    """Run ``stage`` over ``records`` (default: every record of ``store`` it accepts) and store the results.

    Records not in ``stage.accepts`` (or refused by ``where``) are skipped untouched and
    counted. ``limit`` caps the records processed. Outputs are written as the stage yields
    them, by group commit on a writer thread (``_Writer``); each record after its files.
    Returns the processed records as stored, in input order.
    """
    store.sweep_temporary()  # what a killed run left half-written never lingers
    accepts = tuple(State(s) for s in stage.accepts)
    takes = getattr(stage, "takes", None)
    given = list(records) if records is not None else select(store, accepts, takes)
    todo = [
        r for r in given if r.state in accepts and (takes is None or takes(r)) and (where is None or where(r))
    ]
    skipped = len(given) - len(todo)
    if limit is not None:
        todo = todo[:limit]
    if progress is not None and hasattr(progress, "start"):
        progress.start(len(todo))
    stored: dict[str, Record] = {}
    writer = _Writer(store, stored, progress)
    errors = 0
    try:
        for start in range(0, len(todo), max(1, stage.batch_size)):
            errors += _run_batch(stage, store, todo[start : start + stage.batch_size], writer)
        writer.drain()
        finish = getattr(stage, "finish", None)
        for relative, data in (finish(store) if finish is not None else {}).items():
            store.write_bytes(relative, data)
    finally:
        writer.close()
    return StageRun(stage.name, [stored.get(r.id, r) for r in todo], skipped=skipped, errors=errors)


def _run_batch(stage: Stage, store: ManifestStore, batch: list[Record], writer: _Writer) -> int:
    """Run one batch; on an exception retry the unfinished records alone. Returns the records rejected ``error``.

    Only the stage's exceptions are caught: a failed write (disk full) stops the run.
    """
    pending = {r.id: r for r in batch}
    outputs = _outputs(stage.run([r.model_copy(deep=True) for r in batch], store))
    while True:
        try:
            output = next(outputs, None)
            if output is None:
                if pending:
                    raise RuntimeError(
                        f"stage {stage.name!r} returned no result for {sorted(pending)}; a stage returns "
                        "every record of its batch (rejected if it cannot process it)"
                    )
                return 0
            if pending.pop(output.record.id, None) is None:
                raise RuntimeError(
                    f"stage {stage.name!r} returned record {output.record.id}, which was not in its batch "
                    "or came twice; a stage returns each record of its batch once"
                )
        except Exception as error:  # noqa: BLE001 - one record must never stop the batch
            return _after_error(stage, store, batch, list(pending.values()), error, writer)
        writer.submit(output)


def _after_error(
    stage: Stage,
    store: ManifestStore,
    batch: list[Record],
    left: list[Record],
    error: Exception,
    writer: _Writer,
) -> int:
    if len(batch) > 1:
        logger.warning(
            "stage %s failed on a batch of %d (%s); retrying the %d unfinished record(s) one by one",
            stage.name,
            len(batch),
            error,
            len(left),
        )
        return sum(_run_batch(stage, store, [record], writer) for record in left)
    if not left:  # the one record was returned, then the stage failed: it stands
        logger.warning("stage %s raised after returning its record: %s", stage.name, error)
        return 0
    record = left[0].model_copy(deep=True)
    logger.error("stage %s failed on %s: %s: %s", stage.name, record.id, type(error).__name__, error)
    record.reject(stage.name, ERROR, f"{type(error).__name__}: {error}")
    writer.submit(Output(record))
    return 1


def _outputs(result: Iterable[Output | Record]) -> Iterator[Output]:
    for item in result:
        yield item if isinstance(item, Output) else Output(item)


class _Writer:
    """Stores outputs on one background thread by group commit, then calls ``progress``.

    Each commit takes every output the stage has yielded since the last one (at most
    ``GROUP``) and writes them with one disk sync (``ManifestStore.write_group``: each
    file and record atomically, files before the records that refer to them). When the
    stage yields slowly (a GPU stage) a group is one record, written at once; when it
    yields fast (the scraper) groups grow and the syncs no longer cost per record. A
    killed run loses at most the outputs not yet committed; ``progress`` only ever counts
    committed ones. At the end the written records are merged into the record index.
    """

    GROUP = 256

    def __init__(self, store: ManifestStore, stored: dict[str, Record], progress: Progress | None):
        self.store, self.stored, self.progress = store, stored, progress
        self._queue: queue.Queue[Output | None] = queue.Queue(maxsize=4 * self.GROUP)
        self._error: BaseException | None = None
        self._written: dict = {}
        # in a copy of the caller's context: progress callbacks may need it (a Prefect run's logger)
        context = contextvars.copy_context()
        self._thread = threading.Thread(
            target=context.run, args=(self._loop,), name="mcc-stage-writer", daemon=True
        )
        self._thread.start()

    def submit(self, output: Output) -> None:
        if self._error is not None:
            raise self._error  # a failed write (disk full, permissions) stops the run
        self._queue.put(output)

    def _loop(self) -> None:
        ending = False
        while not ending:
            group = [self._queue.get()]
            while group[-1] is not None and len(group) < self.GROUP:
                try:
                    group.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            ending = group[-1] is None
            outputs = [o for o in group if o is not None]
            if outputs and self._error is None:  # after an error: only empty the queue
                try:
                    self._commit(outputs)
                except BaseException as error:  # noqa: BLE001 - handed to the stage's thread
                    self._error = error

    def _commit(self, outputs: list[Output]) -> None:
        changed = [o for o in outputs if not o.unchanged]
        files = {relative: data for o in changed for relative, data in o.files.items()}
        self._written.update(self.store.write_group(files, [o.record for o in changed]))
        for output in outputs:
            self.stored[output.record.id] = output.record
            if self.progress is not None:
                self.progress(output.record)

    def drain(self) -> None:
        """Wait until every submitted output is written; raise the error of a failed write."""
        self.close()
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        if self._written and self._error is None:
            self.store.merge_index(self._written)
            self._written = {}
