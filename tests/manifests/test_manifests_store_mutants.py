"""Pins of ``manifests.store.ManifestStore``: ids validated, counts by state and by rejection, the
state filter, images stored as unoptimised PNG (sha256 of the file) and read back, and writes to a
non-local (fsspec) work dir into an existing folder."""

from __future__ import annotations

import hashlib
import io
import uuid

import numpy as np
import pytest
from PIL import Image

from manifests import Concept, GeneratedSource, ManifestStore, Record, State


def record(index: int, state: State = State.planned) -> Record:
    return Record(
        id=f"gen-{index:04d}", group="g", concepts=[Concept(name="a"), Concept(name="b")],
        source=GeneratedSource(template="t", setting="s", seed=index), state=state,
    )  # fmt: skip


@pytest.mark.parametrize("bad", ["", "a/b", ".hidden"])
def test_invalid_record_ids_are_refused(tmp_path, bad):
    with pytest.raises(ValueError, match="invalid record id"):
        ManifestStore(tmp_path).get(bad)


def test_counts_and_state_filter(tmp_path):
    """counts(): records per state and rejections per (stage, reason), each counted once."""
    store = ManifestStore(tmp_path)
    for i in range(3):
        store.put(record(i))
    for i in (3, 4):
        rejected = record(i)
        rejected.reject("review", "rejected_by_reviewer", "no")
        store.put(rejected)
    store.put(record(5, State.generated))
    counts = store.counts()
    assert counts.by_state == {"planned": 3, "rejected": 2, "generated": 1} and counts.total == 6
    assert counts.by_rejection == {("review", "rejected_by_reviewer"): 2}
    assert [r.id for r in store.iter(State.planned)] == ["gen-0000", "gen-0001", "gen-0002"]
    assert [r.id for r in store.iter("generated")] == ["gen-0005"]
    assert store.ids() == [f"gen-{i:04d}" for i in range(6)]


def test_images_are_stored_as_plain_png_and_read_back(tmp_path):
    """put_image: ``images/<id>.png``, the bytes of an unoptimised PNG, their sha256 and the size."""
    store = ManifestStore(tmp_path)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (6, 9, 3), dtype=np.uint8))
    expected = io.BytesIO()
    image.save(expected, format="PNG", optimize=False)
    r = record(1)
    info = store.store_image(r, image)
    assert (info.path, info.width, info.height) == (f"images/{r.id}.png", 9, 6)
    assert store.read_bytes(info.path) == expected.getvalue()
    assert info.sha256 == hashlib.sha256(expected.getvalue()).hexdigest()
    assert np.array_equal(np.asarray(store.open_image(r)), np.asarray(image))


def test_fsspec_work_dir_writes_into_existing_folders():
    """A memory:// work dir: a second record and file go into folders that already exist."""
    store = ManifestStore(f"memory://mcc-store-{uuid.uuid4().hex}")
    store.put(record(1))
    store.put(record(2))
    store.write_bytes("reviews/a.json", b"1")
    store.write_bytes("reviews/b.json", b"2")
    assert store.ids() == ["gen-0001", "gen-0002"] and store.read_bytes("reviews/b.json") == b"2"


def test_unreadable_record_names_the_invalid_field(tmp_path):
    """A record file that fails validation is reported with the dotted location of the bad field."""
    store = ManifestStore(tmp_path)
    store.put(record(1))
    text = store.read_bytes("records/gen-0001.json").decode().replace('"planned"', '"nonsense"')
    store.write_bytes("records/gen-0001.json", text.encode())
    errors = []
    assert list(store.iter(errors=errors)) == []
    (error,) = errors
    assert error.problem.startswith("state: ")


def test_an_object_store_group_writes_its_files_and_records():
    """memory://: write_group writes each file under its own path, then each record; the entries name them."""
    store = ManifestStore(f"memory://mcc-store-{uuid.uuid4().hex}")
    entries = store.write_group({"images/gen-0001.png": b"png bytes", "reviews/x.json": b"{}"}, [record(1)])
    assert (
        store.read_bytes("images/gen-0001.png") == b"png bytes"
        and store.read_bytes("reviews/x.json") == b"{}"
    )
    assert store.get("gen-0001") == record(1) and list(entries) == ["gen-0001"]


def test_the_file_system_sync_is_of_the_work_dirs_own_file_system(tmp_path, monkeypatch):
    """syncfs gets a descriptor of the folder itself (not another one); a failure raises OSError naming it;
    without syncfs the whole machine is synced."""
    import os
    import types

    import manifests.store as store_module

    synced = []

    def syncfs(fd):
        synced.append(os.fstat(fd).st_ino)
        return 0

    monkeypatch.setattr(store_module, "_LIBC", types.SimpleNamespace(syncfs=syncfs))
    store_module._sync_file_system(str(tmp_path))
    assert synced == [os.stat(tmp_path).st_ino]
    monkeypatch.setattr(store_module, "_LIBC", types.SimpleNamespace(syncfs=lambda fd: -1))
    with pytest.raises(OSError, match=f"syncfs of {tmp_path} failed"):
        store_module._sync_file_system(str(tmp_path))
    calls = []
    monkeypatch.setattr(store_module, "_LIBC", types.SimpleNamespace())
    monkeypatch.setattr(os, "sync", lambda: calls.append("sync"))
    store_module._sync_file_system(str(tmp_path))
    assert calls == ["sync"]


@pytest.mark.parametrize("bad", ["records/a..b.json", "images/..", "../x", "/abs", "a//b", "a/ b"])
def test_unsafe_relative_paths_are_refused(bad):
    """Any part with '..' (even inside a safe-looking name), an empty part or an unsafe character is refused."""
    from manifests.workdir import UnsafePathError, check_relative

    with pytest.raises(UnsafePathError, match="is not inside the work dir"):
        check_relative(bad)
    assert check_relative("records/gen-0001.json") == "records/gen-0001.json"


def test_an_fsspec_work_dir_creates_the_files_parent_folder_first(monkeypatch):
    """File systems with real folders (sftp, ...) need the parent made: exactly the file's parent."""
    store = ManifestStore(f"memory://mcc-store-{uuid.uuid4().hex}")
    made = []
    makedirs = store.fs.makedirs
    monkeypatch.setattr(
        store.fs, "makedirs", lambda path, exist_ok=False: made.append(path) or makedirs(path, exist_ok)
    )
    store.write_bytes("reviews/deep/a.json", b"1")
    assert (
        made
        and made[-1].rstrip("/").endswith("/reviews/deep")
        and store.read_bytes("reviews/deep/a.json") == b"1"
    )
