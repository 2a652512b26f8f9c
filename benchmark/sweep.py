"""Sweeps of AnchorDiff's graph layers and propagation steps (the paper's Figs. 8-9, Tables 7-9),
of the baselines' blocks (Seg4Diff's expert block, ConceptAttention's and cross-attention's
averaged blocks) and of multi-anchor AnchorDiff's anchor threshold.

One attention recording per image (``AnchorDiff.record(..., graph_layers="all")``; no A_II for
a baseline) serves every setting: each single layer, each layer pair, each propagation step
count and each anchor threshold is built from the cached recording with
``AnchorDiff.heatmaps_from_record``. Results are appended to
``sweep.jsonl`` one line per (setting, image, concept) as they are computed, so an
interrupted sweep resumes where it stopped. ``run_sweep`` then writes ``sweep.json``,
``sweep.md`` and the figures ``layer_sensitivity.png`` and ``propagation_steps.png``.

Memory: recording every block keeps one (N, N) A_II and one (N, D) O_II per block, about
90-105 MB per block at 4096 tokens (2.2 GB for SD3-medium, 4.1 GB for SD3.5-large), on
the pipeline's device, for one image at a time.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from benchmark import published
from benchmark.datasets import BenchmarkDataset, InvalidSample
from benchmark.evaluate import (
    PairLog,
    ProgressBar,
    as_heatmaps,
    check_run_file,
    invalid_reason,
    limited_selection,
    row_base,
    score_pair,
)
from benchmark.report import TABLE4_COLUMNS, fg_means, percent_cell

DEFAULT_STEPS = (5, 10, 20, 40, 80, 120, 160, 240, 320, 480, 640)
"""Propagation step counts swept by default (the paper's default is 160)."""

DEFAULT_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
"""``anchordiff_multi``'s anchor thresholds swept by default (its default is 0.5)."""

GRAPH_METHODS = ("anchordiff", "anchordiff_multi", "no_gate", "no_wcos")
BLOCK_METHODS = ("seg4diff", "concept_attention", "cross_attention")
SWEEP_METHODS = GRAPH_METHODS + BLOCK_METHODS
"""Graph methods sweep graph layers, pairs and steps (and anchordiff_multi its threshold); the
baselines sweep the blocks they average (single blocks, and pairs when asked)."""

SWEEP_FILE = "sweep.jsonl"

SettingKind = Literal["layer", "pair", "steps", "threshold"]


@dataclass(frozen=True)
class SweepSetting:
    """One configuration of the sweep.

    kind: ``layer`` (one graph layer, or one block of a baseline), ``pair`` (two of them),
    ``steps`` (the preset's graph layers with ``steps`` propagation steps) or ``threshold``
    (``anchordiff_multi`` with ``anchor_threshold`` = ``threshold``, the preset's layers, default
    steps). layers: layer indices, or None for the method's default layers.
    """

    kind: SettingKind
    layers: tuple[int, ...] | None
    steps: int
    threshold: float | None = None

    @property
    def key(self) -> str:
        if self.kind == "steps":
            return f"steps={self.steps}"
        if self.kind == "threshold":
            return f"anchor_threshold={self.threshold:g}"
        return "layers=" + "+".join(str(layer) for layer in self.layers or ())

    def as_dict(self) -> dict[str, Any]:
        data = {
            "kind": self.kind,
            "layers": None if self.layers is None else list(self.layers),
            "steps": self.steps,
        }
        if self.threshold is not None:
            data["threshold"] = self.threshold
        return data


def plan_settings(
    layers: Sequence[int],
    *,
    pairs: Sequence[tuple[int, int]] = (),
    steps: Sequence[int] = DEFAULT_STEPS,
    default_steps: int = 160,
    thresholds: Sequence[float] = (),
) -> list[SweepSetting]:
    """Single layers, then pairs (at ``default_steps``), then step counts (default layers), then
    anchor thresholds (default layers and steps)."""
    settings = [SweepSetting("layer", (int(layer),), default_steps) for layer in layers]
    seen = set()
    for a, b in pairs:
        pair = tuple(sorted((int(a), int(b))))
        if pair[0] == pair[1]:
            raise ValueError(f"a layer pair needs two different layers, got {pair}")
        if pair not in seen:
            seen.add(pair)
            settings.append(SweepSetting("pair", pair, default_steps))
    for count in sorted(set(int(s) for s in steps)):
        if count < 1:
            raise ValueError(f"propagation steps must be >= 1, got {count}")
        settings.append(SweepSetting("steps", None, count))
    for threshold in sorted(set(float(t) for t in thresholds)):
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"anchor thresholds must be in (0, 1], got {threshold}")
        settings.append(SweepSetting("threshold", None, default_steps, threshold))
    return settings


def default_pair_layers(preset: str | None, blocks: Sequence[int]) -> tuple[int, ...]:
    """The layers whose pairs are swept by default: the paper's top-8 for a real SD3 / SD3.5
    backbone (24 / 38 blocks), else every recorded layer when there are at most 8."""
    if preset in published.TOP8_LAYERS and len(blocks) == published.BLOCKS[preset]:
        return published.TOP8_LAYERS[preset]
    return tuple(blocks) if len(blocks) <= 8 else ()


@dataclass
class SweepReport:
    """Per-setting means (fractions) and counts of a sweep."""

    configuration: dict[str, Any]
    dataset: dict[str, Any]
    settings: list[dict[str, Any]]
    results: dict[str, dict[str, float]]
    counts: dict[str, dict[str, int]]
    default_layers: list[int] | None = None
    package_version: str = ""
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def singles(self) -> dict[int, dict[str, float]]:
        return {s["layers"][0]: self.results[_key(s)] for s in self.settings if s["kind"] == "layer"}

    def pairs(self) -> dict[tuple[int, int], dict[str, float]]:
        return {tuple(s["layers"]): self.results[_key(s)] for s in self.settings if s["kind"] == "pair"}

    def steps(self) -> dict[int, dict[str, float]]:
        return {s["steps"]: self.results[_key(s)] for s in self.settings if s["kind"] == "steps"}

    def thresholds(self) -> dict[float, dict[str, float]]:
        return {s["threshold"]: self.results[_key(s)] for s in self.settings if s["kind"] == "threshold"}

    def full_method(self, default_steps: int = 160) -> dict[str, float] | None:
        return self.results.get(f"steps={default_steps}")

    def write(self, out_dir: str | os.PathLike) -> tuple[Path, Path]:
        from benchmark.report import finite

        out = Path(out_dir)
        data = finite(self.__dict__)
        (out / "sweep.json").write_text(json.dumps(data, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        (out / "sweep.md").write_text(self.to_markdown(), encoding="utf-8")
        return out / "sweep.json", out / "sweep.md"

    def to_markdown(self) -> str:
        preset = self.configuration.get("preset")
        blocks = self.configuration.get("blocks")
        method = self.configuration.get("method", "anchordiff")
        graph = method in GRAPH_METHODS
        # The paper's per-layer tables are AnchorDiff's (graph layers): no reference for another method.
        real = preset in published.BLOCKS and blocks == published.BLOCKS[preset] and method == "anchordiff"
        label = published.backbone_label(preset)
        header = " | ".join(f"{name}" for name in ("mIoU_fg ↑", "mAP_fg ↑", "NAR ↓", "Acc_fg ↑"))
        lines = [
            f"# {method} sweep on {self.dataset.get('name', 'dataset')} ({label}, {self.configuration.get('model')})",
            "",
        ]
        lines += [
            "Percent; each setting is scored on the same pairs from one attention recording per image. "
            "NAR is the mean over non-degenerate pairs (– when every pair is degenerate).",
            "",
        ]
        singles = self.singles()
        if singles:
            reference = published.SINGLE_LAYERS.get(preset or "") if real else None
            heading = (
                "Single graph layers (Tables 8-9 layout)" if graph else "Single blocks (the blocks averaged)"
            )
            lines += [f"## {heading}", ""]
            extra = f" | published {label} (paper) mIoU_fg / mAP_fg / NAR / Acc_fg" if reference else ""
            lines += [
                f"| layer | {header} | pairs | degenerate{extra} |",
                "|---|---:|---:|---:|---:|---:|---:|" + ("---|" if reference else ""),
            ]
            for layer, means in sorted(singles.items()):
                cells = " | ".join(percent_cell(means.get(m)) for m in TABLE4_COLUMNS)
                ref = ""
                if reference:
                    values = reference.get(layer)
                    ref = " | " + (" / ".join(f"{v:.2f}" for v in values) if values else "–")
                c = self.counts[f"layers={layer}"]
                lines.append(f"| L{layer} | {cells} | {c['scored']} | {c['degenerate']}{ref} |")
            lines.append("")
        pairs = self.pairs()
        if pairs:
            reference = published.TABLE7_PAIRS.get(preset or "") if real else None
            lines += ["## Layer pairs, sorted by mIoU_fg (Table 7 layout)", ""]
            extra = f" | published {label} (paper Table 7)" if reference else ""
            lines += [
                f"| layers | {header} | pairs | degenerate{extra} |",
                "|---|---:|---:|---:|---:|---:|---:|" + ("---|" if reference else ""),
            ]
            ordered = sorted(pairs.items(), key=lambda item: -_sortable(item[1].get("miou_fg")))
            for pair, means in ordered:
                cells = " | ".join(percent_cell(means.get(m)) for m in TABLE4_COLUMNS)
                key = "layers=" + "+".join(map(str, pair))
                ref = ""
                if reference:
                    values = reference.get(pair)
                    ref = " | " + (" / ".join(f"{v:.2f}" for v in values) if values else "–")
                c = self.counts[key]
                lines.append(f"| L{pair[0]}+L{pair[1]} | {cells} | {c['scored']} | {c['degenerate']}{ref} |")
            lines.append("")
        steps = self.steps()
        if steps:
            layers = (
                "+".join(f"L{x}" for x in self.default_layers) if self.default_layers else "preset layers"
            )
            lines += [f"## Propagation steps ({layers}; Fig. 8)", "", f"| steps | {header} | pairs | degenerate |",
                      "|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
            for count, means in sorted(steps.items()):
                cells = " | ".join(percent_cell(means.get(m)) for m in TABLE4_COLUMNS)
                c = self.counts[f"steps={count}"]
                lines.append(f"| {count} | {cells} | {c['scored']} | {c['degenerate']} |")
            lines.append("")
        thresholds = self.thresholds()
        if thresholds:
            lines += ["## Anchor threshold (anchordiff_multi; preset layers, default steps)", "",
                      f"| anchor_threshold | {header} | IoU_target ↑ | pairs | degenerate |",
                      "|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
            for threshold, means in sorted(thresholds.items()):
                cells = " | ".join(percent_cell(means.get(m)) for m in (*TABLE4_COLUMNS, "iou_target"))
                c = self.counts[f"anchor_threshold={threshold:g}"]
                lines.append(f"| {threshold:g} | {cells} | {c['scored']} | {c['degenerate']} |")
            lines.append("")
        failed = sum(c.get("failed", 0) for c in self.counts.values())
        if failed:
            lines += [f"> {failed} (setting, pair) results failed; see sweep.jsonl.", ""]
        lines += ["## Configuration", "", "| setting | value |", "|---|---|"]
        for key, value in self.configuration.items():
            lines.append(f"| {key} | {json.dumps(value) if isinstance(value, list | dict) else value} |")
        lines.append(f"| package version | {self.package_version} |")
        lines += ["", "_Published columns are copied from the AnchorDiff paper for reference only._", ""]
        return "\n".join(lines)


def _setting(data: Mapping[str, Any]) -> SweepSetting:
    layers = None if data["layers"] is None else tuple(data["layers"])
    return SweepSetting(data["kind"], layers, data["steps"], data.get("threshold"))


def _key(setting: Mapping[str, Any]) -> str:
    return _setting(setting).key


def _sortable(value: float | None) -> float:
    return -math.inf if value is None or math.isnan(value) else value


def _pipeline_default_layers(
    pipeline: Any, preset: str | None, blocks: Sequence[int], method: str = "anchordiff"
) -> list[int] | None:
    """The method's default layers (for labels), when they can be known: the preset's graph layers,
    Seg4Diff's expert blocks, None for the baselines that average every block."""
    names = {"seg4diff": ("seg4diff_layers",)}.get(method, ("graph_layers", "default_layers"))
    if method in BLOCK_METHODS and method != "seg4diff":
        return None
    for source in (
        getattr(pipeline, "config", None) or {},
        pipeline.__dict__ if hasattr(pipeline, "__dict__") else {},
    ):
        for name in names:
            value = source.get(name) if isinstance(source, Mapping) else None
            if isinstance(value, list | tuple) and value:
                return [int(v) for v in value]
    if (
        method in GRAPH_METHODS
        and preset in published.DEFAULT_LAYERS
        and len(blocks) == published.BLOCKS[preset]
    ):
        return list(published.DEFAULT_LAYERS[preset])
    return None


def run_sweep(
    pipeline: Any,
    dataset: BenchmarkDataset,
    *,
    out_dir: str | os.PathLike,
    layers: Sequence[int] | Literal["all"] = "all",
    pair_layers: Sequence[int] | None = None,
    pairs: Sequence[tuple[int, int]] | None = None,
    steps: Sequence[int] = DEFAULT_STEPS,
    default_steps: int = 160,
    method: str = "anchordiff",
    thresholds: Sequence[float] | None = None,
    mode: str = "invert",
    gate_quantile: float = 0.98,
    seed: int = 0,
    limit: int | None = None,
    progress: bool = True,
    figures: bool = True,
) -> SweepReport:
    """Sweep the layers (and steps, thresholds) of an ``AnchorDiff`` method over a dataset.

    pipeline: an ``anchordiff.AnchorDiff`` (``record`` + ``heatmaps_from_record``).
    layers: single layers to sweep, or ``"all"`` (every block of the backbone): graph layers
        for the graph methods, the blocks averaged for the baselines.
    pairs: explicit layer pairs; else every pair of ``pair_layers``; else, for the graph
        methods, the default (``default_pair_layers``: the paper's top-8 layers for real SD3 /
        SD3.5); a baseline sweeps pairs only when given ``pairs`` or ``pair_layers``.
    steps: propagation step counts swept with the preset's graph layers (graph methods only).
    method: one of ``SWEEP_METHODS``.
    thresholds: ``anchordiff_multi``'s anchor thresholds (None: ``DEFAULT_THRESHOLDS`` for it).
    Only the fg protocol (MCC) is swept, as in the paper.
    """
    from manifests.version import code_version

    if dataset.protocol != "fg":
        raise ValueError("sweeps score the MCC metrics; give an MCC dataset")
    if method not in SWEEP_METHODS:
        raise ValueError(f"cannot sweep method {method!r}: choose one of {', '.join(SWEEP_METHODS)}")
    graph = method in GRAPH_METHODS
    if thresholds is not None and method != "anchordiff_multi":
        raise ValueError("anchor thresholds are swept for method anchordiff_multi only")
    thresholds = (
        DEFAULT_THRESHOLDS if thresholds is None and method == "anchordiff_multi" else thresholds or ()
    )
    steps = steps if graph else ()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pipeline_config = dict(getattr(pipeline, "config", {}) or {})
    preset = pipeline_config.get("preset")
    spec = {
        "method": method,
        "mode": mode,
        "gate_quantile": gate_quantile,
        "thresholds": sorted(float(t) for t in thresholds),
        "seed": seed,
        "layers": layers if layers == "all" else [int(x) for x in layers],
        "pair_layers": None if pair_layers is None else [int(x) for x in pair_layers],
        "pairs": None if pairs is None else [sorted(map(int, p)) for p in pairs],
        "steps": sorted(int(s) for s in steps),
        "default_steps": default_steps,
        "model": pipeline_config.get("model"),
        "revision": pipeline_config.get("revision"),
        "preset": preset,
        "dtype": pipeline_config.get("dtype"),
    }
    dataset_info = dataset.describe()
    check_run_file(
        out,
        {"sweep": spec, "dataset": {k: v for k, v in dataset_info.items() if k not in ("samples", "pairs")}},
    )
    resolved_path = out / "settings.json"
    settings: list[SweepSetting] | None = None
    blocks: list[int] = []
    if resolved_path.exists():
        saved = json.loads(resolved_path.read_text())
        blocks = saved["blocks"]
        settings = [_setting(s) for s in saved["settings"]]

    def resolve(recorded_blocks: list[int]) -> list[SweepSetting]:
        singles = recorded_blocks if layers == "all" else [int(x) for x in layers]
        unknown = sorted(set(singles) - set(recorded_blocks))
        if unknown:
            raise ValueError(f"layers {unknown} are not blocks of this backbone (it has {recorded_blocks})")
        if pairs is not None:
            chosen = [tuple(p) for p in pairs]
        else:
            pool = pair_layers if pair_layers is not None else ()
            if pair_layers is None and graph:
                pool = default_pair_layers(preset, recorded_blocks)
            chosen = list(itertools.combinations(sorted(int(x) for x in pool), 2))
        plan = plan_settings(
            singles, pairs=chosen, steps=steps, default_steps=default_steps, thresholds=thresholds
        )
        resolved_path.write_text(
            json.dumps({"blocks": recorded_blocks, "settings": [s.as_dict() for s in plan]}, indent=2)
        )
        return plan

    keys = dataset.sample_keys()
    selected = limited_selection(keys, limit)
    invalid: list[tuple[Any, str]] = []  # rows that failed to decode before the settings were known
    with PairLog(out / SWEEP_FILE) as log:
        done = {(r["setting"], r["sample_id"], int(r["target"])) for r in log.rows}
        bar = ProgressBar(len(selected), 0, f"sweep {method} on {dataset.name}", progress, unit="images")
        try:
            for index, key in selected:
                if settings is not None and all(
                    (s.key, key.sample_id, t) in done for s in settings for t in range(key.num_concepts)
                ):
                    bar.advance(1, 0)
                    continue
                try:
                    sample = dataset[index]
                except InvalidSample as error:
                    invalid.append((key, str(error)))
                    if settings is not None:
                        _log_invalid(invalid, settings, log, done)
                    bar.advance(1, 0)
                    continue
                try:
                    record = pipeline.record(
                        sample.image, list(sample.concepts), mode=mode, graph_layers="all" if graph else (),
                        seed=seed,
                    )  # fmt: skip
                    record_error = None
                except Exception as error:  # one image must not stop the sweep
                    record, record_error = None, f"{type(error).__name__}: {error}"
                if settings is None:
                    if record is None:
                        raise RuntimeError(
                            f"the first recording failed ({record_error}); cannot plan the sweep"
                        )
                    blocks = (
                        sorted(int(x) for x in record.a_ii) if graph else list(range(record.a_ci.shape[0]))
                    )
                    settings = resolve(blocks)
                    _log_invalid(invalid, settings, log, done)
                _sweep_sample(pipeline, record, record_error, sample, settings, log, done,
                              method=method, gate_quantile=gate_quantile)  # fmt: skip
                bar.advance(1, 0)
        finally:
            bar.close()
        rows = list(log.rows)

    settings = settings or []
    wanted = {key.sample_id for _, key in selected}
    by_setting: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if row["sample_id"] in wanted:
            by_setting[row["setting"]].append(row)
    from benchmark.report import status_counts

    report = SweepReport(
        configuration={**spec, "blocks": len(blocks), "block_indices": blocks},
        dataset=dataset_info,
        settings=[s.as_dict() for s in settings],
        results={
            s.key: fg_means([r for r in by_setting[s.key] if r.get("status") == "ok"]) for s in settings
        },
        counts={s.key: status_counts(by_setting[s.key]) for s in settings},
        default_layers=_pipeline_default_layers(pipeline, preset, blocks, method),
        package_version=code_version(),
    )
    report.write(out)
    if figures:
        _sweep_figures(report, out, default_steps=default_steps)
    return report


def _log_invalid(
    invalid: list[tuple[Any, str]],
    settings: Sequence[SweepSetting],
    log: PairLog,
    done: set[tuple[str, str, int]],
) -> None:
    """Record undecodable samples as ``invalid`` for every setting (then forget them)."""
    for key, error in invalid:
        for setting in settings:
            for target in range(key.num_concepts):
                if (setting.key, key.sample_id, target) not in done:
                    log.append({"setting": setting.key, **setting.as_dict(), "sample_id": key.sample_id,
                                "target": target, "status": "invalid", "error": error})  # fmt: skip
                    done.add((setting.key, key.sample_id, target))
    invalid.clear()


def _sweep_sample(
    pipeline: Any,
    record: Any,
    record_error: str | None,
    sample: Any,
    settings: Sequence[SweepSetting],
    log: PairLog,
    done: set[tuple[str, str, int]],
    *,
    method: str,
    gate_quantile: float,
) -> None:
    """Score every pending (setting, concept) of one sample from its one recording."""
    targets = range(len(sample.concepts))
    for setting in settings:
        pending = [t for t in targets if (setting.key, sample.sample_id, t) not in done]
        if not pending:
            continue
        base = {"setting": setting.key, **setting.as_dict()}
        error = record_error
        heatmaps = None
        if error is None:
            try:
                scorer = pipeline
                if setting.threshold is not None:
                    scorer = pipeline.with_options(anchor_threshold=setting.threshold)
                out = scorer.heatmaps_from_record(
                    record,
                    method=method,
                    layers=setting.layers,
                    steps=setting.steps,
                    gate_quantile=gate_quantile,
                )
                heatmaps, _, _ = as_heatmaps(out.token_heatmaps, len(sample.concepts))
            except Exception as failure:
                error = f"{type(failure).__name__}: {failure}"
        for target in pending:
            row = {**base, **row_base(sample, target)}
            reason = invalid_reason(sample, target, "fg")
            if reason is not None:
                log.append({**row, "status": "invalid", "error": reason})
            elif error is not None:
                log.append({**row, "status": "failed", "error": error})
            else:
                try:
                    log.append({**row, **score_pair("fg", heatmaps[target], sample, target), "status": "ok"})
                except ValueError as failure:
                    log.append({**row, "status": "failed", "error": f"ValueError: {failure}"})
            done.add((setting.key, sample.sample_id, target))


def _sweep_figures(report: SweepReport, out: Path, *, default_steps: int) -> None:
    from benchmark.figures import layer_sensitivity, steps_curve

    preset = report.configuration.get("preset")
    label = published.backbone_label(preset)
    model = report.configuration.get("model")
    singles = report.singles()
    if singles:
        real = preset in published.BLOCKS and report.configuration.get("blocks") == published.BLOCKS[preset]
        real = real and report.configuration.get("method", "anchordiff") == "anchordiff"
        selected = report.default_layers or []
        full_label = ("+".join(f"L{x}" for x in selected) if selected else "preset layers") + " (this run)"
        layer_sensitivity(
            singles,
            out / "figures" / "layer_sensitivity.png",
            full_method=report.full_method(default_steps),
            full_label=full_label,
            selected=selected,
            published=published.SINGLE_LAYERS.get(preset or "") if real else None,
            published_label=f"published, paper Table {8 if preset == 'sd3' else 9}",
            title=f"Layer sensitivity, {label} ({model}), {report.dataset.get('name')}",
        )
    steps = report.steps()
    if steps:
        steps_curve(
            steps,
            out / "figures" / "propagation_steps.png",
            default_steps=default_steps,
            title=f"Propagation steps, {label} ({model}), {report.dataset.get('name')}",
        )
