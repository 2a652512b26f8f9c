"""report.md / report.json of a scoring run (``benchmark.report``) and the ``retry_failed`` rewrite
of ``pairs.jsonl`` (``evaluate._drop_failed``), pinned cell by cell.

report.md is read by users and compared with the paper: the whole fg report line by line (Table 4
layout, subsets, counts, anchor accuracy, timing, errors, configuration, decisions, settings), the
binary Table 3 layout (header, which overall metric lands in which column: ImageNet-Seg columns for
an ``imagenet*`` dataset, VOC ones otherwise, the scored-image count, the ConceptAttention note),
report.json's keys and figures, and write() / read().
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import pytest

from benchmark import published
from benchmark.evaluate import _drop_failed
from benchmark.report import METRIC_DECISIONS, Report

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


def test_binary_report_states_the_foreground_and_background_iou():
    assert (
        "IoU foreground 12.50, background 37.50 (percent)." in binary_report("voc").to_markdown().splitlines()
    )


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


# -- the whole fg report -------------------------------------------------------------------------
def fg_rows() -> list[dict]:
    """Two scored pairs (one degenerate) of a 2-concept web image, a failed and an invalid pair."""

    def scores(miou, iou, acc, ap, nar, degenerate):
        return {"miou_fg": miou, "iou_target": iou, "acc_fg": acc, "map_fg": ap, "nar": nar,
                "degenerate": degenerate}  # fmt: skip

    web2 = {"num_concepts": "2", "source": "web"}
    gen3 = {"num_concepts": "3", "source": "generated"}
    return [
        {"sample_id": "a", "target": 0, "status": "ok", "tags": web2, "anchor_in_mask": True,
         "method_seconds": 1.5, "scores": scores(0.5, 0.25, 0.75, 0.625, 0.125, False)},
        {"sample_id": "a", "target": 1, "status": "ok", "tags": web2, "anchor_in_mask": False,
         "method_seconds": 2.5, "scores": scores(0.25, 0.5, 0.25, 0.375, None, True)},
        {"sample_id": "b", "target": 0, "status": "failed", "error": "RuntimeError: boom", "tags": gen3},
        {"sample_id": "c", "target": 0, "status": "invalid", "error": "empty | mask", "tags": gen3},
    ]  # fmt: skip


CONFIGURATION = {
    "preset": "sd35",
    "mode": "invert",
    "prompt_template": "a photo",
    "layers": [1, 2],
    "pipeline": {"o_ii_heads": "concat", "concept_pass": "separate", "clamp_negative": False,
                 "empty_row": "self_loop"},
}  # fmt: skip


def fg_report() -> Report:
    report = Report.from_rows(
        fg_rows(), protocol="fg", method="anchordiff", configuration=CONFIGURATION,
        dataset={"name": "mcc", "split": "test"}, limit=4,
    )  # fmt: skip
    return dataclasses.replace(report, created="2026-01-01T00:00:00+00:00", package_version="9.9.9")


PUBLISHED_TABLE4 = [
    f"| {r.method} | {r.miou_fg:.2f} | {r.map_fg:.2f} | {r.nar:.2f} | {r.acc_fg:.2f} | published (paper Table 4) |"
    for r in published.TABLE4_MCC
]
SETTINGS = [f"| {k} | {v.replace('|', chr(92) + '|')} |" for k, v in METRIC_DECISIONS.items()]
EXPECTED_FG_MARKDOWN = [
    "# anchordiff on mcc",
    "",
    "Dataset: mcc, split test.",
    "",
    "> **1 failed and 1 invalid pairs** of 4: the means below cover the 2 scored pairs.",
    "",
    "## Results (layout of the paper's Table 4; percent)",
    "",
    "| Method | mIoU_fg ↑ | mAP_fg ↑ | NAR ↓ | Acc_fg ↑ | source |",
    "|---|---:|---:|---:|---:|---|",
    *PUBLISHED_TABLE4,
    "| **anchordiff (SD3.5)** | **37.50** | **50.00** | **12.50** | **50.00** | this run, 2 pairs |",
    "",
    "95% confidence intervals (percentile bootstrap over images, 1000 resamples, seed 0): mIoU_fg "
    "[37.50, 37.50], mAP_fg [50.00, 50.00], NAR [12.50, 12.50], Acc_fg [50.00, 50.00], IoU_target [37.50, 37.50].",
    "",
    "This run minus its published counterpart **Ours SD3.5** (paper Table 4), in points: mIoU_fg -31.35, "
    "mAP_fg -39.38, NAR +0.29, Acc_fg -39.97.",
    "",
    "## By subset (this run; percent)",
    "",
    "| subset | pairs scored | mIoU_fg ↑ | mAP_fg ↑ | NAR ↓ | Acc_fg ↑ | IoU_target ↑ | degenerate |",
    "|---|---:|---:|---:|---:|---:|---:|---:|",
    "| all | 2 | 37.50 | 50.00 | 12.50 | 50.00 | 37.50 | 1 |",
    "| 2 concepts | 2 | 37.50 | 50.00 | 12.50 | 50.00 | 37.50 | 1 |",
    "| 3 concepts | 0 | – | – | – | – | – | 0 |",
    "| generated | 0 | – | – | – | – | – | 0 |",
    "| web | 2 | 37.50 | 50.00 | 12.50 | 50.00 | 37.50 | 1 |",
    "",
    "## Counts",
    "",
    "| | pairs | scored | degenerate | failed | invalid |",
    "|---|---:|---:|---:|---:|---:|",
    "| overall | 4 | 2 | 1 | 1 | 1 |",
    "| 2 concepts | 2 | 2 | 1 | 0 | 0 |",
    "| 3 concepts | 2 | 0 | 0 | 1 | 1 |",
    "| generated | 2 | 0 | 0 | 1 | 1 |",
    "| web | 2 | 2 | 1 | 0 | 0 |",
    "",
    "Anchor accuracy (anchor inside the target mask): **50.00%** (published, paper Table 2, SD3.5: 90.25%)",
    "",
    "Method time: 2.000 s per concept query (mean over 2 pairs, this machine).",
    "",
    "## Failed and invalid pairs (most frequent errors)",
    "",
    "- 1 x `RuntimeError: boom`",
    "- 1 x `empty | mask`",
    "",
    "## Configuration",
    "",
    "| setting | value |",
    "|---|---|",
    "| scored method | anchordiff |",
    "| preset | sd35 |",
    "| mode | invert |",
    "| prompt_template | a photo |",
    "| layers | [1, 2] |",
    "| pipeline.o_ii_heads | concat |",
    "| pipeline.concept_pass | separate |",
    "| pipeline.clamp_negative | False |",
    "| pipeline.empty_row | self_loop |",
    "| package version | 9.9.9 |",
    "| dataset.name | mcc |",
    "| dataset.split | test |",
    "",
    "## Decisions (method.md [decision] items)",
    "",
    "| decision | value |",
    "|---|---|",
    "| existing_image_extraction (mode) | invert (default, "
    "paper: Euler flow-matching inversion to the midpoint timestep) |",
    "| prompt for existing images | a photo |",
    "| O_II heads | concat (default: heads concatenated, N x heads*d_h) |",
    "| concept stream | separate (two passes, as the paper) |",
    "| multi-token concepts | not reported by the pipeline |",
    "| negative cosines | kept |",
    "| zero-sum rows | self_loop (default) |",
    "| graph layers | [1, 2] |",
    "",
    "## Metric settings",
    "",
    "| setting | value |",
    "|---|---|",
    *SETTINGS,
    "| limit_images | 4 |",
    "| conceptattention_compat | False |",
    "| ap_channels | None |",
    "| protocol_resolution | native (the masks' size) |",
    '| bootstrap | {"resamples": 1000, "seed": 0, "level": 0.95, "unit": "image"} |',
    "| chance_maps | constant (one value) and uniform random (i.i.d. per scored pixel, seeded by the pair), "
    "scored with the same code on the same pairs as the method |",
    "",
    "_Written 2026-01-01T00:00:00+00:00. Published rows are copied from "
    "the AnchorDiff paper for reference; they were not produced by this run._",
    "",
]


def test_fg_report_markdown_line_by_line():
    """report.md of an fg run: warning, Table 4 layout, by-subset and count tables, anchor accuracy,
    timing, errors, configuration, decisions, metric settings and the footer, every line."""
    assert fg_report().to_markdown().split("\n") == EXPECTED_FG_MARKDOWN


def test_fg_report_json_figures_and_keys():
    """report.json of the same run: means over scored pairs, subsets, counts, errors, settings."""
    data = fg_report().to_dict()
    assert data["protocol"] == "fg" and data["method"] == "anchordiff"
    assert data["overall"] == {
        "miou_fg": 0.375,
        "iou_target": 0.375,
        "acc_fg": 0.5,
        "map_fg": 0.5,
        "nar": 0.125,
    }
    assert list(data["subsets"]) == ["2 concepts", "3 concepts", "generated", "web"]
    assert data["subsets"]["3 concepts"] == dict.fromkeys(data["overall"])  # no scored pair: null
    assert data["counts"]["3 concepts"] == {
        "pairs": 2,
        "scored": 0,
        "degenerate": 0,
        "failed": 1,
        "invalid": 1,
    }
    assert data["counts"]["web"] == {"pairs": 2, "scored": 2, "degenerate": 1, "failed": 0, "invalid": 0}
    assert data["errors"] == {"RuntimeError: boom": 1, "empty | mask": 1}
    assert data["anchor_accuracy"] == 0.5
    assert data["timing"] == {"seconds_per_concept_query": 2.0, "pairs_timed": 2}
    assert data["metric_settings"]["limit_images"] == 4
    assert (
        data["metric_settings"]["ap_channels"] is None
        and data["metric_settings"]["conceptattention_compat"] is False
    )
    assert data["decisions"]["negative cosines"] == "kept"


def test_write_then_read_round_trips(tmp_path):
    """write() makes the folder (parents too) with report.json and report.md (UTF-8); read() gives it back."""
    report = fg_report()
    json_path, md_path = report.write(tmp_path / "a" / "run")
    assert (json_path.name, md_path.name) == ("report.json", "report.md")
    assert md_path.read_bytes() == report.to_markdown().encode("utf-8")
    assert json.loads(json_path.read_text("utf-8")) == report.to_dict()
    again = Report.read(json_path)
    assert again.to_dict() == report.to_dict()
    report.write(tmp_path / "a" / "run")  # an existing folder is fine


def binary_rows() -> list[dict]:
    def image(correct, labeled, inter, union, ap):
        return {"correct": correct, "labeled": labeled, "inter": inter, "union": union, "ap": ap}

    return [
        {"sample_id": "x", "target": 0, "status": "ok", "binary": image(3, 4, [1, 2], [2, 2], 0.5)},
        {"sample_id": "y", "target": 0, "status": "ok", "binary": image(1, 4, [1, 0], [3, 4], 0.25)},
        {"sample_id": "z", "target": 0, "status": "failed", "error": "boom"},
    ]


def test_binary_from_rows_figures_and_compat_proper_miou():
    """Binary protocol: acc / mIoU from pooled counts, mAP the mean image AP, both IoUs kept;
    with conceptattention_compat mIoU is Acc / (2 - Acc) and miou_proper the pooled mean IoU."""
    plain = Report.from_rows(binary_rows(), protocol="binary", method="m", configuration={}, dataset={},
                             ap_channels="foreground")  # fmt: skip
    assert plain.overall["acc"] == 0.5 and plain.overall["map"] == 0.375
    assert plain.overall["iou_background"] == 0.4 and plain.overall["iou_foreground"] == pytest.approx(1 / 3)
    assert plain.overall["miou"] == pytest.approx((0.4 + 1 / 3) / 2) and "miou_proper" not in plain.overall
    assert plain.metric_settings["ap_channels"] == "foreground" and plain.counts["overall"]["failed"] == 1
    compat = Report.from_rows(binary_rows(), protocol="binary", method="m", configuration={}, dataset={},
                              conceptattention_compat=True)  # fmt: skip
    assert compat.overall["miou"] == pytest.approx(0.5 / 1.5)
    assert compat.overall["miou_proper"] == pytest.approx(plain.overall["miou"])
    assert compat.metric_settings["conceptattention_compat"] is True


def test_errors_keep_the_20_most_frequent():
    """report.errors lists the 20 most frequent failure messages, most frequent first."""
    rows = [
        {"sample_id": f"s{i}", "target": j, "status": "failed", "error": f"error {i}"}
        for i in range(21)
        for j in range(1 + (i == 5))
    ]
    report = Report.from_rows(rows, protocol="fg", method="m", configuration={}, dataset={})
    assert len(report.errors) == 20 and next(iter(report.errors.items())) == ("error 5", 2)
    assert report.counts["overall"]["failed"] == 22


def test_report_md_is_written_as_utf8(tmp_path, monkeypatch):
    """report.md (with its ↑ / ↓ arrows) is written as UTF-8 whatever the locale's encoding."""
    encodings = {}
    write_text = pathlib.Path.write_text

    def spy(self, data, encoding=None, errors=None, newline=None):
        encodings[self.name] = encoding
        return write_text(self, data, encoding=encoding, errors=errors, newline=newline)

    monkeypatch.setattr(pathlib.Path, "write_text", spy)
    binary_report("voc").write(tmp_path)
    assert encodings == {"report.json": "utf-8", "report.md": "utf-8"}


def hand_built(counts: dict, **fields) -> Report:
    """An fg Report built directly, not from rows (as a user scoring their own method may)."""
    return Report(method="m", protocol="fg", dataset={"name": "mcc"}, configuration={}, overall={"miou_fg": 0.5},
                  counts=counts, **fields)  # fmt: skip


def test_markdown_of_a_hand_built_report_reads_missing_counts_as_zero():
    """A Report built directly (counts without ``invalid`` or without a subset's entry) shows 0."""
    report = hand_built(
        {"overall": {"pairs": 3, "scored": 2, "failed": 1}}, subsets={"web": {"miou_fg": 0.25}}
    )
    lines = report.to_markdown().splitlines()
    assert "> **1 failed and 0 invalid pairs** of 3: the means below cover the 2 scored pairs." in lines
    assert "| web | 0 | 25.00 | – | – | – | – | 0 |" in lines


def test_binary_markdown_keeps_title_and_warning_above_table3():
    """The binary report starts with its title and the failed-pairs warning, then Table 3."""
    report = binary_report("voc")
    report.counts["overall"]["failed"] = 2
    lines = report.to_markdown().splitlines()
    assert lines[:5] == [
        "# m on voc",
        "",
        "Dataset: voc.",
        "",
        "> **2 failed and 0 invalid pairs** of 9: the means below cover the 7 scored pairs.",
    ]
    assert lines[6] == "## Results (layout of the paper's Table 3; percent)"


def test_a_method_with_a_published_row_is_compared_with_it_on_its_backbone():
    """seg4diff on sd3 is compared with "Seg4Diff SD3" of Table 4 (this run minus published, in points);
    on VOC with Table 3's VOC columns; a method without a published row (anchordiff_multi) or a run
    without a preset gets no such line."""
    rows = fg_rows()
    report = Report.from_rows(rows, protocol="fg", method="seg4diff", configuration={"preset": "sd3"},
                              dataset={"name": "mcc"})  # fmt: skip
    (line,) = [x for x in report.to_markdown().splitlines() if "published counterpart" in x]
    assert line == (
        "This run minus its published counterpart **Seg4Diff SD3** (paper Table 4), in points: mIoU_fg -7.06, "
        "mAP_fg -32.06, NAR -9.97, Acc_fg -15.88."
    )
    for method, configuration in (("anchordiff_multi", {"preset": "sd3"}), ("seg4diff", {})):
        other = Report.from_rows(rows, protocol="fg", method=method, configuration=configuration,
                                 dataset={"name": "mcc"})  # fmt: skip
        assert "published counterpart" not in other.to_markdown()
    voc = dataclasses.replace(binary_report("voc2012-single-class"), method="seg4diff",
                              configuration={"preset": "sd35"})  # fmt: skip
    (line,) = [x for x in voc.to_markdown().splitlines() if "published counterpart" in x]
    assert line == (
        "This run minus its published counterpart **Seg4Diff SD3.5** (paper Table 3), in points: Acc -32.97, "
        "mIoU -42.88, mAP -12.36."
    )
    voc.overall["miou"] = float("nan")  # undefined here: no difference to show
    (line,) = [x for x in voc.to_markdown().splitlines() if "published counterpart" in x]
    assert line.endswith("in points: Acc -32.97, mIoU –, mAP -12.36.")


def test_counts_a_hand_built_report_leaves_out_read_as_zero_and_invalid_pairs_alone_are_flagged():
    """Counts without ``pairs`` / ``scored``: 0 in the counts table and in this run's row; invalid pairs
    without failed ones still get the warning line."""
    report = hand_built({"overall": {"invalid": 2}})
    lines = report.to_markdown().splitlines()
    assert "> **0 failed and 2 invalid pairs** of 0: the means below cover the 0 scored pairs." in lines
    assert "| overall | 0 | 0 | 0 | 0 | 2 |" in lines
    assert any(line.startswith("| **m** |") and line.endswith(", 0 pairs |") for line in lines)
    assert report.interval_line(["miou_fg"]) == "No confidence intervals: nothing was scored."


def test_subsets_are_listed_by_concept_count_then_source_then_name():
    from benchmark.report import _subset_order

    labels = ["web", "zebra-group", "3 concepts", "generated", "2 concepts", "alpha-group"]
    assert sorted(labels, key=_subset_order) == [
        "2 concepts", "3 concepts", "generated", "web", "alpha-group", "zebra-group",
    ]  # fmt: skip


def test_a_bootstrap_over_undefined_ratios_warns_about_nothing():
    """0 / 0 in a resample (an image set with no foreground) is NaN, silently."""
    import warnings

    import numpy as np

    from benchmark.report import bootstrap_interval

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        low, high = bootstrap_interval(np.array([[0.0, 0.0], [1.0, 2.0]]), lambda t: t[:, :1] / t[:, 1:],
                                       resamples=200)  # fmt: skip
    assert high[0] == pytest.approx(0.5) and not np.isnan(low[0])


def test_the_decisions_name_each_reported_value_in_words():
    """The pipeline's own values, described: the concept stream, negative cosines, kept cosines."""
    from benchmark.report import method_decisions

    configuration = {
        "preset": "sd3",
        "mode": "noise",
        "pipeline": {"concept_pass": "joint", "clamp_negative": True},
    }
    decisions = method_decisions(configuration, "anchordiff")
    assert decisions["concept stream"] == "joint (default: one pass with the image stream)"
    assert decisions["negative cosines"] == "clamped to 0 before row normalisation (default)"
    configuration["pipeline"] = {"concept_pass": "separate", "clamp_negative": False}
    decisions = method_decisions(configuration, "anchordiff")
    assert decisions["concept stream"] == "separate (two passes, as the paper)"
    assert decisions["negative cosines"] == "kept"
    assert decisions["zero-sum rows"] == "not reported by the pipeline"


def test_chance_rows_fill_the_metric_columns_and_each_kind_is_scored_on_its_own():
    """An fg chance row has one cell per Table 4 column, no extra blank; a run whose rows carry only the
    random map still reports it."""
    from benchmark.report import chance_results

    constant = {"miou_fg": 0.25, "map_fg": 0.5, "nar": 0.75, "acc_fg": 1.0, "pairs": 2}
    report = hand_built({"overall": {"pairs": 2, "scored": 2}}, chance={"constant": constant})
    assert "| chance: constant map | 25.00 | 50.00 | 75.00 | 100.00 | chance, this run's 2 pairs |" in (
        report.to_markdown().splitlines()
    )
    rows = [{"chance": {"random": {"miou_fg": 0.5, "map_fg": 0.5, "nar": 0.5, "acc_fg": 0.5}}}] * 2
    results = chance_results(rows, protocol="fg", conceptattention_compat=False)
    assert list(results) == ["random"] and results["random"]["miou_fg"] == pytest.approx(0.5)


def test_a_run_without_method_timings_reports_an_empty_timing_not_null():
    rows = [{k: v for k, v in row.items() if k != "method_seconds"} for row in fg_rows()]
    report = Report.from_rows(rows, protocol="fg", method="m", configuration={}, dataset={"name": "mcc"})
    assert report.timing == {} and report.to_dict()["timing"] == {}
    timed = Report.from_rows(fg_rows(), protocol="fg", method="m", configuration={}, dataset={"name": "mcc"})
    assert timed.timing["pairs_timed"] > 0
