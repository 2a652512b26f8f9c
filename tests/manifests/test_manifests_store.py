import json
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from PIL import Image

from manifests import (
    Concept,
    GeneratedSource,
    ManifestStore,
    Record,
    RecordLoadError,
    State,
    decode_mask,
    encode_mask,
)


def make_record(index: int, note_size: int = 0) -> Record:
    record = Record(
        id=f"gen-{index:04d}",
        group="lemon-lime",
        concepts=[Concept(name="lemon"), Concept(name="lime")],
        source=GeneratedSource(template="t {objects}", setting="on a table", seed=index),
    )
    if note_size:
        record.log("test", "x" * note_size)
    return record


def test_put_get_roundtrip_and_iter_by_state(workdir):
    store = ManifestStore(workdir)
    first, second = make_record(1), make_record(2)
    second.concepts[0].boxes = [(1.5, 2.0, 30.0, 40.25)]
    second.advance(State.generated, "generate", params={"steps": 2})
    store.put(first)
    store.put(second)
    assert store.get("gen-0002") == second
    assert [r.id for r in store.iter()] == ["gen-0001", "gen-0002"]
    assert [r.id for r in store.iter(state="generated")] == ["gen-0002"]
    assert store.counts().by_state == {"planned": 1, "generated": 1}
    with pytest.raises(KeyError, match="gen-9999"):
        store.get("gen-9999")


def test_rejection_is_kept_and_counted(workdir):
    store = ManifestStore(workdir)
    record = make_record(3).reject("scrape", "timeout", "read timed out after 10 s")
    store.put(record)
    loaded = store.get(record.id)
    assert loaded.state == State.rejected
    assert (loaded.rejection.stage, loaded.rejection.reason) == ("scrape", "timeout")
    assert loaded.history[-1].note == "rejected: timeout"
    assert store.counts().by_rejection == {("scrape", "timeout"): 1}


def test_corrupt_and_foreign_files_are_named_and_do_not_stop_others(workdir, caplog):
    store = ManifestStore(workdir)
    store.put(make_record(1))
    store.put(make_record(2))
    (workdir / "records" / "broken.json").write_text('{"id": "broken", "group": ')
    (workdir / "records" / "foreign.json").write_text(json.dumps({"hello": "world"}))
    errors = []
    ids = [r.id for r in store.iter(errors=errors)]
    assert ids == ["gen-0001", "gen-0002"]
    assert sorted(os.path.basename(e.path) for e in errors) == ["broken.json", "foreign.json"]
    assert all(isinstance(e, RecordLoadError) for e in errors)
    assert "broken.json" in caplog.text
    with pytest.raises(RecordLoadError, match="foreign.json"):
        store.get("foreign")
    assert len(store.counts().unreadable) == 2


def test_put_image_returns_path_hash_and_size(workdir):
    store = ManifestStore(workdir)
    image = Image.new("RGB", (40, 30), (10, 200, 30))
    path, sha, width, height = store.put_image("gen-0001", image)
    assert path == "images/gen-0001.png"
    assert (width, height) == (40, 30)
    import hashlib

    assert sha == hashlib.sha256((workdir / path).read_bytes()).hexdigest()
    record = make_record(1)
    store.store_image(record, image)
    assert np.array_equal(np.asarray(store.open_image(record)), np.asarray(image))


def test_any_fsspec_url_works():
    store = ManifestStore("memory://mcc-test-store")
    record = make_record(7)
    store.put(record)
    store.store_image(record, Image.new("RGB", (8, 8)))
    assert store.get(record.id).id == record.id
    assert store.ids() == ["gen-0007"]
    assert store.open_image(record).size == (8, 8)


def test_mask_rle_roundtrip():
    rng = np.random.default_rng(0)
    mask = rng.random((37, 53)) > 0.5
    rle = encode_mask(mask)
    assert rle.size == (37, 53)
    assert np.array_equal(decode_mask(rle), mask)
    with pytest.raises(ValueError, match="2-D"):
        encode_mask(np.zeros((2, 3, 4)))


def test_a_process_killed_mid_put_leaves_old_or_new_version(workdir):
    """SIGKILL a writer at random moments: the file always parses as one whole version."""
    writer = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(os.getcwd())!r})
        from manifests import ManifestStore, Record, Concept, GeneratedSource
        store = ManifestStore({str(workdir)!r})
        version = 0
        while True:
            version += 1
            r = Record(id="gen-big", group="g", concepts=[Concept(name="a"), Concept(name="b")],
                       source=GeneratedSource(template="t", setting="s", seed=version))
            r.log("test", "x" * 3_000_000)
            store.put(r)
            print(version, flush=True)
    """)
    store = ManifestStore(workdir)
    rng = np.random.default_rng(1)
    for _ in range(6):
        child = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, text=True)
        child.stdout.readline()  # at least one complete version exists
        time.sleep(float(rng.uniform(0.0, 0.3)))
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        record = store.get("gen-big")  # raises if a partial document were visible
        assert record.source.seed >= 1
        assert len(record.history[-1].note) == 3_000_000
    assert store.ids() == ["gen-big"]  # temporary files are never listed as records


def _write_many(workdir: str, start: int, count: int) -> None:
    store = ManifestStore(workdir)
    for index in range(start, start + count):
        store.put(make_record(index, note_size=2000))


def test_two_processes_writing_at_once_lose_nothing(workdir):
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_write_many, args=(str(workdir), start, 150)) for start in (0, 150)]
    for w in writers:
        w.start()
    for w in writers:
        w.join(60)
        assert w.exitcode == 0
    store = ManifestStore(workdir)
    assert len(list(store.iter())) == 300
    assert store.ids() == [f"gen-{i:04d}" for i in range(300)]
