"""The binary-protocol report (``Report._binary_tables``, the paper's Table 3 layout) and the
``retry_failed`` rewrite of ``pairs.jsonl`` (``evaluate._drop_failed``), pinned cell by cell.

report.md is read by users and compared with the paper: the table header, which overall
metric lands in which column (ImageNet-Seg columns for an ``imagenet*`` dataset, VOC ones
otherwise), the scored-image count of this run's row, and the note that marks the
ConceptAttention-compatible mIoU.
"""

from __future__ import annotations

import json

from benchmark.evaluate import _drop_failed
from benchmark.report import Report

HEADER = "| Method | ImageNet-Seg Acc ↑ | mIoU ↑ | mAP ↑ | VOC single-class Acc ↑ | mIoU ↑ | mAP ↑ | source |"


def binary_report(name: str, *, compat: bool = False) -> Report:
    overall = {"acc": 0.5, "miou": 0.25, "map": 0.75, "iou_foreground": 0.125, "iou_background": 0.375}
    if compat:
        overall["miou_proper"] = 0.0625
    return Report(
        method="m",
        protocol="binary",
        dataset={"name": name},
        configuration={},
        overall=overall,
        counts={"overall": {"pairs": 9, "scored": 7, "degenerate": 0, "failed": 0, "invalid": 0}},
        metric_settings={"conceptattention_compat": compat},
    )


def our_row(markdown: str) -> str:
    (row,) = [line for line in markdown.splitlines() if line.startswith("| **m**")]
    return row


def test_table3_header_is_the_papers_columns():
    """The header line of the Table 3 layout, exactly, and right above its rule."""
    lines = binary_report("voc").to_markdown().splitlines()
    assert HEADER in lines
    assert lines[lines.index(HEADER) + 1] == "|---|---:|---:|---:|---:|---:|---:|---|"


def test_imagenet_run_fills_the_imagenet_columns_in_acc_miou_map_order():
    """acc, miou, map (percent) in the three ImageNet-Seg columns; VOC columns blank; scored count."""
    row = our_row(binary_report("imagenet-seg").to_markdown())
    assert row == "| **m** | **50.00** | **25.00** | **75.00** | – | – | – | this run, 7 images |"


def test_voc_run_fills_the_voc_columns():
    """A dataset not named imagenet* puts this run's figures in the VOC columns."""
    row = our_row(binary_report("voc-single").to_markdown())
    assert row == "| **m** | – | – | – | **50.00** | **25.00** | **75.00** | this run, 7 images |"


def test_compat_note_names_the_compatibility_figure_and_the_proper_miou():
    """With conceptattention_compat the report says the mIoU column is Acc / (2 - Acc)."""
    markdown = binary_report("voc", compat=True).to_markdown()
    assert (
        "**mIoU above is ConceptAttention's compatibility figure Acc / (2 - Acc)**, not the mean IoU; "
        "the proper mIoU is 6.25." in markdown.splitlines()
    )
    assert "compatibility figure" not in binary_report("voc").to_markdown()


def test_drop_failed_rewrites_the_kept_rows_verbatim(tmp_path):
    """retry_failed: pairs.jsonl keeps its non-failed rows unchanged (NaN written as null)."""
    path = tmp_path / "pairs.jsonl"
    ok = {"sample_id": "a", "target": 0, "status": "ok", "scores": {"nar": None, "acc_fg": 0.5}}
    invalid = {"sample_id": "b", "target": 0, "status": "invalid", "error": "empty mask"}
    failed = {"sample_id": "a", "target": 1, "status": "failed", "error": "boom"}
    path.write_text("".join(json.dumps(r) + "\n" for r in (ok, failed, invalid)))
    _drop_failed(path)
    assert [json.loads(line) for line in path.read_text().splitlines()] == [ok, invalid]
    assert not path.with_suffix(".jsonl.tmp").exists()
