"""Pins of ``benchmark.evaluate`` helpers: the method's readable name, its configuration, the
resume identity without the device, and ``run.json`` (written once, a different run refused)."""

from __future__ import annotations

import datetime
import json
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from benchmark.datasets import Sample
from benchmark.evaluate import (
    AnchorDiffMethod,
    RunMismatchError,
    _without_device,
    check_run_file,
    invalid_reason,
    method_configuration,
    method_name,
    score_pair,
)
from benchmark.metrics import binary_image_scores, fg_scores


def plain_method(image, concepts):
    return None


class Named:
    name = "my-method"

    def __call__(self, image, concepts):
        return None


class Configured:
    def __init__(self, config):
        self.config = config

    def __call__(self, image, concepts):
        return None


def test_method_name_prefers_name_then_spec_then_module_and_qualname():
    """``name`` attribute, else the reference it was given by, else ``module:qualname``."""
    assert method_name(Named(), "pkg:spec") == "my-method"
    assert method_name(plain_method, "pkg.mod:fn") == "pkg.mod:fn"
    assert method_name(plain_method) == f"{__name__}:plain_method"
    instance = Configured({})
    assert method_name(instance) == f"{__name__}:Configured"  # an instance: its class's names


def test_method_configuration_reads_a_mapping_or_a_callable():
    """``config`` as a dict or a callable returning one; anything else (or none) gives {}."""
    assert method_configuration(Configured({"a": 1})) == {"a": 1}
    assert method_configuration(Configured(lambda: {"b": 2})) == {"b": 2}
    assert method_configuration(Configured("not a mapping")) == {}
    assert method_configuration(plain_method) == {}


def test_without_device_drops_the_device_at_both_levels():
    """The device may change on resume: left out of the top level and of the pipeline's config."""
    config = {"device": "cuda", "preset": "sd3", "pipeline": {"device": "cuda:1", "layers": [1]}}
    assert _without_device(config) == {"preset": "sd3", "pipeline": {"layers": [1]}}
    assert config["pipeline"]["device"] == "cuda:1"  # the input is not modified


def test_run_file_is_written_sorted_and_a_different_run_is_refused(tmp_path):
    """run.json: the identity as sorted JSON (non-JSON values as text); the same identity resumes,
    a different one raises naming the keys that differ."""
    when = datetime.date(2026, 1, 2)
    check_run_file(tmp_path, {"method": "m", "limit": 3, "when": when})
    text = (tmp_path / "run.json").read_text()
    assert json.loads(text) == {"limit": 3, "method": "m", "when": "2026-01-02"}
    assert text == json.dumps({"limit": 3, "method": "m", "when": "2026-01-02"}, indent=2) + "\n"
    check_run_file(tmp_path, {"when": when, "method": "m", "limit": 3})
    with pytest.raises(RunMismatchError, match=r"\(limit, new differ\)"):
        check_run_file(tmp_path, {"method": "m", "limit": 4, "when": when, "new": 1})


class RecordingPipeline:
    """Stands in for AnchorDiff: records each call, answers fixed maps / anchors / timings."""

    def __init__(self, config=None, timings=None):
        if config is not None:
            self.config = config
        self.timings = timings
        self.calls = []

    def __call__(self, image, concepts, **kwargs):
        self.calls.append((image, concepts, kwargs))
        return SimpleNamespace(token_heatmaps="maps", anchors="anchors", timings=self.timings)


def test_anchordiff_method_passes_every_option_to_the_pipeline():
    """A call hands the image, the concepts (a list), the prompt from the template and every
    option (layers as ints) to the pipeline; anchors only for anchor methods; timings as a dict."""
    pipeline = RecordingPipeline(timings={"extract": 0.5})
    method = AnchorDiffMethod(
        "m", pipeline=pipeline, mode="noise", layers=["3", 5], steps=7, gate_quantile=0.5, seed=2,
        prompt_template="two: {concepts}",
    )  # fmt: skip
    image = object()
    result = method(image, ("lemon", "lime"))
    ((got_image, concepts, kwargs),) = pipeline.calls
    assert got_image is image and concepts == ["lemon", "lime"] and isinstance(concepts, list)
    assert kwargs == {"mode": "noise", "prompt": "two: lemon and lime", "method": "anchordiff",
                      "layers": (3, 5), "steps": 7, "gate_quantile": 0.5, "seed": 2,
                      "return_record": True}  # fmt: skip
    assert (result.heatmaps, result.anchors, result.timings) == ("maps", "anchors", {"extract": 0.5})
    baseline = AnchorDiffMethod("m", pipeline=RecordingPipeline(), method="concept_attention")
    result = baseline(image, ["a", "b"])
    assert result.anchors is None and result.timings == {}
    assert baseline.pipeline.calls[0][2]["prompt"] is None and baseline.pipeline.calls[0][2]["layers"] is None
    assert baseline.pipeline.calls[0][2]["return_record"] is False  # no graph: no diagnostics to compute


def test_anchordiff_method_config_from_the_pipeline_or_the_request():
    """config(): the pipeline's model / revision / preset / dtype / device when it reports them
    (the requested ones otherwise), this scorer's options, and the pipeline's config as given."""
    reported = {"model": "real/model", "revision": "r1", "preset": "sd35", "dtype": "bfloat16",
                "device": "cuda", "graph_layers": [4, 5], "prompt_template": "p {concepts}", "x": (1, 2)}  # fmt: skip
    config = AnchorDiffMethod("asked", pipeline=RecordingPipeline(reported), steps=9, seed=3).config()
    assert config == {
        "method": "anchordiff", "model": "real/model", "revision": "r1", "preset": "sd35",
        "dtype": "bfloat16", "device": "cuda", "mode": "invert", "layers": [4, 5], "steps": 9,
        "gate_quantile": 0.98, "seed": 3, "prompt_template": "p {concepts}",
        "pipeline": {**reported, "x": [1, 2]},
    }  # fmt: skip
    bare = AnchorDiffMethod("asked", preset="sd3", revision="r0", pipeline=RecordingPipeline())
    config = bare.config()
    assert (config["model"], config["revision"], config["preset"]) == ("asked", "r0", "sd3")
    assert (config["dtype"], config["device"], config["pipeline"]) == (None, None, {})
    assert config["layers"] == "preset default" and config["prompt_template"] == "a photo of {concepts}"
    with_layers = AnchorDiffMethod(
        pipeline=RecordingPipeline(reported), layers=[1], prompt_template="t {concepts}"
    )
    assert with_layers.config()["layers"] == [1] and with_layers.config()["prompt_template"] == "t {concepts}"
    assert AnchorDiffMethod(pipeline=RecordingPipeline(), method="cross_attention").config()["layers"] == (
        "all blocks"
    )


def two_concept_sample(empty_second: bool = False) -> Sample:
    masks = np.zeros((2, 8, 8), bool)
    masks[0, :4] = True
    if not empty_second:
        masks[1, 4:] = True
    ignore = np.zeros((8, 8), bool)
    ignore[0, 0] = True
    return Sample("s", Image.new("RGB", (8, 8)), ("lemon", "lime"), masks, ignore=ignore)


def test_score_pair_per_protocol_with_the_default_ap_channels():
    """fg: ``fg_scores`` of the heatmap against all masks; binary: ``binary_image_scores`` of the
    target's mask (ignore pixels left out, AP over both channels by default)."""
    sample = two_concept_sample()
    heatmap = np.random.default_rng(1).random((8, 8))
    assert score_pair("fg", heatmap, sample, 1) == {"scores": fg_scores(heatmap, sample.masks, 1).as_dict()}
    expected = binary_image_scores(heatmap, sample.masks[1], ignore=sample.ignore, ap_channels="both")
    assert score_pair("binary", heatmap, sample, 1) == {"binary": expected.as_dict()}
    foreground = binary_image_scores(heatmap, sample.masks[1], ignore=sample.ignore, ap_channels="foreground")
    assert score_pair("binary", heatmap, sample, 1, ap_channels="foreground") == {
        "binary": foreground.as_dict()
    }


def test_an_empty_target_mask_is_invalid_under_fg_only():
    """fg needs the target's mask (NAR, mIoU_fg); the binary protocol scores an empty mask."""
    sample = two_concept_sample(empty_second=True)
    assert invalid_reason(sample, 1, "fg") == "the mask of 'lime' is empty"
    assert invalid_reason(sample, 0, "fg") is None
    assert invalid_reason(sample, 1, "binary") is None


def test_read_pairs_restores_rows_and_iter_scored_keeps_only_ok_ones(tmp_path):
    from benchmark.evaluate import iter_scored, read_pairs

    rows = [{"sample_id": "a", "status": "ok", "scores": {"nar": None}}, {"sample_id": "b", "status": "failed"},
            {"sample_id": "c", "status": "invalid"}, {"sample_id": "d", "status": "ok"}]  # fmt: skip
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    assert read_pairs(tmp_path) == rows
    assert [r["sample_id"] for r in iter_scored(read_pairs(tmp_path))] == ["a", "d"]
