"""The record index (``indexes/records.json``) and group commit (``put_many``).

The index may never disagree with the records: every test changes the records behind
its back (another writer, a hand edit, a deletion, a corrupt file) and compares the
answers with a full read.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest

from manifests import Concept, GeneratedSource, ImageInfo, ManifestStore, Record, StageEvent, State
from manifests.record_index import RecordSummary, parse_index
from manifests.workdir import WorkDir


def make_record(index: int, group: str = "lemon-lime") -> Record:
    return Record(
        id=f"gen-{index:05d}",
        group=group,
        concepts=[Concept(name="lemon"), Concept(name="lime")],
        source=GeneratedSource(template="t {objects}", setting="on a table", seed=index),
    )


def full_read(store: ManifestStore) -> dict[str, RecordSummary]:
    """The summaries from opening every record: what the index must always equal."""
    return {record.id: RecordSummary.of(record) for record in store.iter()}


def counting_reads(store: ManifestStore, monkeypatch) -> list[str]:
    """The ids the store opens from now on, in order."""
    opened: list[str] = []
    read = store._read

    def spy(record_id):
        opened.append(record_id)
        return read(record_id)

    monkeypatch.setattr(store, "_read", spy)
    return opened


def test_summary_of_a_record_holds_state_group_kind_rejection_and_fingerprints():
    record = make_record(1, group="husky-wolf")
    assert RecordSummary.of(record) == RecordSummary("planned", "husky-wolf", "generated", None, ())
    record.image = ImageInfo(path="images/gen-00001.jpg", sha256="a" * 64, width=4, height=4)
    record.history.append(StageEvent(stage="scrape", params={"content_sha256": "b" * 64}))
    record.reject("quality", "masks_overlap")
    assert RecordSummary.of(record) == RecordSummary(
        "rejected", "husky-wolf", "generated", ("quality", "masks_overlap"), ("a" * 64, "b" * 64)
    )


def test_unchanged_records_are_not_opened_again(workdir, monkeypatch):
    store = ManifestStore(workdir)
    for index in range(6):
        store.put(make_record(index))
    assert store.counts().by_state == {"planned": 6}  # first use: reads all six, writes the index
    opened = counting_reads(store, monkeypatch)
    assert store.counts().by_state == {"planned": 6}
    assert opened == []
    store.put(make_record(2).reject("generate", "blank_image"))
    counts = store.counts()
    assert opened == ["gen-00002"]
    assert counts.by_state == {"planned": 5, "rejected": 1}
    assert counts.by_rejection == {("generate", "blank_image"): 1}


def test_changes_by_another_writer_are_seen(workdir):
    """Rewrites (same size too), deletions and new files made behind the index's back."""
    store = ManifestStore(workdir)
    for index in range(5):
        store.put(make_record(index))
    store.counts()
    other = ManifestStore(workdir)  # another process's view: does not touch the index
    generated = make_record(1).advance(State.generated, "generate")
    other.put(generated)
    same_size = make_record(3)
    same_size.group = "lemon-limf"  # one letter: the same number of bytes
    assert len(same_size.model_dump_json(indent=1)) == len(make_record(3).model_dump_json(indent=1))
    other.put(same_size)
    os.unlink(store.path(WorkDir.record("gen-00004")))
    other.put(make_record(7))
    assert store.summaries() == full_read(store)
    assert store.summaries()["gen-00003"].group == "lemon-limf"
    assert sorted(store.summaries()) == ["gen-00000", "gen-00001", "gen-00002", "gen-00003", "gen-00007"]
    assert [r.id for r in store.iter("generated")] == ["gen-00001"]


def test_a_hand_edit_in_place_is_seen(workdir):
    """An editor writing into the same file (same inode) changes its mtime: the record is read again."""
    store = ManifestStore(workdir)
    store.put(make_record(1))
    store.counts()
    path = store.path(WorkDir.record("gen-00001"))
    text = (
        Path(path)
        .read_text()
        .replace('"state": "planned"', '"state": "rejected"')
        .replace('"rejection": null', '"rejection": {"stage": "review", "reason": "other"}')
    )
    with open(path, "w") as f:  # same inode
        f.write(text)
    assert store.counts().by_state == {"rejected": 1}
    assert store.counts().by_rejection == {("review", "other"): 1}


def test_every_write_is_stamped_with_the_fine_clock(workdir, monkeypatch):
    """A record file's mtime is ``time.time_ns()`` at its write, not the kernel's coarse tick
    (older kernels stamp every write within a few ms alike), so a reused inode number cannot
    fake an old identity. Both ``put`` and ``put_many`` stamp."""
    import manifests.store as store_module

    stamps = iter(range(1_700_000_000_123_456_789, 1_700_000_000_123_456_799))
    monkeypatch.setattr(store_module.time, "time_ns", lambda: next(stamps))
    store = ManifestStore(workdir)
    path = store.path(WorkDir.record("gen-00001"))
    store.put(make_record(1))
    assert os.stat(path).st_mtime_ns == 1_700_000_000_123_456_789
    store.put_many([make_record(1)])
    assert os.stat(path).st_mtime_ns == 1_700_000_000_123_456_790


def test_verify_index_reports_no_drift_for_entries_that_are_merely_stale(workdir):
    store = ManifestStore(workdir)
    for index in range(3):
        store.put(make_record(index))
    store.counts()
    store.put(make_record(1).advance(State.generated, "generate"))  # the entry is now stale, not wrong
    assert store.verify_index() == []
    assert store.summaries() == full_read(store)


def test_verify_index_finds_a_forged_entry_and_rebuilds(workdir):
    """An entry whose file identity matches but whose content does not (only a forged index can
    have one) is what ``verify_index`` reports; afterwards the index is right again."""
    store = ManifestStore(workdir)
    for index in range(3):
        store.put(make_record(index))
    store.counts()
    path = store.path(WorkDir.RECORD_INDEX)
    document = json.loads(Path(path).read_text())
    document["records"]["gen-00001"][3] = "reviewed"  # the state column
    with open(path, "w") as f:
        json.dump(document, f)
    assert store.counts().by_state == {"planned": 2, "reviewed": 1}  # trusted: identities match
    assert store.verify_index() == ["gen-00001"]
    assert store.counts().by_state == {"planned": 3}
    assert store.verify_index() == []


@pytest.mark.parametrize("content", [b"", b"{not json", b'{"version": 99, "records": {}}', b'{"version": 1}'])
def test_a_bad_index_is_rebuilt_from_the_records(workdir, content):
    store = ManifestStore(workdir)
    for index in range(3):
        store.put(make_record(index))
    store.write_bytes(WorkDir.RECORD_INDEX, content)
    assert store.summaries() == full_read(store)
    assert sorted(parse_index(store.read_bytes(WorkDir.RECORD_INDEX))) == [
        "gen-00000",
        "gen-00001",
        "gen-00002",
    ]


def test_a_corrupt_record_is_reported_on_every_use_and_never_indexed(workdir, caplog):
    store = ManifestStore(workdir)
    store.put(make_record(1))
    store.write_bytes("records/gen-00002.json", b"{broken")
    for _ in range(2):
        counts = store.counts()
        assert counts.by_state == {"planned": 1}
        assert [e.path.rsplit("/", 1)[-1] for e in counts.unreadable] == ["gen-00002.json"]
    assert "gen-00002" not in parse_index(store.read_bytes(WorkDir.RECORD_INDEX))


def test_a_read_only_work_dir_still_answers(workdir, monkeypatch):
    store = ManifestStore(workdir)
    store.put(make_record(1))

    def refuse(path, data):
        raise PermissionError(13, "read-only file system", path)

    monkeypatch.setattr(store, "_write_atomic", refuse)
    assert store.counts().by_state == {"planned": 1}


def test_object_store_summaries_come_from_a_full_read():
    store = ManifestStore("memory://mcc-test-record-index")
    store.put_many(make_record(i) for i in range(3))
    store.put(make_record(1).advance(State.generated, "generate"))
    assert store.counts().by_state == {"planned": 2, "generated": 1}
    assert [r.id for r in store.iter([State.generated, State.planned])] == [
        "gen-00000",
        "gen-00001",
        "gen-00002",
    ]


def test_iter_several_states_in_id_order_opens_only_those(workdir, monkeypatch):
    store = ManifestStore(workdir)
    states = ["planned", "generated", "localized", "planned", "generated"]
    for index, state in enumerate(states):
        record = make_record(index)
        if state != "planned":
            record.advance(State.generated, "generate")
        if state == "localized":
            record.advance(State.localized, "localize")
        store.put(record)
    store.counts()
    opened = counting_reads(store, monkeypatch)
    assert [r.id for r in store.iter([State.localized, State.generated])] == [
        "gen-00001",
        "gen-00002",
        "gen-00004",
    ]
    assert opened == ["gen-00001", "gen-00002", "gen-00004"]
    assert [r.id for r in store.iter("planned")] == ["gen-00000", "gen-00003"]


def test_put_many_writes_every_record_and_indexes_them(workdir, monkeypatch):
    store = ManifestStore(workdir)
    monkeypatch.setattr(ManifestStore, "PUT_BATCH", 4)
    records = [make_record(i) for i in range(10)]
    assert store.put_many(records) == 10
    assert [store.get(r.id) for r in records] == records
    opened = counting_reads(store, monkeypatch)
    assert store.summaries() == {r.id: RecordSummary.of(r) for r in records}
    assert opened == []  # put_many indexed them
    assert not [n for n in os.listdir(store.path("records")) if n.endswith(".tmp")]


def test_put_many_syncs_once_per_batch(workdir, monkeypatch):
    import manifests.store as store_module

    syncs: list[str] = []
    monkeypatch.setattr(store_module, "_sync_file_system", syncs.append)
    monkeypatch.setattr(ManifestStore, "PUT_BATCH", 4)
    ManifestStore(workdir).put_many(make_record(i) for i in range(10))
    assert len(syncs) == 3  # batches of 4, 4, 2


def test_a_failing_batch_leaves_no_temporary_file_and_no_record_of_it(workdir, monkeypatch):
    import manifests.store as store_module

    def failing_sync(folder):
        raise OSError(5, "input/output error")

    store = ManifestStore(workdir)
    monkeypatch.setattr(store_module, "_sync_file_system", failing_sync)
    with pytest.raises(OSError, match="input/output"):
        store.put_many(make_record(i) for i in range(3))
    assert os.listdir(store.path("records")) == []


def test_a_process_killed_during_put_many_leaves_only_whole_records(workdir):
    """SIGKILL a plan of many batches at random moments: every record file parses, each
    id is either absent or complete, and the index agrees with a full read."""
    writer = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {os.getcwd()!r})
        from manifests import ManifestStore, Record, Concept, GeneratedSource
        ManifestStore.PUT_BATCH = 200
        store = ManifestStore({str(workdir)!r})
        def records():
            for index in range(100_000):
                if index == 400:
                    print("two batches written", flush=True)
                r = Record(id=f"gen-{{index:06d}}", group="g", concepts=[Concept(name="a"), Concept(name="b")],
                           source=GeneratedSource(template="t", setting="s", seed=index))
                r.log("test", "x" * 2000)
                yield r
        store.put_many(records())
    """)
    store = ManifestStore(workdir)
    for delay in (0.0, 0.05, 0.2):
        child = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "two batches written"
        time.sleep(delay)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        ids = store.ids()
        assert len(ids) >= 200
        records = list(store.iter())  # parses every file
        assert [r.id for r in records] == ids
        assert all(len(r.history[-1].note) == 2000 for r in records)
        assert store.summaries() == {r.id: RecordSummary.of(r) for r in records}
    store.sweep_temporary()
    assert not [n for n in os.listdir(store.path("records")) if n.startswith(".")]


def test_plan_and_status_agree_with_a_full_read(workdir):
    from manifests import add_planned, load_groups, plan_scenes

    store = ManifestStore(workdir)
    specs = plan_scenes(load_groups()[:3], per_group=5, seed=0)
    assert add_planned(store, specs) == (15, 0)
    assert add_planned(store, specs + specs[:2]) == (0, 17)
    by_group = Counter(s.group for s in store.summaries().values())
    assert by_group == Counter(spec.group for spec in specs)
    assert store.summaries() == full_read(store)
