"""The store benchmark runs end to end at a small size and prints every row; its table cells, its check of
``mcc status``'s count and its reference dedupe index are pinned (the timings themselves are not)."""

import pytest

from manifests import ManifestStore, plan_scenes
from manifests.bench import COLUMNS, main, reference_image_index, status_seconds, table_row, with_fingerprints


def test_the_store_bench_prints_its_table_and_removes_its_temporary_work_dirs(capsys):
    import re
    from pathlib import Path

    main(["--records", "150"])
    out = capsys.readouterr().out
    root = Path(re.search(r"work dirs in (\S+)", out).group(1))
    assert root.name.startswith("mcc-bench-store-") and not root.exists()
    for row in (
        "mcc plan of 150 records",
        "index up to date",
        "records rewritten",
        "with no index",
        "dedupe index over 150 images",
    ):
        assert row in out


def test_a_rows_cells_are_its_seconds_and_the_ratio_reference_over_mcc():
    assert table_row("plan", 2.0, 5.0, "put per record") == ("plan", "2.00", "5.00", "2.5x", "put per record")
    assert table_row("status", 0.5, None, "") == ("status", "0.50", "", "", "")
    assert [justify for _, justify in COLUMNS] == ["left", "right", "right", "right", "left"]


def test_status_seconds_refuses_a_store_that_does_not_hold_the_records(tmp_path):
    """The bench times ``mcc status`` only on the store it planned: another count is an error."""
    with pytest.raises(AssertionError, match="does not count 5 records"):
        status_seconds(tmp_path / "empty", 5)


def test_the_reference_dedupe_index_holds_the_downloaded_bytes_hash_too(tmp_path):
    """Like ``ImageIndex.from_store``, the reference indexes a web record's downloaded bytes (its history's
    ``content_sha256``) beside the stored image's hash."""
    import json

    from generators.perceptual_hash import to_hex
    from generators.web.index import INDEX_PATH, ImageIndex
    from manifests.bench import bench_shas
    from manifests.groups import load_groups

    store = ManifestStore(tmp_path)
    specs = plan_scenes(load_groups()[:1], per_group=2, seed=0)
    records = [with_fingerprints(spec.to_record()) for spec in specs]
    store.put_many(records)
    store.write_bytes(INDEX_PATH, json.dumps({r.id: {"sha256": bench_shas(r.id)[0], "phash": to_hex(7)}
                                              for r in records}).encode())  # fmt: skip
    for built in (reference_image_index(store), ImageIndex.from_store(store)):
        for record in records:
            stored, downloaded = bench_shas(record.id)
            assert built.match(downloaded, 0, -1) == (record.id, "identical bytes (sha256)")
            assert built.match(stored, 0, -1) == (record.id, "identical bytes (sha256)")
