"""Pins of ``benchmark.evaluate`` helpers: the method's readable name, its configuration, the
resume identity without the device, and ``run.json`` (written once, a different run refused)."""

from __future__ import annotations

import dataclasses
import datetime
import json
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from benchmark.datasets import Sample
from benchmark.evaluate import (
    AnchorDiffMethod,
    MethodResult,
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


class RecordingStub:
    """Stands in for AnchorDiff's ``record`` / ``heatmaps_from_record``: logs each call's arguments."""

    graph_layers = (7, 8)

    def __init__(self):
        self.record_calls = []
        self.map_calls = []

    def record(self, image, concepts, **kwargs):
        self.record_calls.append((image, concepts, kwargs))
        return SimpleNamespace(number=len(self.record_calls), timings={"invert": 1.5, "heatmaps": 9.0})

    def heatmaps_from_record(self, record, **kwargs):
        self.map_calls.append((record, kwargs))
        return SimpleNamespace(
            token_heatmaps=f"maps of {record.number}", anchors="anchors", timings={"heatmaps": 0.25}
        )


def test_shared_recording_records_once_per_ask_and_again_when_any_part_of_it_changes():
    """The same image object with the same concepts, mode, prompt, seed and layers reuses the last
    recording; a change in any one of them (or an equal but different image object) records again,
    with the graph layers sorted and the concepts as a list."""
    from benchmark.evaluate import SharedRecording

    stub = RecordingStub()
    shared = SharedRecording(stub)
    shared.need_graph_layers(["5", 2])
    shared.need_graph_layers([2])
    image = Image.new("RGB", (4, 4))
    ask = {"mode": "noise", "prompt": "p", "seed": 1}
    first = shared.get(image, ("a", "b"), **ask)
    assert shared.get(image, ("a", "b"), **ask) is first and shared.recordings == 1
    ((got, concepts, kwargs),) = stub.record_calls
    assert got is image and concepts == ["a", "b"] and isinstance(concepts, list)
    assert kwargs == {"mode": "noise", "prompt": "p", "graph_layers": (2, 5), "seed": 1}
    changes = [
        (Image.new("RGB", (4, 4)), ("a", "b"), ask),
        (image, ("b", "a"), ask),
        (image, ("a", "b"), {**ask, "mode": "invert"}),
        (image, ("a", "b"), {**ask, "prompt": None}),
        (image, ("a", "b"), {**ask, "seed": 2}),
    ]
    previous = first
    for number, (other_image, other_concepts, other_ask) in enumerate(changes, start=2):
        record = shared.get(other_image, other_concepts, **other_ask)
        assert record is not previous and record.number == number and shared.recordings == number
        previous = record
    shared.need_graph_layers([9])
    assert shared.get(image, ("a", "b"), **{**ask, "seed": 2}).number == 7  # more layers: record again
    assert stub.record_calls[-1][2]["graph_layers"] == (2, 5, 9)


def test_methods_sharing_a_recording_ask_for_their_layers_and_map_the_shared_record():
    """Graph methods add their layers (their own, else the pipeline's) to the shared recording,
    baselines add none; a call maps the shared record with the method's options, and its timings are
    the recording's stages plus its own heatmap time."""
    from benchmark.evaluate import SharedRecording

    stub = RecordingStub()
    shared = SharedRecording(stub)
    graph = AnchorDiffMethod(recording=shared, method="no_wcos", mode="noise", steps=5, gate_quantile=0.9, seed=4,
                             prompt_template="x {concepts}")  # fmt: skip
    assert graph.pipeline is stub and shared.graph_layers == {7, 8}
    AnchorDiffMethod(recording=shared, method="no_gate", layers=[3])
    AnchorDiffMethod(recording=shared, method="cross_attention", layers=[11])
    assert shared.graph_layers == {3, 7, 8}
    with pytest.raises(ValueError, match="its own pipeline"):
        AnchorDiffMethod(recording=shared, pipeline=RecordingStub())
    assert AnchorDiffMethod(recording=shared, pipeline=stub).pipeline is stub

    image = Image.new("RGB", (4, 4))
    result = graph(image, ["lemon", "lime"])
    ((_, _, recorded),) = stub.record_calls
    assert recorded == {"mode": "noise", "prompt": "x lemon and lime", "graph_layers": (3, 7, 8), "seed": 4}
    ((record, kwargs),) = stub.map_calls
    assert kwargs == {"method": "no_wcos", "layers": None, "steps": 5, "gate_quantile": 0.9}
    assert result.heatmaps == "maps of 1" and result.anchors == "anchors"
    assert result.timings == {"invert": 1.5, "heatmaps": 0.25}
    assert result.diagnose is not None  # a graph method's affinity statistics, on the shared record


def test_anchordiff_method_refuses_unknown_methods_and_modes_naming_the_choices():
    with pytest.raises(ValueError, match=r"unknown AnchorDiff method 'nope'; choose one of anchordiff, "):
        AnchorDiffMethod(pipeline=RecordingPipeline(), method="nope")
    with pytest.raises(ValueError, match=r"mode must be 'invert' or 'noise', got 'both'"):
        AnchorDiffMethod(pipeline=RecordingPipeline(), mode="both")


def test_resolve_method_imports_module_attributes_from_the_current_directory(tmp_path, monkeypatch):
    """``module:attr.attr`` walks attributes; the current directory is searched when it is not on the
    path; a callable is returned as is; each malformed or missing reference names what is wrong."""
    import sys

    from benchmark.evaluate import resolve_method

    (tmp_path / "grounding_in_cwd.py").write_text(
        "class Methods:\n    @staticmethod\n    def segment(image, concepts):\n        return 'maps'\n"
        "THRESHOLD = 0.5\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "grounding_in_cwd", raising=False)
    method = resolve_method("grounding_in_cwd:Methods.segment")
    assert method(None, []) == "maps" and sys.path[0] == str(tmp_path)
    assert resolve_method(plain_method) is plain_method
    for bad in ("grounding_in_cwd:", ":segment", "grounding_in_cwd"):
        with pytest.raises(ValueError, match=rf"a method reference is 'module:function', got {bad!r}"):
            resolve_method(bad)
    with pytest.raises(
        ValueError, match=r"'grounding_in_cwd' has no 'Methods.missing' \(method 'grounding_in"
    ):
        resolve_method("grounding_in_cwd:Methods.missing")
    with pytest.raises(ValueError, match=r"'grounding_in_cwd:THRESHOLD' is not callable"):
        resolve_method("grounding_in_cwd:THRESHOLD")
    with pytest.raises(
        ValueError, match=r"cannot import 'no_such_module_q' for method 'no_such_module_q:f': "
    ):
        resolve_method("no_such_module_q:f")


def three_concept_sample() -> Sample:
    masks = np.zeros((3, 12, 12), bool)
    masks[0, :4], masks[1, 4:8], masks[2, 8:] = True, True, True
    return Sample("img/1", Image.new("RGB", (12, 12)), ("husky", "wolf", "malamute"), masks,
                  tags={"source": "web"})  # fmt: skip


def test_run_sample_scores_only_the_pending_pairs_with_every_field(tmp_path, monkeypatch):
    """One method call per sample; each pending pair's row: the base fields, the call's seconds split
    over the K concepts, the timings, the scores, the anchor verdicts, the affinity, the leakage and
    the chance scores, status ok; a non-finite map fails its pair only; the heatmaps file keeps the
    K maps as float32, the concepts and the padded anchors."""
    import benchmark.evaluate as evaluate_module
    from benchmark.datasets import SampleKey
    from benchmark.evaluate import (
        PairLog,
        RunState,
        _run_sample,
        anchor_shares,
        chance_scores,
        row_base,
    )
    from benchmark.metrics import anchor_in_mask, leakage_shares

    sample = three_concept_sample()
    rng = np.random.default_rng(0)
    maps = rng.random((3, 6, 6))
    maps[1, 0, 0] = np.nan
    anchors = np.array([[0, 1], [2, 2], [5, 5]])
    calls = []

    def method(image, concepts):
        calls.append(concepts)
        return MethodResult(heatmaps=maps, anchors=anchors, timings={"extract": 2},
                            anchor_sets=[anchors[:1], np.array([[2, 2], [0, 0]]), anchors[2:]],
                            diagnose=lambda masks: {"pixels": int(masks.sum())})  # fmt: skip

    clock = iter([10.0, 16.0])
    monkeypatch.setattr(evaluate_module, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    state = RunState()
    key = SampleKey("img/1", 3)
    with PairLog(tmp_path / "pairs.jsonl") as log:
        _run_sample(method, sample, key, [1, 2], log, state, protocol="fg", ap_channels="both",
                    heatmap_path=tmp_path / "heatmaps" / "img_1.npz")  # fmt: skip
        rows = log.rows
    assert calls == [["husky", "wolf", "malamute"]]
    assert (state.scored, state.failed, state.invalid, state.seconds) == (1, 1, 0, 6.0)
    failed, ok = rows
    assert failed == {**row_base(sample, 1), "method_seconds": 2.0, "timings": {"extract": 2.0},
                      "status": "failed", "error": "the heatmap contains NaN or infinite values"}  # fmt: skip
    expected = {
        **row_base(sample, 2), "method_seconds": 2.0, "timings": {"extract": 2.0},
        **score_pair("fg", maps[2], sample, 2),
        "anchor_in_mask": anchor_in_mask(anchors[2], (6, 6), sample.masks[2]),
        **anchor_shares(anchors[2:], (6, 6), sample.masks, 2),
        "affinity": {"pixels": int(sample.masks.sum())},
        "leakage": leakage_shares(maps[2], sample.masks, 2),
        "chance": chance_scores("fg", sample, 2), "status": "ok",
    }  # fmt: skip
    assert ok == expected and ok["tags"] == {"source": "web"}
    saved = np.load(tmp_path / "heatmaps" / "img_1.npz")
    assert saved["heatmaps"].dtype == np.float32
    np.testing.assert_array_equal(saved["heatmaps"], maps.astype(np.float32))
    assert list(saved["concepts"]) == ["husky", "wolf", "malamute"]
    np.testing.assert_array_equal(saved["anchors"][1], [[2, 2], [0, 0]])
    np.testing.assert_array_equal(saved["anchors"][0], [[0, 1], [-1, -1]])


def test_run_sample_records_a_raising_method_and_an_invalid_sample_for_every_pending_pair(tmp_path):
    from benchmark.datasets import InvalidSample, SampleKey
    from benchmark.evaluate import PairLog, RunState, _run_sample, row_base

    sample = three_concept_sample()
    state = RunState()

    def broken(image, concepts):
        raise KeyError("no maps")

    with PairLog(tmp_path / "pairs.jsonl") as log:
        _run_sample(broken, sample, SampleKey("img/1", 3), [0, 2], log, state, protocol="fg",
                    ap_channels="both", heatmap_path=tmp_path / "h.npz")  # fmt: skip
        _run_sample(broken, InvalidSample("mask 2 is 5x5, the image 12x12"), SampleKey("bad", 3), [1, 2], log,
                    state, protocol="fg", ap_channels="both", heatmap_path=None)  # fmt: skip
        rows = log.rows
    assert rows[:2] == [
        {**row_base(sample, t), "status": "failed", "error": "KeyError: 'no maps'"} for t in (0, 2)
    ]
    assert rows[2:] == [
        {"sample_id": "bad", "target": t, "status": "invalid", "error": "mask 2 is 5x5, the image 12x12"}
        for t in (1, 2)
    ]
    assert (state.failed, state.invalid, state.scored, state.errors) == (2, 2, 0, ["KeyError: 'no maps'"])
    assert not (tmp_path / "h.npz").exists()


class CountingSamples:
    """A SampleList that counts how often each sample is decoded."""

    def __init__(self, samples, **kwargs):
        from benchmark.datasets import SampleList

        self.inner = SampleList(samples, **kwargs)
        self.protocol, self.name = self.inner.protocol, self.inner.name
        self.decoded = []

    def sample_keys(self):
        return self.inner.sample_keys()

    def describe(self):
        return self.inner.describe()

    def __getitem__(self, index):
        self.decoded.append(index)
        return self.inner[index]


def stripes(image, concepts):
    """Concept k lights the k-th horizontal third (three_concept_sample's masks)."""
    maps = np.zeros((len(concepts), 12, 12))
    for k in range(len(concepts)):
        maps[k, 4 * k : 4 * k + 4] = 1.0
    return maps


def test_evaluate_together_decodes_each_image_once_and_writes_each_methods_own_run(tmp_path):
    """Two methods over three images: each image decoded once for both; a method whose pairs are
    all done skips the image (counted, not re-run); run.json holds the identity; heatmaps only for
    the first ``qualitative`` images; reports in the methods' order, over the selected pairs only."""
    from benchmark.evaluate import evaluate_together, read_pairs

    base = three_concept_sample()
    samples = [dataclasses.replace(base, sample_id=f"s{i}", tags={"source": "web", "num_concepts": "3"})
               for i in range(3)]  # fmt: skip
    data = CountingSamples(samples, name="three")
    calls = {"a": 0, "b": 0}

    def method_a(image, concepts):
        calls["a"] += 1
        return stripes(image, concepts)

    def method_b(image, concepts):
        calls["b"] += 1
        return stripes(image, concepts)[::-1].copy()  # every concept on another's stripe

    folders = [tmp_path / "a", tmp_path / "b"]
    evaluate_together([method_a], data, out_dirs=folders[:1], names=["A"], progress=False, figures=False)
    assert calls == {"a": 3, "b": 0} and data.decoded == [0, 1, 2]
    data.decoded.clear()
    report_a, report_b = evaluate_together(
        [method_a, method_b], data, out_dirs=folders, names=["A", "B"], configurations=[None, {"k": 1}],
        progress=False, figures=False, qualitative=2,
    )  # fmt: skip
    assert calls == {"a": 3, "b": 3} and data.decoded == [0, 1, 2]
    assert (report_a.method, report_b.method) == ("A", "B")
    assert report_a.overall["miou_fg"] == 1.0 and report_b.overall["miou_fg"] < 0.5
    assert report_b.counts["overall"]["scored"] == 9 and len(read_pairs(folders[1])) == 9
    identity = json.loads((folders[1] / "run.json").read_text())
    assert identity == {"method": "B", "configuration": {"k": 1}, "dataset": {"name": "three", "protocol": "fg"},
                        "protocol": "fg", "ap_channels": None, "protocol_resolution": None}  # fmt: skip
    assert json.loads((folders[0] / "run.json").read_text())["configuration"] == {}  # as first written
    assert sorted(p.name for p in (folders[1] / "heatmaps").iterdir()) == ["s0.npz", "s1.npz"]

    data.decoded.clear()
    (limited,) = evaluate_together([method_b], data, out_dirs=folders[1:], names=["B"], limit=1,
                                   configurations=[{"k": 1}], progress=False, figures=False)  # fmt: skip
    assert data.decoded == [] and limited.counts["overall"]["pairs"] == 3  # the one selected image only


def test_evaluate_together_refuses_inconsistent_arguments_naming_the_fix(tmp_path):
    from benchmark.datasets import SampleList
    from benchmark.evaluate import evaluate_together

    data = SampleList([three_concept_sample()], name="mcc")
    cases = [
        ({"methods": [], "out_dirs": []}, "one out_dir"),
        ({"methods": [stripes], "out_dirs": [tmp_path / "a", tmp_path / "b"]}, "one out_dir"),
        ({"methods": [stripes], "out_dirs": [tmp_path / "a"], "names": ["x", "y"]}, "one out_dir"),
        ({"methods": [stripes], "out_dirs": [tmp_path / "a"], "configurations": [None, None]}, "one out_dir"),
        ({"methods": [stripes, stripes], "out_dirs": [tmp_path / "a", tmp_path / "x" / ".." / "a"]},
         "each method needs its own output folder"),
        ({"methods": [stripes], "out_dirs": [tmp_path / "a"], "conceptattention_compat": True},
         "ImageNet-Segmentation only .* 'mcc'"),
        ({"methods": [stripes], "out_dirs": [tmp_path / "a"], "protocol_resolution": 0},
         "protocol_resolution must be a positive size in pixels, got 0"),
    ]  # fmt: skip
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            evaluate_together(dataset=data, progress=False, figures=False, **kwargs)
    assert not (tmp_path / "a").exists()


def test_anchordiff_method_loads_the_pipeline_with_every_requested_option(monkeypatch):
    """Without a pipeline, ``AnchorDiff.from_pretrained`` gets the model, preset, device, dtype and revision."""
    import anchordiff

    loaded = []

    def from_pretrained(model, **kwargs):
        loaded.append((model, kwargs))
        return RecordingPipeline()

    monkeypatch.setattr(anchordiff.AnchorDiff, "from_pretrained", staticmethod(from_pretrained))
    AnchorDiffMethod("org/model", preset="sd35", device="cuda:1", dtype="bfloat16", revision="r2")
    assert loaded == [
        ("org/model", {"preset": "sd35", "device": "cuda:1", "dtype": "bfloat16", "revision": "r2"})
    ]


def test_seg4diff_layers_default_to_the_presets_when_the_pipeline_reports_none():
    seg4diff = AnchorDiffMethod(pipeline=RecordingPipeline({"seg4diff_layers": [9]}), method="seg4diff")
    assert seg4diff.config()["layers"] == [9]
    assert (
        AnchorDiffMethod(pipeline=RecordingPipeline(), method="seg4diff").config()["layers"]
        == "preset default"
    )


def test_scored_anchordiff_methods_carry_every_score_option():
    from benchmark.config import ScoreConfig
    from benchmark.evaluate import SharedRecording, scored_anchordiff_methods

    score = ScoreConfig(preset="sd35", revision="r1", mode="noise", layers=[4], steps=12, gate_quantile=0.9,
                        seed=5, prompt_template="see {concepts}")  # fmt: skip
    stub = RecordingStub()
    methods = scored_anchordiff_methods(score, ["anchordiff", "seg4diff"], SharedRecording(stub), "tiny")
    assert [m.method for m in methods] == ["anchordiff", "seg4diff"]
    for method in methods:
        assert method.pipeline is stub and method.recording is methods[0].recording
        assert (method.mode, method.layers, method.steps, method.gate_quantile, method.seed) == (
            "noise", (4,), 12, 0.9, 5,
        )  # fmt: skip
        assert method.prompt(["a", "b"]) == "see a and b"
        assert method._requested == {"model": "tiny", "preset": "sd35", "revision": "r1"}


def test_limited_selection_makes_untagged_keys_a_stratum_that_sorts_first():
    """A key without a subset tag counts as the empty string: with one image of each stratum and a
    limit of one, the tie goes to the first stratum in sorted order, the untagged one."""
    from benchmark.datasets import SampleKey
    from benchmark.evaluate import limited_selection

    tagged = SampleKey("tagged", 2, {"num_concepts": "2", "source": "web"})
    untagged = SampleKey("untagged", 2, {})
    assert [key.sample_id for _, key in limited_selection([tagged, untagged], 1)] == ["untagged"]


def test_run_sample_counts_invalid_pairs_across_samples_and_passes_the_ap_channels(tmp_path):
    """Invalid pairs add up over samples (a reason per pair, or the whole sample); the binary
    protocol scores with the run's AP channels."""
    from benchmark.datasets import InvalidSample, SampleKey
    from benchmark.evaluate import PairLog, RunState, _run_sample
    from benchmark.metrics import binary_image_scores

    sample = three_concept_sample()
    empty_wolf = dataclasses.replace(sample, masks=sample.masks.copy())
    empty_wolf.masks[1] = False
    state = RunState(invalid=5)
    with PairLog(tmp_path / "pairs.jsonl") as log:
        _run_sample(stripes, empty_wolf, SampleKey("img/1", 3), [0, 1], log, state, protocol="fg",
                    ap_channels="both", heatmap_path=None)  # fmt: skip
        assert state.invalid == 6 and state.scored == 1
        _run_sample(stripes, InvalidSample("unreadable"), SampleKey("x", 3), [0, 1, 2], log, state,
                    protocol="fg", ap_channels="both", heatmap_path=None)  # fmt: skip
        assert state.invalid == 9
        noisy = np.random.default_rng(3).random((3, 12, 12))
        _run_sample(lambda image, concepts: noisy, sample, SampleKey("img/1", 3), [2], log, state,
                    protocol="binary", ap_channels="foreground", heatmap_path=None)  # fmt: skip
        binary = log.rows[-1]["binary"]
    expected = binary_image_scores(noisy[2], sample.masks[2], ignore=None, ap_channels="foreground").as_dict()
    assert binary == expected
    assert binary != binary_image_scores(noisy[2], sample.masks[2], ignore=None, ap_channels="both").as_dict()


def test_evaluate_together_drives_the_progress_bar_with_the_pairs_done_and_to_do(tmp_path, monkeypatch):
    """The bar's total counts every selected pair of every method, its start the pairs already done,
    each step the pairs scored on that image; it is enabled as asked and titled with the method."""
    import benchmark.evaluate as evaluate_module
    from benchmark.datasets import SampleList

    bars = []

    class RecordingBar:
        def __init__(self, total, completed, description, enabled):
            bars.append(self)
            self.args, self.steps = (total, completed, description, enabled), []

        def advance(self, pairs, failed):
            self.steps.append((pairs, failed))

        def close(self):
            self.closed = True

    monkeypatch.setattr(evaluate_module, "ProgressBar", RecordingBar)
    samples = [dataclasses.replace(three_concept_sample(), sample_id=f"s{i}") for i in range(2)]
    data = SampleList(samples, name="two")
    out = tmp_path / "a"
    evaluate_module.evaluate(stripes, data, out_dir=out, limit=1, name="A", progress=True, figures=False)
    evaluate_module.evaluate(stripes, data, out_dir=out, name="A", progress=False, figures=False)
    first, second = bars
    assert first.args == (3, 0, "A on two", True) and first.steps == [(3, 0)] and first.closed
    assert second.args == (6, 3, "A on two", False) and sorted(second.steps) == [(0, 0), (3, 0)]


def test_a_binary_run_reports_its_ap_channels(tmp_path):
    from benchmark.datasets import SampleList
    from benchmark.evaluate import evaluate

    data = SampleList([three_concept_sample()], name="voc-like", protocol="binary")
    report = evaluate(
        stripes, data, out_dir=tmp_path / "r", progress=False, figures=False, ap_channels="foreground"
    )
    assert report.metric_settings["ap_channels"] == "foreground"


def test_progress_bar_shows_pairs_done_of_total_eta_and_failures():
    from rich.console import Console

    from benchmark.evaluate import ProgressBar

    def shown(bar):
        console = Console(record=True, width=150, color_system=None)
        console.print(bar._progress.get_renderable())
        return console.export_text()

    bar = ProgressBar(10, 3, "A on two", enabled=True, unit="pairs")
    try:
        text = shown(bar)
        assert "A on two" in text and "3/10 pairs" in text and "--/s" in text and "eta" in text
        assert "0 failed" in text
        bar.advance(2, 1)
        assert "5/10 pairs" in shown(bar) and "1 failed" in shown(bar)
    finally:
        bar.close()
    ProgressBar(10, 3, "off", enabled=False).advance(1, 0)  # disabled: nothing to show, nothing fails
