"""Score any grounding method on a benchmark: ``evaluate(method, dataset, out_dir=...) -> Report``.

A *method* is any callable ``(image: PIL.Image, concepts: list[str]) -> heatmaps`` where
``heatmaps`` is a (K, h, w) array (numpy, torch, or anything ``numpy.asarray`` takes), one
map per concept in order, at any resolution; higher = more likely the concept. It may also
return a ``MethodResult`` (heatmaps plus optional anchors for Table 2's anchor accuracy).
``resolve_method("package.module:function")`` imports a user's method by name;
``AnchorDiffMethod`` wraps AnchorDiff and its baselines as such a callable.

The run writes into ``out_dir``:
- ``run.json``: what is being run (method, configuration, dataset); a resumed run must match.
- ``pairs.jsonl``: one JSON line per image-concept pair, appended and flushed as soon as it
  is scored (``status`` ``ok`` / ``failed`` / ``invalid``, the scores or the error). An
  interrupted run started again with the same arguments skips every pair already there.
- ``heatmaps/``: the heatmaps of the first few images, for the qualitative figure.
- ``report.json``, ``report.md``, ``figures/qualitative.png`` and, for MCC,
  ``figures/leakage_<domain>.png`` (each group's leakage matrix).

A method that raises, returns the wrong shape or non-finite values on one image gets that
image's pairs recorded as ``failed`` with the error; the run goes on and reports count them.
A dataset row that cannot be scored (empty target mask, mask / image size mismatch) is
recorded as ``invalid``, not charged to the method.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from benchmark.datasets import BenchmarkDataset, InvalidSample, Sample, SampleKey, safe_name
from benchmark.metrics import APChannels, anchor_in_mask, binary_image_scores, fg_scores, leakage_shares
from benchmark.report import SUBSET_TAGS, Report
from manifests.splits import largest_remainder

GroundingMethod = Callable[[Image.Image, list[str]], Any]

RUN_FILE = "run.json"
PAIRS_FILE = "pairs.jsonl"
HEATMAPS_DIR = "heatmaps"


class RunMismatchError(ValueError):
    """``out_dir`` already holds results of a different run."""


class MethodOutputError(ValueError):
    """A method returned something that is not (K, h, w) finite heatmaps."""


@dataclass(frozen=True)
class MethodResult:
    """What a method may return instead of a bare array.

    heatmaps: (K, h, w) real array (numpy or torch), one map per queried concept.
    anchors: optional (K, 2) integer (row, col) positions on the heatmaps' (h, w) grid; when
        given, the anchor accuracy of Table 2 is reported.
    timings: optional seconds per stage (e.g. ``{"extract": 0.4, "propagate": 0.05}``).
    anchor_sets: optional K (A_k, 2) integer arrays, every anchor of each concept on the same grid
        (a method with several anchors per concept); reported as anchors per concept, the share
        inside the target mask and the share on another concept's mask, and drawn in
        ``figures/anchors.png``.
    diagnose: optional ``f(masks) -> dict`` called once per image with the sample's (K, H, W) bool
        masks; its JSON-ready result is kept in the image's rows under ``affinity`` and averaged
        over images in the report (AnchorDiff's graph methods: the Table 1 affinity statistics).
    """

    heatmaps: Any
    anchors: Any | None = None
    timings: Mapping[str, float] | None = None
    anchor_sets: Sequence[Any] | None = None
    diagnose: Callable[[np.ndarray], Mapping[str, Any]] | None = None


# --------------------------------------------------------------------------------------------
# Methods
# --------------------------------------------------------------------------------------------


def resolve_method(spec: str | GroundingMethod) -> GroundingMethod:
    """A callable as is, or ``"package.module:function"`` imported (the current directory is
    searched too, so a user's ``my_method.py`` works from the command line)."""
    if callable(spec):
        return spec
    module_name, sep, attribute = str(spec).partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"a method reference is 'module:function', got {spec!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"cannot import {module_name!r} for method {spec!r}: {error}") from error
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ValueError(f"{module_name!r} has no {attribute!r} (method {spec!r})")
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"{spec!r} is not callable")
    return target


def method_name(method: GroundingMethod, spec: str | None = None) -> str:
    """A readable name: ``method.name`` if it has one, else the reference or qualified name."""
    name = getattr(method, "name", None)
    if isinstance(name, str) and name:
        return name
    if spec:
        return spec
    module = getattr(method, "__module__", None) or type(method).__module__
    qualname = getattr(method, "__qualname__", None) or type(method).__qualname__
    return f"{module}:{qualname}"


def method_configuration(method: GroundingMethod) -> dict[str, Any]:
    """``method.config`` (a dict or a callable returning one) if the method has one, else {}."""
    config = getattr(method, "config", None)
    if callable(config):
        config = config()
    return dict(config) if isinstance(config, Mapping) else {}


ANCHOR_METHODS = ("anchordiff", "anchordiff_multi", "cross_attention", "no_gate", "no_wcos")
"""AnchorDiff methods whose anchors are the A_CI argmax of Table 2."""
GRAPH_METHODS = ("anchordiff", "anchordiff_multi", "no_gate", "no_wcos")
"""Methods whose ``layers`` are graph layers (the others average A_CI, concept maps or Seg4Diff's
attention over blocks)."""


class SharedRecording:
    """One AnchorDiff recording per image for several AnchorDiff methods scored together.

    Every :class:`AnchorDiffMethod` built with the same ``SharedRecording`` asks it for an image's
    recording: the first ask records (``AnchorDiff.record``, with the union of the graph layers the
    methods need), the next ones reuse it while they ask about the same image object with the same
    concepts, mode, prompt and seed. Only the last recording is kept, which is all
    :func:`evaluate_together` needs (it gives each image to every method before the next image).
    ``recordings`` counts the forward passes made (for reports and tests).
    """

    def __init__(self, pipeline: Any):
        self.pipeline = pipeline
        self.graph_layers: set[int] = set()
        self.recordings = 0
        self._last: tuple[Any, tuple, Any] | None = None

    def need_graph_layers(self, layers: Iterable[int]) -> None:
        """Record A_II / O_II at ``layers`` too (called by each method before the first recording)."""
        self.graph_layers.update(int(x) for x in layers)

    def get(self, image: Image.Image, concepts: Sequence[str], *, mode: str, prompt: str | None, seed: int):
        """The ``AttentionRecord`` of ``image`` (recorded now, or the last one when it is the same ask)."""
        layers = tuple(sorted(self.graph_layers))
        key = (tuple(concepts), mode, prompt, seed, layers)
        if self._last is not None and self._last[0] is image and self._last[1] == key:
            return self._last[2]
        self._last = None  # free the previous recording before making the next
        record = self.pipeline.record(
            image, list(concepts), mode=mode, prompt=prompt, graph_layers=layers, seed=seed
        )
        self.recordings += 1
        self._last = (image, key, record)
        return record


class AnchorDiffMethod:
    """AnchorDiff (or one of its baselines / ablations) as a grounding-method callable.

    Loads the pipeline once (``AnchorDiff.from_pretrained``) or uses ``pipeline`` as given.
    Each call returns a ``MethodResult`` with the token-grid heatmaps (K, g, g) (the metrics
    resize them to the masks like any method's) and, for anchor-based methods, the anchors.

    method: ``anchordiff``, ``anchordiff_multi``, ``cross_attention``, ``concept_attention``,
        ``seg4diff``, ``no_gate``, ``no_wcos``.
    prompt_template: None = AnchorDiff's default prompt (``"a photo of " + " and ".join(concepts)``);
        otherwise a ``str.format`` template with ``{concepts}`` (joined with " and ").
    recording: a :class:`SharedRecording` of the same pipeline, shared with the other methods scored
        together (``evaluate_together``): each image is recorded once for all of them. Then the
        ``method_seconds`` of the first method to see an image include the recording, the others'
        only their maps (``timings`` of every method hold the recording's stages).
    """

    def __init__(
        self,
        model: str = "tiny",
        *,
        preset: str = "sd3",
        method: str = "anchordiff",
        mode: str = "invert",
        layers: Sequence[int] | None = None,
        steps: int = 160,
        gate_quantile: float = 0.98,
        seed: int = 0,
        prompt_template: str | None = None,
        device: str | None = None,
        dtype: str | None = None,
        revision: str | None = None,
        pipeline: Any = None,
        recording: SharedRecording | None = None,
    ):
        from anchordiff.pipeline import MAP_BUILDERS  # the registered methods (anchordiff.pipeline)

        if method not in MAP_BUILDERS:
            raise ValueError(f"unknown AnchorDiff method {method!r}; choose one of {', '.join(MAP_BUILDERS)}")
        if mode not in ("invert", "noise"):
            raise ValueError(f"mode must be 'invert' or 'noise', got {mode!r}")
        if recording is not None:
            if pipeline is not None and pipeline is not recording.pipeline:
                raise ValueError(
                    "a SharedRecording serves the methods of its own pipeline; pass one or the other"
                )
            pipeline = recording.pipeline
        if pipeline is None:
            from anchordiff import AnchorDiff  # heavy (diffusers); only when AnchorDiff is scored

            pipeline = AnchorDiff.from_pretrained(
                model, preset=preset, device=device, dtype=dtype, revision=revision
            )
        self.pipeline = pipeline
        self.method = method
        self.mode = mode
        self.layers = None if layers is None else tuple(int(x) for x in layers)
        self.steps = int(steps)
        self.gate_quantile = float(gate_quantile)
        self.seed = int(seed)
        self.prompt_template = prompt_template
        self.recording = recording
        if recording is not None and MAP_BUILDERS[method].needs_graph:
            recording.need_graph_layers(self.layers or pipeline.graph_layers)
        self._requested = {"model": model, "preset": preset, "revision": revision}

    @property
    def name(self) -> str:
        return self.method

    def prompt(self, concepts: Sequence[str]) -> str | None:
        if self.prompt_template is None:
            return None
        return self.prompt_template.format(concepts=" and ".join(concepts))

    def __call__(self, image: Image.Image, concepts: list[str]) -> MethodResult:
        if self.recording is not None:
            record = self.recording.get(
                image, concepts, mode=self.mode, prompt=self.prompt(concepts), seed=self.seed
            )
            out = self.pipeline.heatmaps_from_record(
                record, method=self.method, layers=self.layers, steps=self.steps,
                gate_quantile=self.gate_quantile,
            )  # fmt: skip
            out.timings = {**record.timings, "heatmaps": out.timings["heatmaps"]}
        else:
            out = self.pipeline(
                image, list(concepts), mode=self.mode, prompt=self.prompt(concepts), method=self.method,
                layers=self.layers, steps=self.steps, gate_quantile=self.gate_quantile, seed=self.seed,
                return_record=self.method in GRAPH_METHODS,
            )  # fmt: skip
            record = getattr(out, "record", None)
        if self.method not in ANCHOR_METHODS:
            return MethodResult(heatmaps=out.token_heatmaps, timings=dict(out.timings or {}))
        return MethodResult(
            heatmaps=out.token_heatmaps,
            anchors=out.anchors,
            timings=dict(out.timings or {}),
            anchor_sets=getattr(out, "anchor_sets", None),
            diagnose=self._affinity(record) if self.method in GRAPH_METHODS and record is not None else None,
        )

    def _affinity(self, record: Any) -> Callable[[np.ndarray], dict[str, Any]]:
        """Table 1's affinity statistics of this image's graph, given its masks (``anchordiff.graph``)."""

        def diagnose(masks: np.ndarray) -> dict[str, Any]:
            import torch

            from anchordiff.graph import affinity_stats, token_labels

            a_ii, o_ii = self.pipeline.graph_inputs(record, self.layers)
            labels = token_labels(torch.as_tensor(masks, device=a_ii.device), record.grid)
            return affinity_stats(a_ii, o_ii, labels, gate_quantile=self.gate_quantile)

        return diagnose

    def config(self) -> dict[str, Any]:
        """Method, model, preset, every option of this scorer and the pipeline's own configuration."""
        pipeline_config = json.loads(
            json.dumps(dict(getattr(self.pipeline, "config", {}) or {}), default=str)
        )
        if self.method in GRAPH_METHODS:
            default_layers = pipeline_config.get("graph_layers", "preset default")
        elif self.method == "seg4diff":
            default_layers = pipeline_config.get("seg4diff_layers", "preset default")
        else:
            default_layers = "all blocks"
        layers = list(self.layers) if self.layers is not None else default_layers
        return {
            "method": self.method,
            "model": pipeline_config.get("model", self._requested["model"]),
            "revision": pipeline_config.get("revision", self._requested["revision"]),
            "preset": pipeline_config.get("preset", self._requested["preset"]),
            "dtype": pipeline_config.get("dtype"),
            "device": pipeline_config.get("device"),
            "mode": self.mode,
            "layers": layers,
            "steps": self.steps,
            "gate_quantile": self.gate_quantile,
            "seed": self.seed,
            "prompt_template": self.prompt_template
            or pipeline_config.get("prompt_template", "a photo of {concepts}"),
            "pipeline": pipeline_config,
        }


def _anchor_sets(output: Any, anchors: np.ndarray | None) -> list[np.ndarray] | None:
    """Every anchor of each concept: the method's ``anchor_sets``, else its one anchor per concept."""
    sets = getattr(output, "anchor_sets", None)
    if sets is None:
        return None if anchors is None else [a[None] for a in anchors]
    arrays = [_to_numpy(a).astype(np.int64).reshape(-1, 2) for a in sets]
    if anchors is None or len(arrays) != len(anchors) or any(len(a) == 0 for a in arrays):
        raise MethodOutputError(
            "anchor_sets must hold one non-empty (A_k, 2) array per concept, beside anchors"
        )
    return arrays


def _diagnostics(output: Any, sample: Sample) -> dict[str, Any] | None:
    """The method's per-image diagnostics (``MethodResult.diagnose``) of this sample's masks, or None."""
    diagnose = getattr(output, "diagnose", None)
    if diagnose is None:
        return None
    try:
        return _jsonable(dict(diagnose(sample.masks)))
    except Exception as error:  # a diagnostic must not fail the method's scores
        return {"error": f"{type(error).__name__}: {error}"}


def padded_anchors(anchor_sets: Sequence[np.ndarray]) -> np.ndarray:
    """(K, A_max, 2) int64 of every concept's anchors, padded with -1 (the heatmaps file's ``anchors``)."""
    width = max(len(a) for a in anchor_sets)
    padded = np.full((len(anchor_sets), width, 2), -1, dtype=np.int64)
    for k, anchors in enumerate(anchor_sets):
        padded[k, : len(anchors)] = anchors
    return padded


def anchor_shares(
    anchors: np.ndarray, grid: tuple[int, int], masks: np.ndarray, target: int
) -> dict[str, Any]:
    """A concept's anchors (A, 2) on the heatmap ``grid``: how many, the share inside its own mask and
    the share inside another concept's mask but not its own (a leaking anchor)."""
    others = np.delete(masks, target, axis=0).any(axis=0) & ~masks[target] if len(masks) > 1 else None
    inside = [anchor_in_mask(a, grid, masks[target]) for a in anchors]
    elsewhere = (
        [anchor_in_mask(a, grid, others) for a in anchors] if others is not None else [False] * len(anchors)
    )
    return {
        "anchors": [[int(r), int(c)] for r, c in anchors],
        "anchor_precision": float(np.mean(inside)),
        "anchors_on_other_concepts": float(np.mean(elsewhere)),
    }


def scored_anchordiff_methods(
    score: Any, names: Sequence[str], recording: SharedRecording, model: str
) -> list[AnchorDiffMethod]:
    """The AnchorDiff methods ``names`` with the options of ``score`` (a ``benchmark.config.ScoreConfig``:
    mode, layers, steps, gate quantile, seed, prompt template, preset, revision), all on ``recording``."""
    return [
        AnchorDiffMethod(
            model,
            preset=score.preset,
            method=name,
            mode=score.mode,
            layers=score.layers,
            steps=score.steps,
            gate_quantile=score.gate_quantile,
            seed=score.seed,
            prompt_template=score.prompt_template,
            revision=score.revision,
            recording=recording,
        )  # fmt: skip
        for name in names
    ]


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, without importing torch here
        value = value.detach().float().cpu().numpy()
    return np.asarray(value)


def as_heatmaps(output: Any, num_concepts: int) -> tuple[np.ndarray, np.ndarray | None, dict[str, float]]:
    """A method's output -> ((K, h, w) float64 heatmaps, (K, 2) anchors or None, timings).

    Non-finite values are left in place (the caller fails only the affected pairs). Raises
    MethodOutputError when the output is not a (K, h, w) real array with K = ``num_concepts``.
    """
    anchors = timings = None
    if isinstance(output, MethodResult):
        output, anchors, timings = output.heatmaps, output.anchors, output.timings
    try:
        heatmaps = _to_numpy(output)
    except Exception as error:
        raise MethodOutputError(
            f"the method returned {type(output).__name__}, not an array: {error}"
        ) from error
    if heatmaps.ndim != 3 or heatmaps.shape[0] != num_concepts or 0 in heatmaps.shape:
        raise MethodOutputError(
            f"the method returned shape {heatmaps.shape}; expected (K={num_concepts}, h, w), one map per concept"
        )
    if not (np.issubdtype(heatmaps.dtype, np.number) or heatmaps.dtype == bool) or np.iscomplexobj(heatmaps):
        raise MethodOutputError(f"the method returned dtype {heatmaps.dtype}; expected real numbers")
    anchor_array = None
    if anchors is not None:
        anchor_array = _to_numpy(anchors).astype(np.int64)
        if anchor_array.shape != (num_concepts, 2):
            raise MethodOutputError(f"anchors have shape {anchor_array.shape}; expected ({num_concepts}, 2)")
    return heatmaps.astype(np.float64), anchor_array, {k: float(v) for k, v in (timings or {}).items()}


# --------------------------------------------------------------------------------------------
# Scoring one sample
# --------------------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    """NaN / inf -> None so the JSON lines stay standard JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    return value


def invalid_reason(sample: Sample, target: int, protocol: str) -> str | None:
    """Why a pair of the dataset cannot be scored, or None."""
    mask = sample.masks[target]
    if protocol == "fg" and not mask.any():
        return f"the mask of {sample.concepts[target]!r} is empty"
    return None


def score_pair(
    protocol: str,
    heatmap: np.ndarray,
    sample: Sample,
    target: int,
    *,
    ap_channels: APChannels = "both",
) -> dict[str, Any]:
    """The scores of one pair as a JSON-ready dict (``fg`` or ``binary`` protocol)."""
    if protocol == "fg":
        return {"scores": fg_scores(heatmap, sample.masks, target).as_dict()}
    if protocol == "binary":
        scores = binary_image_scores(
            heatmap, sample.masks[target], ignore=sample.ignore, ap_channels=ap_channels
        )
        return {"binary": scores.as_dict()}
    raise ValueError(f"unknown protocol {protocol!r}")


CHANCE_MAPS = ("constant", "random")
"""The chance baselines scored on every pair the method scored: ``constant`` (one value
everywhere) and ``random`` (i.i.d. uniform [0, 1) per pixel of the scored masks)."""


def chance_heatmap(kind: str, size: tuple[int, int], sample_id: str, target: int) -> np.ndarray:
    """A chance baseline's heatmap for one pair: (1, 1) zeros, or (H, W) uniform noise seeded
    by the pair (sha256 of ``sample_id`` and ``target``), so every run draws the same map."""
    if kind == "constant":
        return np.zeros((1, 1))
    if kind == "random":
        digest = hashlib.sha256(f"{sample_id}\0{target}".encode()).digest()
        return np.random.default_rng(int.from_bytes(digest[:8], "little")).random(size)
    raise ValueError(f"unknown chance map {kind!r}; choose one of {', '.join(CHANCE_MAPS)}")


def chance_scores(
    protocol: str, sample: Sample, target: int, *, ap_channels: APChannels = "both"
) -> dict[str, dict[str, Any]]:
    """``{"constant": scores, "random": scores}`` of one pair, as ``score_pair`` scores a method
    (the inner dict: fg scores, or the binary protocol's counts)."""
    size = sample.masks.shape[1:]
    result = {}
    for kind in CHANCE_MAPS:
        heatmap = chance_heatmap(kind, size, sample.sample_id, target)
        (scores,) = score_pair(protocol, heatmap, sample, target, ap_channels=ap_channels).values()
        result[kind] = scores
    return result


def at_protocol_resolution(sample: Sample, size: int | None) -> Sample:
    """The sample with its masks (and ignore map) resized to (size, size) by nearest neighbour
    (PIL ``NEAREST``, as Chefer et al.'s ``Resize((224, 224), Image.NEAREST)`` of the labels);
    the image is left as it is (the method reads it at its own resolution). None: unchanged."""
    if size is None:
        return sample

    def nearest(mask: np.ndarray) -> np.ndarray:
        image = Image.fromarray(mask.astype(np.uint8) * 255)
        return np.asarray(image.resize((size, size), Image.Resampling.NEAREST)) > 0

    return dataclasses.replace(
        sample,
        masks=np.stack([nearest(m) for m in sample.masks]),
        ignore=None if sample.ignore is None else nearest(sample.ignore),
    )


# --------------------------------------------------------------------------------------------
# Which images
# --------------------------------------------------------------------------------------------


def limited_selection(
    keys: Sequence[SampleKey], limit: int | None, *, seed: int = 0
) -> list[tuple[int, SampleKey]]:
    """``limit`` images sampled stratified by subset (``SUBSET_TAGS``: number of concepts,
    source), in dataset order; all of them when ``limit`` is None or >= their number.

    Each stratum gets its share of ``limit`` (largest remainder, ties in stratum order) and
    its images are drawn by a permutation seeded with ``seed``, so a limit is reproducible.
    """
    indexed = list(enumerate(keys))
    if limit is None or limit >= len(indexed):
        return indexed
    strata: dict[tuple[str, ...], list[tuple[int, SampleKey]]] = {}
    for index, key in indexed:
        strata.setdefault(tuple(str(key.tags.get(t, "")) for t in SUBSET_TAGS), []).append((index, key))
    names = sorted(strata)
    quota = largest_remainder({name: len(strata[name]) for name in names}, limit)
    rng = np.random.default_rng(seed)
    chosen = []
    for name in names:
        members = strata[name]
        picks = rng.permutation(len(members))[: quota[name]]
        chosen.extend(members[i] for i in picks)
    return sorted(chosen, key=lambda item: item[0])


# --------------------------------------------------------------------------------------------
# The results file
# --------------------------------------------------------------------------------------------


class PairLog:
    """``pairs.jsonl``: read what is there (a torn last line from a crash is dropped), then
    append one line per pair, flushed at once."""

    def __init__(self, path: Path):
        self.path = path
        self.rows: list[dict[str, Any]] = []
        if path.exists():
            data = path.read_bytes()
            complete = data[: data.rfind(b"\n") + 1]
            if len(complete) != len(data):
                with path.open("r+b") as handle:  # drop a partial line left by an interruption
                    handle.truncate(len(complete))
            for number, line in enumerate(complete.decode("utf-8").splitlines(), 1):
                if line.strip():
                    try:
                        self.rows.append(json.loads(line))
                    except json.JSONDecodeError as error:
                        raise ValueError(
                            f"{path}:{number} is not JSON ({error}); delete the line or the file"
                        ) from error
        self._handle = path.open("a", encoding="utf-8")

    def append(self, row: dict[str, Any]) -> None:
        self._handle.write(json.dumps(_jsonable(row), allow_nan=False) + "\n")
        self._handle.flush()
        self.rows.append(row)

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> PairLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_run_file(out_dir: Path, identity: dict[str, Any]) -> None:
    """Write ``run.json`` for a new run, or check that a resumed run is the same run."""
    path = out_dir / RUN_FILE
    normalised = json.loads(json.dumps(_jsonable(identity), sort_keys=True, default=str))
    if path.exists():
        existing = json.loads(path.read_text())
        if existing != normalised:
            changed = sorted(
                k for k in set(existing) | set(normalised) if existing.get(k) != normalised.get(k)
            )
            raise RunMismatchError(
                f"{out_dir} holds results of a different run ({', '.join(changed)} differ): "
                "use another --out folder, or delete this one to start over"
            )
        return
    path.write_text(json.dumps(normalised, indent=2, sort_keys=True) + "\n")


# --------------------------------------------------------------------------------------------
# Progress
# --------------------------------------------------------------------------------------------


class ProgressBar:
    """A rich progress bar with pairs done, pairs/s and ETA (or nothing when disabled)."""

    def __init__(self, total: int, completed: int, description: str, enabled: bool, unit: str = "pairs"):
        self._progress = None
        if not enabled:
            return
        from rich.progress import (
            BarColumn,
            Progress,
            ProgressColumn,
            TextColumn,
            TimeRemainingColumn,
        )
        from rich.text import Text

        class RateColumn(ProgressColumn):
            def render(self, task: Any) -> Text:
                speed = task.speed
                return Text(f"{speed:.2f}/s" if speed else "--/s", style="progress.data.speed")

        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(bar_width=20),
            TextColumn(f"{{task.completed}}/{{task.total}} {unit}"),
            RateColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(compact=True),
            TextColumn("{task.fields[failed]} failed"),
        )
        self._task = self._progress.add_task(description, total=total, completed=completed, failed=0)
        self._progress.start()

    def advance(self, pairs: int, failed: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=pairs, failed=failed)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()


# --------------------------------------------------------------------------------------------
# The runner
# --------------------------------------------------------------------------------------------


@dataclass
class RunState:
    """Counters of one ``evaluate`` call (for the caller and the progress bar)."""

    scored: int = 0
    failed: int = 0
    invalid: int = 0
    skipped: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)


def _pending_targets(key: SampleKey, done: set[tuple[str, int]]) -> list[int]:
    return [t for t in range(key.num_concepts) if (key.sample_id, t) not in done]


def row_base(sample: Sample, target: int) -> dict[str, Any]:
    return {
        "sample_id": sample.sample_id,
        "target": target,
        "concept": sample.concepts[target],
        "concepts": list(sample.concepts),
        "tags": dict(sample.tags),
    }


def evaluate(
    method: GroundingMethod | str,
    dataset: BenchmarkDataset,
    *,
    out_dir: str | os.PathLike,
    limit: int | None = None,
    name: str | None = None,
    configuration: Mapping[str, Any] | None = None,
    progress: bool = True,
    qualitative: int = 6,
    ap_channels: APChannels = "both",
    conceptattention_compat: bool = False,
    protocol_resolution: int | None = None,
    retry_failed: bool = False,
    figures: bool = True,
) -> Report:
    """Run ``method`` on ``dataset`` and write results, report and figures into ``out_dir``.

    method: a callable ``(PIL image, concepts) -> (K, h, w) heatmaps`` (or ``MethodResult``),
        or a ``"module:function"`` reference to one.
    dataset: an MCC / ImageNet-Segmentation / VOC dataset (``benchmark.datasets``) or any
        object with ``protocol``, ``sample_keys()``, ``__getitem__`` and ``describe()``.
    limit: score only ``limit`` images (all their concepts), sampled stratified by subset with
        a fixed seed (``limited_selection``).
    name / configuration: recorded in the report (default: the method's ``name`` / ``config``).
    qualitative: keep the heatmaps of the first this-many images for the qualitative figure.
    ap_channels / conceptattention_compat: standard-protocol options (``benchmark.metrics``);
        ``conceptattention_compat`` only for ImageNet-Segmentation, the one benchmark where
        ConceptAttention's script reports Acc / (2 - Acc) as mIoU.
    protocol_resolution: score at (n, n) instead of the masks' size: masks nearest-neighbour
        resized (``at_protocol_resolution``), heatmaps bilinear as always; 224 reproduces
        Chefer et al.'s evaluation. Chance maps are drawn at the same size.
    retry_failed: score again the pairs recorded ``failed`` by an earlier run in ``out_dir``.

    Returns the ``Report`` (also written as ``report.json`` and ``report.md``). Raises
    RunMismatchError when ``out_dir`` holds results of a different method or dataset.
    """
    (report,) = evaluate_together(
        [method], dataset, out_dirs=[out_dir], limit=limit, names=[name], configurations=[configuration],
        progress=progress, qualitative=qualitative, ap_channels=ap_channels,
        conceptattention_compat=conceptattention_compat, protocol_resolution=protocol_resolution,
        retry_failed=retry_failed, figures=figures,
    )  # fmt: skip
    return report


@dataclass
class _Run:
    """One method's run inside :func:`evaluate_together`: what it is, where it writes, what it did."""

    method: GroundingMethod
    name: str
    config: dict[str, Any]
    out: Path
    log: PairLog
    done: set[tuple[str, int]]
    state: RunState = field(default_factory=RunState)


def evaluate_together(
    methods: Sequence[GroundingMethod | str],
    dataset: BenchmarkDataset,
    *,
    out_dirs: Sequence[str | os.PathLike],
    limit: int | None = None,
    names: Sequence[str | None] | None = None,
    configurations: Sequence[Mapping[str, Any] | None] | None = None,
    progress: bool = True,
    qualitative: int = 6,
    ap_channels: APChannels = "both",
    conceptattention_compat: bool = False,
    protocol_resolution: int | None = None,
    retry_failed: bool = False,
    figures: bool = True,
) -> list[Report]:
    """:func:`evaluate` for several methods in one pass over the images, one ``out_dirs`` folder each.

    Each selected image is decoded once and handed to every method in turn before the next image, so
    AnchorDiff methods that share a :class:`SharedRecording` record each image once for all of them.
    Every folder gets exactly what ``evaluate`` would write for its method alone (and resumes the same
    way); ``names`` / ``configurations`` as ``evaluate``'s ``name`` / ``configuration``, per method.
    Returns the reports in the order of ``methods``.
    """
    count = len(methods)
    names = list(names) if names is not None else [None] * count
    configurations = list(configurations) if configurations is not None else [None] * count
    if not count or not (len(out_dirs) == len(names) == len(configurations) == count):
        raise ValueError("give one out_dir (and one name / configuration when given) per method")
    folders = [Path(folder).resolve() for folder in out_dirs]
    if len(set(folders)) != count:
        raise ValueError(f"each method needs its own output folder, got {[str(f) for f in out_dirs]}")
    protocol = dataset.protocol
    dataset_info = dataset.describe()
    if conceptattention_compat and not str(dataset_info.get("name", "")).startswith("imagenet"):
        raise ValueError(
            f"the ConceptAttention compatibility option applies to ImageNet-Segmentation only (its VOC script "
            f"computes a proper IoU, and MCC has its own metrics); leave it off for {dataset_info.get('name')!r}"
        )
    if protocol_resolution is not None and protocol_resolution < 1:
        raise ValueError(f"protocol_resolution must be a positive size in pixels, got {protocol_resolution}")

    keys = dataset.sample_keys()
    selected = limited_selection(keys, limit)
    wanted = {(key.sample_id, t) for _, key in selected for t in range(key.num_concepts)}
    runs: list[_Run] = []
    with contextlib.ExitStack() as stack:
        for spec, out_dir, name, configuration in zip(methods, out_dirs, names, configurations, strict=True):
            method = resolve_method(spec)
            name = name or method_name(method, spec if isinstance(spec, str) else None)
            config = dict(configuration) if configuration is not None else method_configuration(method)
            out = Path(out_dir)
            out.mkdir(parents=True, exist_ok=True)
            identity = {
                "method": name,
                "configuration": _without_device(config),
                "dataset": {k: v for k, v in dataset_info.items() if k not in ("samples", "pairs")},
                "protocol": protocol,
                "ap_channels": ap_channels if protocol == "binary" else None,
                "protocol_resolution": protocol_resolution,
            }
            check_run_file(out, identity)
            if retry_failed:
                _drop_failed(out / PAIRS_FILE)
            log = stack.enter_context(PairLog(out / PAIRS_FILE))
            done = {(r["sample_id"], int(r["target"])) for r in log.rows}
            runs.append(_Run(method, name, config, out, log, done))

        total_pairs = count * len(wanted)
        already = sum(len(run.done & wanted) for run in runs)
        title = runs[0].name if count == 1 else f"{count} methods"
        bar = ProgressBar(total_pairs, already, f"{title} on {dataset.name}", progress)
        try:
            for index, key in selected:
                pending = [_pending_targets(key, run.done) for run in runs]
                sample = _load_sample(dataset, index, protocol_resolution) if any(pending) else None
                for run, targets in zip(runs, pending, strict=True):
                    if not targets:
                        run.state.skipped += key.num_concepts
                        continue
                    heatmap_dir = run.out / HEATMAPS_DIR
                    _run_sample(
                        run.method, sample, key, targets, run.log, run.state,
                        protocol=protocol, ap_channels=ap_channels,
                        heatmap_path=heatmap_dir / f"{safe_name(key.sample_id)}.npz" if index < qualitative else None,
                    )  # fmt: skip
                bar.advance(sum(map(len, pending)), sum(run.state.failed for run in runs))
        finally:
            bar.close()
        rows_by_run = [
            [r for r in run.log.rows if (r["sample_id"], int(r["target"])) in wanted] for run in runs
        ]

    reports = []
    for run, rows in zip(runs, rows_by_run, strict=True):
        report = Report.from_rows(
            rows,
            protocol=protocol,
            method=run.name,
            configuration=run.config,
            dataset=dataset_info,
            limit=limit,
            conceptattention_compat=conceptattention_compat,
            ap_channels=ap_channels,
            protocol_resolution=protocol_resolution,
        )
        report.write(run.out)
        if figures:
            from benchmark.figures import anchor_figure, leakage_figures, qualitative_grid

            qualitative_grid(
                dataset, [(run.name, run.out / HEATMAPS_DIR)], run.out / "figures" / "qualitative.png",
                max_images=qualitative,
            )  # fmt: skip
            if report.leakage:
                leakage_figures(report.leakage, run.out / "figures")
            if report.anchors:
                anchor_figure(
                    dataset, run.out / HEATMAPS_DIR, run.out / "figures" / "anchors.png",
                    title=f"{run.name}: anchors on {dataset.name} (star: eq. 7's anchor)", max_images=qualitative,
                )  # fmt: skip
        reports.append(report)
    return reports


def _without_device(config: Mapping[str, Any]) -> dict[str, Any]:
    """The configuration minus the device (top level and the pipeline's), which may change on resume."""
    kept = {k: v for k, v in config.items() if k != "device"}
    if isinstance(kept.get("pipeline"), Mapping):
        kept["pipeline"] = {k: v for k, v in kept["pipeline"].items() if k != "device"}
    return kept


def _drop_failed(path: Path) -> None:
    """Rewrite ``pairs.jsonl`` without its ``failed`` rows (atomically), so they are scored again."""
    if not path.exists():
        return
    with PairLog(path) as log:
        rows = log.rows
    kept = [r for r in rows if r.get("status") != "failed"]
    if len(kept) != len(rows):
        temporary = path.with_suffix(".jsonl.tmp")
        temporary.write_text("".join(json.dumps(_jsonable(r), allow_nan=False) + "\n" for r in kept))
        temporary.replace(path)


def _load_sample(
    dataset: BenchmarkDataset, index: int, protocol_resolution: int | None
) -> Sample | InvalidSample:
    """The decoded sample at the protocol resolution, or the reason it cannot be decoded."""
    try:
        return at_protocol_resolution(dataset[index], protocol_resolution)
    except InvalidSample as error:
        return error


def _run_sample(
    method: GroundingMethod,
    sample: Sample | InvalidSample,
    key: SampleKey,
    pending: list[int],
    log: PairLog,
    state: RunState,
    *,
    protocol: str,
    ap_channels: APChannels,
    heatmap_path: Path | None,
) -> None:
    """Call the method once for all the sample's concepts, score the pending pairs (and the chance
    maps on the same pairs; for MCC, the target's mass on each concept)."""
    if isinstance(sample, InvalidSample):
        error = sample
        for target in pending:
            log.append(
                {"sample_id": key.sample_id, "target": target, "status": "invalid", "error": str(error)}
            )
        state.invalid += len(pending)
        return
    reasons = {t: invalid_reason(sample, t, protocol) for t in pending}
    for target, reason in reasons.items():
        if reason is not None:
            log.append({**row_base(sample, target), "status": "invalid", "error": reason})
            state.invalid += 1
    pending = [t for t in pending if reasons[t] is None]
    if not pending:
        return

    started = time.perf_counter()
    try:
        output = method(sample.image, list(sample.concepts))
        seconds = time.perf_counter() - started
        heatmaps, anchors, timings = as_heatmaps(output, len(sample.concepts))
        anchor_sets = _anchor_sets(output, anchors)
    except Exception as error:  # one bad image must not stop the run
        message = f"{type(error).__name__}: {error}"
        for target in pending:
            log.append({**row_base(sample, target), "status": "failed", "error": message})
        state.failed += len(pending)
        state.errors.append(message)
        return
    state.seconds += seconds
    affinity = _diagnostics(output, sample)
    if heatmap_path is not None:
        heatmap_path.parent.mkdir(parents=True, exist_ok=True)
        saved = {"heatmaps": heatmaps.astype(np.float32), "concepts": np.array(sample.concepts, dtype=str)}
        if anchor_sets is not None:
            saved["anchors"] = padded_anchors(anchor_sets)
        np.savez_compressed(heatmap_path, **saved)
    for target in pending:
        row = {**row_base(sample, target), "method_seconds": seconds / len(sample.concepts)}
        if timings:
            row["timings"] = timings
        if not np.isfinite(heatmaps[target]).all():
            log.append({**row, "status": "failed", "error": "the heatmap contains NaN or infinite values"})
            state.failed += 1
            continue
        try:
            row.update(score_pair(protocol, heatmaps[target], sample, target, ap_channels=ap_channels))
        except ValueError as error:
            log.append({**row, "status": "failed", "error": f"ValueError: {error}"})
            state.failed += 1
            continue
        if anchors is not None:
            row["anchor_in_mask"] = anchor_in_mask(anchors[target], heatmaps.shape[1:], sample.masks[target])
        if anchor_sets is not None:
            row.update(anchor_shares(anchor_sets[target], heatmaps.shape[1:], sample.masks, target))
        if affinity is not None:
            row["affinity"] = affinity
        if protocol == "fg":
            row["leakage"] = leakage_shares(heatmaps[target], sample.masks, target)
        row["chance"] = chance_scores(protocol, sample, target, ap_channels=ap_channels)
        log.append({**row, "status": "ok"})
        state.scored += 1


def read_pairs(out_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a run's ``pairs.jsonl`` (NaN restored where JSON holds null)."""
    path = Path(out_dir) / PAIRS_FILE
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            rows.append(json.loads(line))
    return rows


def iter_scored(rows: Iterable[dict[str, Any]]) -> Iterable[dict[str, Any]]:
    """Only the rows with status ``ok``."""
    return (r for r in rows if r.get("status") == "ok")
