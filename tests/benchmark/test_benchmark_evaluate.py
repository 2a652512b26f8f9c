"""The runner end to end: results file, resume, failures, reports, AnchorDiff wrapping."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from benchmark_fixtures import FakeAnchorDiff, colour_method
from fixture_scopes import shared_unless_mutating
from PIL import Image

from benchmark.datasets import Sample, SampleList
from benchmark.evaluate import (
    PAIRS_FILE,
    AnchorDiffMethod,
    MethodResult,
    RunMismatchError,
    evaluate,
    read_pairs,
    resolve_method,
)
from benchmark.report import Report


class CountingMethod:
    """colour_method that counts its calls and can misbehave on chosen images."""

    def __init__(self, interrupt_after: int | None = None):
        self.calls: list[str] = []
        self.interrupt_after = interrupt_after

    def __call__(self, image, concepts):
        if self.interrupt_after is not None and len(self.calls) == self.interrupt_after:
            raise KeyboardInterrupt
        self.calls.append(image.tobytes()[:64].hex())
        return colour_method(image, concepts)


def test_end_to_end_writes_results_report_and_figure(mcc_dataset, tmp_path):
    out = tmp_path / "run"
    report = evaluate(colour_method, mcc_dataset, out_dir=out, progress=False)
    rows = read_pairs(out)
    assert len(rows) == 12 and all(r["status"] == "ok" for r in rows)
    assert {(r["sample_id"], r["target"]) for r in rows} == {
        (k.sample_id, t) for k in mcc_dataset.sample_keys() for t in range(k.num_concepts)
    }
    assert report.counts["overall"] == {"pairs": 12, "scored": 12, "degenerate": 0, "failed": 0, "invalid": 0}
    assert report.counts["2 concepts"]["pairs"] == 6 and report.counts["3 concepts"]["pairs"] == 6
    assert report.counts["generated"]["pairs"] + report.counts["web"]["pairs"] == 12
    mean = np.mean([r["scores"]["miou_fg"] for r in rows])
    assert report.overall["miou_fg"] == pytest.approx(mean) and mean > 0.8  # the colour method is good here
    data = json.loads((out / "report.json").read_text(), parse_constant=pytest.fail)  # no NaN in the JSON
    assert data["overall"]["miou_fg"] == pytest.approx(mean)
    assert data["package_version"] and data["metric_settings"]["resize"].startswith("bilinear")
    markdown = (out / "report.md").read_text()
    assert "| Ours SD3.5 | 68.85 | 89.38 | 12.21 | 89.97 | published (paper Table 4) |" in markdown
    assert "this run, 12 pairs" in markdown and "| 3 concepts |" in markdown
    assert (out / "figures" / "qualitative.png").stat().st_size > 10_000
    assert Report.read(out / "report.json").overall["nar"] == pytest.approx(report.overall["nar"])


def test_a_method_failing_on_some_images_is_recorded_and_the_run_goes_on(mcc_dataset, tmp_path):
    calls = {"n": 0}

    def method(image, concepts):
        calls["n"] += 1
        n = calls["n"]
        if n == 2:
            raise RuntimeError("out of memory")
        if n == 3:
            return np.zeros((5, 4, 4))  # wrong K
        maps = colour_method(image, concepts)
        if n == 4:
            maps[1] = np.nan  # one concept broken: only that pair fails
        return torch.tensor(maps)  # torch output is accepted

    report = evaluate(method, mcc_dataset, out_dir=tmp_path / "run", progress=False)
    rows = read_pairs(tmp_path / "run")
    failed = [r for r in rows if r["status"] == "failed"]
    # image 2 (3 concepts) raised, image 3 (2 concepts) wrong shape, image 4 one NaN map
    assert len(failed) == 3 + 2 + 1 and report.counts["overall"]["failed"] == 6
    assert report.counts["overall"]["scored"] == 6 and calls["n"] == 5
    assert any("RuntimeError: out of memory" in r["error"] for r in failed)
    assert any("expected (K=2, h, w)" in r["error"] for r in failed)
    assert any("NaN" in r["error"] for r in failed)
    assert (
        "out of memory" in "".join(report.errors)
        and "6 failed" in (tmp_path / "run" / "report.md").read_text()
    )


def test_resume_recomputes_nothing(mcc_dataset, tmp_path):
    out = tmp_path / "run"
    first = CountingMethod()
    evaluate(first, mcc_dataset, out_dir=out, limit=2, progress=False, name="colour", figures=False)
    assert len(first.calls) == 2 and len(read_pairs(out)) == 5
    interrupted = CountingMethod(interrupt_after=1)
    with pytest.raises(KeyboardInterrupt):
        evaluate(interrupted, mcc_dataset, out_dir=out, progress=False, name="colour", figures=False)
    assert len(interrupted.calls) == 1 and len(read_pairs(out)) == 7
    rest = CountingMethod()
    report = evaluate(rest, mcc_dataset, out_dir=out, progress=False, name="colour", figures=False)
    assert len(rest.calls) == 2 and report.counts["overall"]["scored"] == 12
    again = CountingMethod()
    evaluate(again, mcc_dataset, out_dir=out, progress=False, name="colour", figures=False)
    assert again.calls == [] and len(read_pairs(out)) == 12


def test_a_torn_last_line_is_dropped_and_only_its_pair_recomputed(mcc_dataset, tmp_path):
    out = tmp_path / "run"
    evaluate(colour_method, mcc_dataset, out_dir=out, progress=False, name="colour", figures=False)
    lines = (out / PAIRS_FILE).read_text().splitlines(keepends=True)
    (out / PAIRS_FILE).write_text("".join(lines[:-1]) + lines[-1][:25])  # a crash mid-write
    method = CountingMethod()
    evaluate(method, mcc_dataset, out_dir=out, progress=False, name="colour", figures=False)
    rows = read_pairs(out)
    assert len(method.calls) == 1 and len(rows) == 12
    assert sorted((r["sample_id"], r["target"]) for r in rows) == sorted(
        (k.sample_id, t) for k in mcc_dataset.sample_keys() for t in range(k.num_concepts)
    )


def test_retry_failed_scores_failed_pairs_again(mcc_dataset, tmp_path):
    def broken(image, concepts):
        raise ValueError("broken")

    out = tmp_path / "run"
    evaluate(broken, mcc_dataset, out_dir=out, progress=False, name="m", limit=2)
    assert {r["status"] for r in read_pairs(out)} == {"failed"}
    report = evaluate(
        colour_method, mcc_dataset, out_dir=out, progress=False, name="m", limit=2, retry_failed=True
    )
    assert {r["status"] for r in read_pairs(out)} == {"ok"} and report.counts["overall"]["failed"] == 0


def test_a_different_run_in_the_same_folder_is_refused(mcc_dataset, tmp_path):
    evaluate(colour_method, mcc_dataset, out_dir=tmp_path / "run", progress=False, limit=1)
    with pytest.raises(RunMismatchError, match="method"):
        evaluate(lambda image, concepts: colour_method(image, concepts), mcc_dataset, out_dir=tmp_path / "run",
                 progress=False, limit=1)  # fmt: skip


def test_empty_target_masks_are_invalid_not_failures(tmp_path):
    image = Image.new("RGB", (16, 16))
    masks = np.zeros((2, 16, 16), bool)
    masks[0, :8] = True
    dataset = SampleList([Sample("s", image, ("a", "b"), masks, {"num_concepts": "2"})])
    report = evaluate(lambda im, c: np.random.default_rng(0).random((2, 4, 4)), dataset, out_dir=tmp_path / "r",
                      progress=False, name="random")  # fmt: skip
    assert report.counts["overall"] == {"pairs": 2, "scored": 1, "degenerate": 0, "failed": 0, "invalid": 1}


def test_user_method_by_module_reference(mcc_dataset, tmp_path, monkeypatch):
    (tmp_path / "my_grounding.py").write_text(
        "import numpy as np\n"
        "def segment(image, concepts):\n"
        "    return np.ones((len(concepts), 8, 8)) * np.arange(8)[None, None, :]\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert callable(resolve_method("my_grounding:segment"))
    report = evaluate("my_grounding:segment", mcc_dataset, out_dir=tmp_path / "run", progress=False, limit=2)
    assert report.method == "my_grounding:segment" and report.counts["overall"]["scored"] == 5
    for bad, message in [("my_grounding", "module:function"), ("my_grounding:nothing", "has no"),
                         ("no_such_module_xyz:f", "cannot import")]:  # fmt: skip
        with pytest.raises(ValueError, match=message):
            resolve_method(bad)


def test_anchordiff_wrapper_records_configuration_decisions_and_anchor_accuracy(mcc_dataset, tmp_path):
    fake = FakeAnchorDiff()
    method = AnchorDiffMethod("fake", pipeline=fake, mode="noise", steps=40, gate_quantile=0.95)
    report = evaluate(method, mcc_dataset, out_dir=tmp_path / "run", progress=False)
    assert fake.calls == 5 and report.method == "anchordiff"
    config = report.configuration
    assert (config["model"], config["revision"], config["preset"], config["mode"]) == (
        "fake",
        "abc",
        "sd3",
        "noise",
    )
    assert (config["steps"], config["gate_quantile"]) == (40, 0.95)
    assert report.anchor_accuracy is not None and report.anchor_accuracy > 0.9
    markdown = (tmp_path / "run" / "report.md").read_text()
    assert "Anchor accuracy" in markdown and "published, paper Table 2, SD3: 89.09%" in markdown
    assert "existing_image_extraction (mode) | noise" in markdown and "O_II heads" in markdown


def test_method_result_with_anchors_from_a_user_method(tmp_path, mcc_dataset):
    def with_anchors(image, concepts):
        maps = colour_method(image, concepts)
        flat = maps.reshape(len(concepts), -1).argmax(1)
        return MethodResult(heatmaps=maps, anchors=np.stack([flat // 12, flat % 12], 1))

    report = evaluate(with_anchors, mcc_dataset, out_dir=tmp_path / "run", progress=False)
    assert report.anchor_accuracy == 1.0


def test_binary_protocol_report_has_table_3_layout(tmp_path):
    rng = np.random.default_rng(0)
    samples = []
    for index in range(3):
        mask = np.zeros((20, 20), bool)
        mask[3 + index : 15, 4:16] = True
        ignore = np.zeros((20, 20), bool)
        ignore[0] = True
        pixels = (rng.random((20, 20, 3)) * 60).astype(np.uint8)
        pixels[mask] = (220, 30, 30)
        samples.append(
            Sample(f"voc-{index}", Image.fromarray(pixels), ("dog",), mask[None], {"class": "dog"}, ignore)
        )
    dataset = SampleList(samples, name="imagenet-segmentation", protocol="binary")
    report = evaluate(
        colour_method, dataset, out_dir=tmp_path / "run", progress=False, conceptattention_compat=True
    )
    assert report.overall["miou"] == pytest.approx(report.overall["acc"] / (2 - report.overall["acc"]))
    assert report.overall["miou_proper"] != pytest.approx(report.overall["miou"])
    markdown = (tmp_path / "run" / "report.md").read_text()
    assert (
        "| Ours SD3.5 | 85.46 | 77.29 | 91.20 | 88.50 | 81.53 | 94.05 | published (paper Table 3) |"
        in markdown
    )
    assert "Acc / (2 - Acc)" in markdown
    assert (tmp_path / "run" / "figures" / "qualitative.png").exists()


@pytest.fixture(scope=shared_unless_mutating)
def tiny_anchordiff():
    from anchordiff import AnchorDiff

    return AnchorDiff.from_pretrained("tiny")


@pytest.mark.slow
def test_runner_with_the_tiny_anchordiff(tiny_anchordiff, mcc_dataset, tmp_path):
    runner = AnchorDiffMethod("tiny", pipeline=tiny_anchordiff, mode="noise")
    report = evaluate(runner, mcc_dataset, out_dir=tmp_path / "anchordiff", limit=3, progress=False)
    assert report.counts["overall"]["pairs"] == 7
    assert report.counts["overall"]["failed"] == 0, report.errors
    assert report.counts["overall"]["scored"] == 7
    assert report.configuration["model"] == "tiny" and report.configuration["pipeline"]["num_layers"] >= 2
    assert report.anchor_accuracy is not None and 0.0 <= report.overall["map_fg"] <= 1.0
    assert (tmp_path / "anchordiff" / "figures" / "qualitative.png").exists()
    baseline = AnchorDiffMethod("tiny", pipeline=tiny_anchordiff, method="concept_attention", mode="noise")
    report = evaluate(baseline, mcc_dataset, out_dir=tmp_path / "ca", limit=1, progress=False, figures=False)
    assert report.method == "concept_attention" and report.counts["overall"]["scored"] == 2
    assert report.anchor_accuracy is None  # its anchors are not A_CI anchors
