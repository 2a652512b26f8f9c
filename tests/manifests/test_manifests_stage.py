"""The stage contract and the runner (``manifests.stage``): what is written, when, and what a failure leaves."""

from __future__ import annotations

import pytest
from PIL import Image

from manifests.record import Concept, GeneratedSource, Record, State
from manifests.stage import ERROR, Output, run_stage, with_image
from manifests.store import ManifestStore


def planned(record_id: str, seed: int = 0) -> Record:
    return Record(
        id=record_id,
        group="lemon-lime",
        concepts=[Concept(name="lemon"), Concept(name="lime")],
        source=GeneratedSource(template="t", setting="s", seed=seed),
    )


class RecordingStore(ManifestStore):
    """A store that logs every write, in order: ("file", path) or ("record", id), and each
    group commit's contents (``write_group`` renames its files before its records: tested
    in test_manifests_record_index.py)."""

    def __init__(self, workdir):
        super().__init__(workdir)
        self.writes: list[tuple[str, str]] = []
        self.groups: list[list[str]] = []

    def put(self, record):
        self.writes.append(("record", record.id))
        super().put(record)

    def write_group(self, files, records):
        self.writes.extend([("file", relative) for relative in files] + [("record", r.id) for r in records])
        self.groups.append([r.id for r in records])
        return super().write_group(files, records)

    def write_bytes(self, relative, data):
        self.writes.append(("file", relative))
        return super().write_bytes(relative, data)


class Painter:
    """A generator stage: a flat image per record; ``fail_on`` ids raise after half-changing the record."""

    name = "paint"
    accepts = (State.planned,)

    def __init__(self, batch_size: int = 2, fail_on: tuple[str, ...] = (), finish_files: dict | None = None):
        self.batch_size = batch_size
        self.fail_on = fail_on
        self.calls: list[list[str]] = []
        self.finish_files = finish_files or {}
        self.finish_saw: list[str] = []

    def run(self, batch, store):
        self.calls.append([r.id for r in batch])
        for record in batch:
            if record.id in self.fail_on:
                record.concepts[0].boxes = [(0, 0, 1, 1)]  # a half-done change that must never be stored
                raise ValueError(f"boom on {record.id}")
            output = with_image(record, Image.new("RGB", (8, 6), (record.source.seed, 0, 0)))
            record.advance(State.generated, self.name, params={"seed": record.source.seed})
            yield output

    def finish(self, store):
        self.finish_saw = store.ids()
        return self.finish_files


def test_files_are_written_before_their_record_and_every_record_once(tmp_path):
    store = RecordingStore(tmp_path)
    records = [planned(f"gen-{i}", seed=i) for i in range(3)]
    run = run_stage(Painter(batch_size=2), store, records)
    assert sorted(store.writes) == sorted(
        [("file", f"images/gen-{i}.png") for i in range(3)] + [("record", f"gen-{i}") for i in range(3)]
    )
    for i in range(3):
        assert store.writes.index(("file", f"images/gen-{i}.png")) < store.writes.index(
            ("record", f"gen-{i}")
        )
    assert [r.id for r in run.records] == ["gen-0", "gen-1", "gen-2"] and {r.state for r in run.records} == {
        State.generated
    }
    saved = store.get("gen-2")
    assert saved.state == State.generated and store.open_image(saved).getpixel((0, 0)) == (2, 0, 0)
    assert all(r.state == State.planned for r in records)  # the caller's objects are not changed


def test_the_runner_cuts_batches_of_the_stage_batch_size(tmp_path):
    stage = Painter(batch_size=2)
    run_stage(stage, ManifestStore(tmp_path), [planned(f"gen-{i}", seed=i) for i in range(5)])
    assert stage.calls == [["gen-0", "gen-1"], ["gen-2", "gen-3"], ["gen-4"]]


def test_a_failing_record_is_rejected_with_the_error_and_the_batch_goes_on(tmp_path):
    store = ManifestStore(tmp_path)
    stage = Painter(batch_size=3, fail_on=("gen-1",))
    run = run_stage(stage, store, [planned(f"gen-{i}", seed=i) for i in range(3)])
    # the batch stopped at gen-1; gen-0 was already stored, gen-1 and gen-2 are retried one by one
    assert stage.calls == [["gen-0", "gen-1", "gen-2"], ["gen-1"], ["gen-2"]]
    assert run.errors == 1 and [r.state for r in run.records] == [
        State.generated,
        State.rejected,
        State.generated,
    ]
    bad = store.get("gen-1")
    assert (bad.state, bad.rejection.stage, bad.rejection.reason) == (State.rejected, "paint", ERROR)
    assert bad.rejection.detail == "ValueError: boom on gen-1"
    assert bad.concepts[0].boxes == []  # the stage's half-done change was not stored
    assert [r.rejection.reason for r in run.records if r.rejection] == [ERROR]


def test_records_the_stage_does_not_take_are_skipped_untouched(tmp_path):
    store = RecordingStore(tmp_path)
    done = planned("gen-done")
    done.state = State.generated
    web = planned("web-x")

    class OnlyGenerated(Painter):
        def takes(self, record):
            return record.id.startswith("gen-")

    run = run_stage(OnlyGenerated(), store, [planned("gen-a"), done, web])
    assert [r.id for r in run.records] == ["gen-a"] and run.skipped == 2
    assert ("record", "gen-done") not in store.writes and ("record", "web-x") not in store.writes


def test_without_records_the_runner_selects_the_accepted_ones_from_the_store_and_resumes(tmp_path):
    store = ManifestStore(tmp_path)
    for i in range(3):
        store.put(planned(f"gen-{i}", seed=i))
    first = run_stage(Painter(), store, limit=2)
    assert [r.id for r in first.records] == ["gen-0", "gen-1"]
    second = run_stage(Painter(), store)
    assert [r.id for r in second.records] == ["gen-2"]  # only what is left
    assert run_stage(Painter(), store).records == []
    assert store.counts().by_state == {"generated": 3}


def test_finish_files_are_written_after_every_record(tmp_path):
    store = RecordingStore(tmp_path)
    stage = Painter(finish_files={"reports/paint.json": b"{}"})
    run_stage(stage, store, [planned("gen-0"), planned("gen-1", seed=1)])
    assert store.writes[-1] == ("file", "reports/paint.json")
    assert stage.finish_saw == ["gen-0", "gen-1"]  # finish sees the store with every record written
    assert store.read_bytes("reports/paint.json") == b"{}"


def test_progress_gets_the_total_then_each_stored_record(tmp_path):
    events = []

    class Progress:
        def start(self, total):
            events.append(("start", total))

        def __call__(self, record):
            events.append(("stored", record.id, record.state.value))

    run_stage(
        Painter(), ManifestStore(tmp_path), [planned("gen-0"), planned("gen-1", seed=1)], progress=Progress()
    )
    assert events == [("start", 2), ("stored", "gen-0", "generated"), ("stored", "gen-1", "generated")]


def test_an_unchanged_output_is_not_written(tmp_path):
    store = RecordingStore(tmp_path)

    class Looker:
        name, accepts, batch_size = "look", (State.planned,), 10

        def run(self, batch, store):
            return [Output(record, unchanged=True) for record in batch]

    run = run_stage(Looker(), store, [planned("gen-0")])
    assert store.writes == [] and [r.id for r in run.records] == ["gen-0"]


def _contract_breaker(answer):
    class Broken:
        name, accepts, batch_size = "broken", (State.planned,), 2

        def __init__(self):
            self.calls: list[list[str]] = []

        def run(self, batch, store):
            self.calls.append([r.id for r in batch])
            for record in batch:
                record.advance(State.generated, "broken")
            return answer(batch)

    return Broken()


def test_a_record_from_outside_the_batch_rejects_the_batch_records_and_is_never_stored(tmp_path):
    store = ManifestStore(tmp_path)
    stage = _contract_breaker(lambda batch: [planned("gen-other")])
    run = run_stage(stage, store, [planned("gen-0"), planned("gen-1", seed=1)])
    assert stage.calls == [["gen-0", "gen-1"], ["gen-0"], ["gen-1"]]  # the batch, then one by one
    for record in run.records:
        saved = store.get(record.id)
        assert saved.state == State.rejected and saved.rejection.reason == ERROR
        assert "returned record gen-other, which was not in its batch" in saved.rejection.detail
    assert not store.exists("gen-other") and run.errors == 2


def test_a_record_left_out_is_retried_alone(tmp_path):
    store = ManifestStore(tmp_path)
    stage = _contract_breaker(lambda batch: batch[:1])  # drops all but the first record of a batch
    run = run_stage(stage, store, [planned("gen-0"), planned("gen-1", seed=1)])
    assert stage.calls == [["gen-0", "gen-1"], ["gen-1"]]
    assert [r.state for r in run.records] == [State.generated, State.generated] and run.errors == 0


def test_a_record_returned_twice_is_stored_once(tmp_path):
    store = ManifestStore(tmp_path)
    stage = _contract_breaker(lambda batch: batch + batch)
    run = run_stage(stage, store, [planned("gen-0"), planned("gen-1", seed=1)])
    assert stage.calls == [["gen-0", "gen-1"]]  # both were stored before the repeat: nothing to retry
    assert [store.get(r.id).state for r in run.records] == [State.generated, State.generated]


def test_a_stage_that_never_answers_a_record_rejects_it_saying_so(tmp_path):
    store = ManifestStore(tmp_path)
    stage = _contract_breaker(lambda batch: [])
    run_stage(stage, store, [planned("gen-0")])
    saved = store.get("gen-0")
    assert saved.state == State.rejected and "returned no result for ['gen-0']" in saved.rejection.detail


def test_a_failed_write_stops_the_run_instead_of_rejecting_records(tmp_path):
    class FullDisk(ManifestStore):
        def write_group(self, files, records):
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        run_stage(Painter(), FullDisk(tmp_path), [planned("gen-0")])


def test_group_commit_stores_everything_and_keeps_the_input_order(tmp_path):
    store = RecordingStore(tmp_path)
    records = [planned(f"gen-{i:02d}", seed=i) for i in range(20)]
    seen = []
    run = run_stage(Painter(batch_size=7), store, records, progress=seen.append)
    assert [r.id for r in run.records] == [r.id for r in records] and len(seen) == 20
    assert sorted(i for group in store.groups for i in group) == [r.id for r in records]
    assert store.counts().by_state == {"generated": 20}
    assert all(store.open_image(store.get(r.id)).getpixel((0, 0))[0] == r.source.seed for r in records)


def test_progress_runs_in_the_callers_context(tmp_path):
    """The writer thread calls ``progress`` in a copy of the caller's context, where a Prefect
    task's run context (and so ``get_run_logger``) lives."""
    import contextvars

    current = contextvars.ContextVar("current", default="none")
    current.set("the caller's run")
    seen = []
    run_stage(
        Painter(), ManifestStore(tmp_path), [planned("gen-0")], progress=lambda r: seen.append(current.get())
    )
    assert seen == ["the caller's run"]
