"""Reports of a scoring run: means overall and by subset, counts, configuration, decisions.

``Report.from_rows(rows, ...)`` aggregates the per-pair rows of ``pairs.jsonl``;
``report.write(out_dir)`` writes ``report.json`` (fractions, NaN as null) and ``report.md``
(percentages, laid out like the paper's Table 4 for MCC and Table 3 for the standard
benchmarks, with the paper's published rows beside this run's, labelled as published).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from benchmark import published
from benchmark.metrics import FG_METRICS, BinaryAccumulator, BinaryImageScores
from manifests.provenance import is_tiny_name

SUBSET_TAGS = ("num_concepts", "source")
"""The sample tags MCC reports break down by (2 / 3 concepts, generated / web)."""

METRIC_LABELS = {
    "miou_fg": "mIoU_fg ↑",
    "iou_target": "IoU_target ↑",
    "acc_fg": "Acc_fg ↑",
    "map_fg": "mAP_fg ↑",
    "nar": "NAR ↓",
    "acc": "Acc ↑",
    "miou": "mIoU ↑",
    "map": "mAP ↑",
}
TABLE4_COLUMNS = ("miou_fg", "map_fg", "nar", "acc_fg")
"""The paper's Table 4 column order."""

CHANCE_LABELS = {"constant": "chance: constant map", "random": "chance: uniform random map"}
"""Report labels of the chance baselines scored on this run's pairs (``evaluate.CHANCE_MAPS``)."""

BOOTSTRAP = {"resamples": 1000, "seed": 0, "level": 0.95, "unit": "image"}
"""Percentile bootstrap of the headline metrics: images drawn with replacement (all the pairs
of a drawn image together), 1000 resamples, fixed seed."""

COMPAT_TOLERANCE = 0.015
"""Percent: a published ImageNet-Seg row whose mIoU equals Acc / (2 - Acc) to within this
(two-decimal rounding) is marked as ConceptAttention's compatibility figure."""

METRIC_DECISIONS = {
    "resize": "bilinear to the mask size, half-pixel centres (torch align_corners=False), no antialias",
    "normalisation": "min-max over the whole image after resizing; a constant heatmap becomes all zeros",
    "threshold": "predicted mask = heatmap > mean(heatmap) over the whole image (every method alike)",
    "fg_region": "M_other = union of the other concepts' masks minus M_c; R = M_c | M_other",
    "nar_degenerate": "sum of the heatmap over R is 0 -> NAR NaN, excluded from the NAR mean, counted",
    "miou_fg": "mean of the target and non-target IoU over R; a class with an empty union is left out",
    "average_precision": "step-wise (sklearn average_precision_score), tied scores form one threshold",
    "failed_pairs": "excluded from every mean and counted (a method that fails is shown by the counts)",
    "binary_protocol": "Acc and IoU from pixel counts accumulated over the dataset; mAP = mean per-image AP",
}


def method_decisions(configuration: Mapping[str, Any], method: str) -> dict[str, str]:
    """The method.md **[decision]** items with the values this run used.

    Read from the AnchorDiff pipeline's configuration (``configuration["pipeline"]``, i.e.
    ``AnchorDiff.config``); an item the pipeline does not report is marked as such.
    """
    if not ("preset" in configuration and "mode" in configuration):
        return {"anchordiff_decisions": f"not applicable: {method!r} is not an AnchorDiff method"}
    pipeline = configuration.get("pipeline") or {}

    def reported(key: str, describe: Mapping[Any, str] | None = None) -> str:
        if key not in pipeline:
            return "not reported by the pipeline"
        value = pipeline[key]
        return describe.get(value, str(value)) if describe else str(value)

    mode = configuration.get("mode")
    decisions = {
        "existing_image_extraction (mode)": {
            "invert": "invert (default, paper: Euler flow-matching inversion to the midpoint timestep)",
            "noise": "noise (fast: scale_noise with seeded noise, one pass at the midpoint)",
        }.get(mode, str(mode)),
        "prompt for existing images": str(configuration.get("prompt_template")),
        "O_II heads": reported(
            "o_ii_heads", {"concat": "concat (default: heads concatenated, N x heads*d_h)"}
        ),
        "concept stream": reported(
            "concept_pass",
            {
                "joint": "joint (default: one pass with the image stream)",
                "separate": "separate (two passes, as the paper)",
            },
        ),
        "multi-token concepts": reported("concept_tokens"),
        "negative cosines": reported(
            "clamp_negative", {True: "clamped to 0 before row normalisation (default)", False: "kept"}
        ),
        "zero-sum rows": reported("empty_row", {"self_loop": "self_loop (default)"}),
        "graph layers": str(configuration.get("layers")),
    }
    if configuration.get("method") == "anchordiff_multi":
        decisions["multi-anchor (beyond the paper)"] = (
            f"at most {reported('max_anchors')} anchors per concept, candidates >= {reported('anchor_threshold')} "
            f"x max A_CI, suppression radius {reported('anchor_radius')} x grid side, region owned by the concept, "
            "per-anchor peak-scaled scores combined by max, then min-max"
        )
    return decisions


def _mean(values: Iterable[float]) -> float:
    finite = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(finite)) if finite else math.nan


def bootstrap_interval(
    per_image: np.ndarray,
    statistic: Callable[[np.ndarray], np.ndarray],
    *,
    resamples: int = BOOTSTRAP["resamples"],
    seed: int = BOOTSTRAP["seed"],
    level: float = BOOTSTRAP["level"],
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap over images.

    per_image: (n, F) per-image totals (sums and counts); each resample draws n images with
    replacement and adds their rows, giving (B, F) totals; ``statistic`` maps those to
    (B, M) metric values. Returns the (M,) lower and upper bounds of the ``level`` interval
    (NaN where the statistic is undefined in every resample).
    """
    n = per_image.shape[0]
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=resamples)  # (B, n) draws per image
    with np.errstate(divide="ignore", invalid="ignore"):
        values = statistic(counts @ per_image)
    tail = 50.0 * (1.0 - level)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns stay NaN
        low, high = np.nanpercentile(values, [tail, 100.0 - tail], axis=0)
    return low, high


def fg_intervals(ok_rows: Sequence[Mapping[str, Any]]) -> dict[str, list[float]]:
    """Bootstrap interval of every fg metric's pair mean (NaN pairs left out, as in the mean)."""
    by_image: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for row in ok_rows:
        by_image[str(row["sample_id"])].append(row)
    if not by_image:
        return {}
    totals = np.zeros((len(by_image), 2 * len(FG_METRICS)))
    for i, image_rows in enumerate(by_image.values()):
        for j, metric in enumerate(FG_METRICS):
            values = [r["scores"].get(metric) for r in image_rows]
            finite_values = [float(v) for v in values if v is not None and math.isfinite(float(v))]
            totals[i, j] = sum(finite_values)
            totals[i, len(FG_METRICS) + j] = len(finite_values)
    m = len(FG_METRICS)
    low, high = bootstrap_interval(totals, lambda t: t[:, :m] / t[:, m:])
    return {metric: [float(low[j]), float(high[j])] for j, metric in enumerate(FG_METRICS)}


def binary_intervals(
    ok_rows: Sequence[Mapping[str, Any]], *, conceptattention_compat: bool
) -> dict[str, list[float]]:
    """Bootstrap interval of Acc, mIoU and mAP of the standard protocol (pixel counts and AP
    of each drawn image added, exactly as ``BinaryAccumulator`` adds them)."""
    if not ok_rows:
        return {}
    totals = []
    for row in ok_rows:
        b = BinaryImageScores.from_dict(row["binary"])
        totals.append([b.correct, b.labeled, *b.inter, *b.union, b.reported_ap(conceptattention_compat), 1.0])

    def statistic(t: np.ndarray) -> np.ndarray:
        acc = t[:, 0] / t[:, 1]
        if conceptattention_compat:
            miou = acc / (2.0 - acc)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                miou = np.nanmean(t[:, 2:4] / t[:, 4:6], axis=1)
        return np.stack([acc, miou, t[:, 6] / t[:, 7]], axis=1)

    low, high = bootstrap_interval(np.asarray(totals, dtype=np.float64), statistic)
    return {metric: [float(low[j]), float(high[j])] for j, metric in enumerate(("acc", "miou", "map"))}


def binary_overall(
    score_dicts: Iterable[Mapping[str, Any]], *, conceptattention_compat: bool
) -> dict[str, float]:
    """Acc, mIoU, mAP and the per-class IoUs of the standard protocol over images' score dicts."""
    accumulator = BinaryAccumulator(conceptattention_compat=conceptattention_compat)
    for scores in score_dicts:
        accumulator.add_scores(BinaryImageScores.from_dict(scores))
    result = accumulator.result()
    return {
        "acc": result.acc,
        "miou": result.miou,
        "map": result.map,
        "iou_foreground": result.iou_foreground,
        "iou_background": result.iou_background,
    }


def chance_results(
    ok_rows: Sequence[Mapping[str, Any]], *, protocol: str, conceptattention_compat: bool
) -> dict[str, dict[str, float]]:
    """The chance maps' figures over exactly the rows the method scored (those that carry them)."""
    rows = [r for r in ok_rows if isinstance(r.get("chance"), Mapping)]
    results: dict[str, dict[str, float]] = {}
    for kind in CHANCE_LABELS:
        scores = [r["chance"][kind] for r in rows if kind in r["chance"]]
        if not scores:
            continue
        if protocol == "fg":
            results[kind] = fg_means([{"scores": s} for s in scores])
        else:
            results[kind] = binary_overall(scores, conceptattention_compat=conceptattention_compat)
        results[kind]["pairs"] = len(scores)
    return results


def leakage_by_group(ok_rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per group: its domain, pairs, mean NAR, and the leakage matrix ``matrix[target][concept]`` = mean
    share of the target's heatmap mass on that concept's mask (``metrics.leakage_shares``;
    the diagonal is the mass on the target itself). Degenerate pairs are left out."""
    shares: dict[str, dict[str, dict[str, list[float]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list))
    )
    nar: dict[str, list[float]] = defaultdict(list)
    domains: dict[str, str] = {}
    for row in ok_rows:
        group = (row.get("tags") or {}).get("group")
        if group is not None and (row.get("tags") or {}).get("domain"):
            domains[group] = str(row["tags"]["domain"])
        values = row.get("leakage")
        if group is None or values is None or any(v is None or math.isnan(v) for v in values):
            continue
        target = row["concept"]
        for concept, share in zip(row["concepts"], values, strict=True):
            shares[group][target][concept].append(float(share))
        nar[group].append(float(row["scores"]["nar"]))
    return {
        group: {
            "domain": domains.get(group, "unknown"),
            "pairs": len(nar[group]),
            "nar": float(np.mean(nar[group])),
            "matrix": {
                target: {concept: float(np.mean(v)) for concept, v in row.items()}
                for target, row in sorted(matrix.items())
            },
        }
        for group, matrix in sorted(shares.items())
    }


def build_warnings(dataset: Mapping[str, Any], configuration: Mapping[str, Any]) -> list[str]:
    """Why this run's figures are not benchmark results, if they are not (empty list: they are)."""
    found = []
    review = dataset.get("review") or {}
    total = sum(int(v) for v in review.values())
    machine = int(review.get("machine", 0))
    if machine:
        found.append(
            f"{machine} of {total} masks ({100 * machine / total:.1f}%) are machine masks (SAM2 output no "
            "person has reviewed): this dataset is not the reviewed benchmark"
        )
    if any(is_tiny_name(g) for g in dataset.get("generators") or []):
        found.append(
            "the images come from the random `tiny` generator (a smoke build): the figures test the code "
            "and measure nothing"
        )
    model = configuration.get("model")
    if is_tiny_name(model) or str(model).startswith("random-"):
        found.append(
            f"the scored model `{model}` has random weights: the figures test the code and measure nothing"
        )
    return found


def compat_rows() -> tuple[list[str], list[str]]:
    """Published Table 3 rows whose ImageNet-Seg mIoU is Acc / (2 - Acc) (ConceptAttention's
    compatibility figure, to ``COMPAT_TOLERANCE``) and those whose mIoU is not."""
    compat, proper = [], []
    for row in published.TABLE3_STANDARD:
        acc, miou, _ = row.imagenet
        expected = 100 * (acc / 100) / (2 - acc / 100)
        (compat if abs(miou - expected) <= COMPAT_TOLERANCE else proper).append(row.method)
    return compat, proper


def _subset_label(tag: str, value: str) -> str:
    if tag == "num_concepts":
        return f"{value} concepts"
    return value


@dataclass
class Report:
    """One run's results. Metric values are fractions in [0, 1] (NaN when undefined).

    overall: metric -> mean over scored pairs (fg) or the dataset figure (binary).
    subsets: subset label (``"2 concepts"``, ``"web"``, ...) -> metric -> mean.
    counts: ``"overall"`` and each subset -> {pairs, scored, degenerate, failed, invalid}.
    chance: ``constant`` / ``random`` -> metric -> figure of that chance map on the same pairs.
    intervals: metric -> [low, high] bootstrap 95% interval over images (``BOOTSTRAP``).
    leakage: MCC, per group (``leakage_by_group``).
    warnings: why the figures are not benchmark results (machine masks, tiny models), if so.
    """

    method: str
    protocol: str
    dataset: dict[str, Any]
    configuration: dict[str, Any]
    overall: dict[str, float]
    subsets: dict[str, dict[str, float]] = field(default_factory=dict)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    anchor_accuracy: float | None = None
    anchors: dict[str, float] = field(default_factory=dict)
    affinity: dict[str, Any] = field(default_factory=dict)
    chance: dict[str, dict[str, float]] = field(default_factory=dict)
    intervals: dict[str, list[float]] = field(default_factory=dict)
    leakage: dict[str, dict[str, Any]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    timing: dict[str, float] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    decisions: dict[str, str] = field(default_factory=dict)
    metric_settings: dict[str, Any] = field(default_factory=dict)
    package_version: str = ""
    created: str = ""

    # ---------------------------------------------------------------- building

    @classmethod
    def from_rows(
        cls,
        rows: Sequence[Mapping[str, Any]],
        *,
        protocol: str,
        method: str,
        configuration: Mapping[str, Any],
        dataset: Mapping[str, Any],
        limit: int | None = None,
        conceptattention_compat: bool = False,
        ap_channels: str = "both",
        protocol_resolution: int | None = None,
    ) -> Report:
        """Aggregate the rows of ``pairs.jsonl`` (each ``status`` ok / failed / invalid)."""
        from manifests.version import code_version

        ok = [r for r in rows if r.get("status") == "ok"]
        counts = {"overall": status_counts(rows)}
        subsets: dict[str, dict[str, float]] = {}
        leakage: dict[str, dict[str, Any]] = {}
        if protocol == "fg":
            overall = fg_means(ok)
            intervals = fg_intervals(ok)
            leakage = leakage_by_group(ok)
            groups: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
            for tag in SUBSET_TAGS:
                for row in rows:
                    value = (row.get("tags") or {}).get(tag)
                    if value is not None:
                        groups[_subset_label(tag, str(value))].append(row)
            for label in sorted(groups, key=_subset_order):
                subsets[label] = fg_means([r for r in groups[label] if r.get("status") == "ok"])
                counts[label] = status_counts(groups[label])
        elif protocol == "binary":
            compat = conceptattention_compat
            overall = binary_overall((r["binary"] for r in ok), conceptattention_compat=compat)
            intervals = binary_intervals(ok, conceptattention_compat=compat)
            if compat:
                proper = binary_overall((r["binary"] for r in ok), conceptattention_compat=False)
                overall["miou_proper"] = proper["miou"]
        else:
            raise ValueError(f"unknown protocol {protocol!r}")

        anchors = [bool(r["anchor_in_mask"]) for r in ok if r.get("anchor_in_mask") is not None]
        seconds = [float(r["method_seconds"]) for r in ok if r.get("method_seconds") is not None]
        errors = Counter(str(r.get("error")) for r in rows if r.get("status") in ("failed", "invalid"))
        timing = {}
        if seconds:
            timing = {"seconds_per_concept_query": float(np.mean(seconds)), "pairs_timed": len(seconds)}
        return cls(
            method=method,
            protocol=protocol,
            dataset=dict(dataset),
            configuration=dict(configuration),
            overall=overall,
            subsets=subsets,
            counts=counts,
            anchor_accuracy=float(np.mean(anchors)) if anchors else None,
            anchors=anchor_summary(ok),
            affinity=affinity_summary(ok),
            chance=chance_results(ok, protocol=protocol, conceptattention_compat=conceptattention_compat),
            intervals=intervals,
            leakage=leakage,
            warnings=build_warnings(dataset, configuration),
            timing=timing,
            errors=dict(errors.most_common(20)),
            decisions=method_decisions(configuration, method),
            metric_settings={
                **METRIC_DECISIONS,
                "limit_images": limit,
                "conceptattention_compat": conceptattention_compat,
                "ap_channels": ap_channels if protocol == "binary" else None,
                "protocol_resolution": protocol_resolution or "native (the masks' size)",
                "bootstrap": BOOTSTRAP,
                "chance_maps": "constant (one value) and uniform random (i.i.d. per scored pixel, seeded by "
                "the pair), scored with the same code on the same pairs as the method",
            },
            package_version=code_version(),
            created=datetime.now(UTC).isoformat(timespec="seconds"),
        )

    # ---------------------------------------------------------------- output

    def to_dict(self) -> dict[str, Any]:
        return finite(asdict(self))

    def write(self, out_dir: str | os.PathLike) -> tuple[Path, Path]:
        """Write ``report.json`` and ``report.md`` into ``out_dir``; returns their paths."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        json_path, md_path = out / "report.json", out / "report.md"
        json_path.write_text(json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n", encoding="utf-8")
        md_path.write_text(self.to_markdown(), encoding="utf-8")
        return json_path, md_path

    @classmethod
    def read(cls, path: str | os.PathLike) -> Report:
        """A report written by ``write`` (``report.json``), nulls back to NaN."""
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        for key in ("overall",):
            data[key] = {k: math.nan if v is None else v for k, v in data[key].items()}
        data["subsets"] = {
            s: {k: math.nan if v is None else v for k, v in m.items()} for s, m in data["subsets"].items()
        }
        return cls(**data)

    @property
    def row_label(self) -> str:
        preset = self.configuration.get("preset")
        model = self.configuration.get("model")
        parts = [p for p in (published.backbone_label(preset) if preset else None, model) if p]
        return f"{self.method} ({', '.join(parts)})" if parts else self.method

    @property
    def smoke(self) -> bool:
        """Whether a warning says these figures are not benchmark results."""
        return bool(self.warnings)

    def _ours(self, text: str) -> str:
        """This run's cell: bold beside published rows only when the run is a real result."""
        return text if self.smoke else f"**{text}**"

    def dataset_line(self) -> str:
        """One line naming the exact data scored: version, fingerprint, build code, review share."""
        d = self.dataset
        parts = [f"{d.get('name', 'dataset')}"]
        if d.get("dataset_version"):
            parts.append(f"version {d['dataset_version']}")
        if d.get("split"):
            parts.append(f"split {d['split']}")
        if d.get("fingerprint"):
            parts.append(f"fingerprint `{d['fingerprint']}`")
        if d.get("code_version"):
            parts.append(f"built by code {d['code_version']}")
        review = d.get("review") or {}
        if review:
            total = sum(int(v) for v in review.values())
            reviewed = total - int(review.get("machine", 0))
            parts.append(
                f"masks: {reviewed} of {total} reviewed by a person "
                f"({', '.join(f'{k} {v}' for k, v in sorted(review.items()))})"
            )
        return "Dataset: " + ", ".join(parts) + "."

    def interval_line(self, metrics: Sequence[str]) -> str:
        cells = [
            f"{METRIC_LABELS[m].split()[0]} [{percent_cell(self.intervals[m][0])}, {percent_cell(self.intervals[m][1])}]"
            for m in metrics
            if m in self.intervals
        ]
        if not cells:
            return "No confidence intervals: nothing was scored."
        return (
            f"95% confidence intervals (percentile bootstrap over images, {BOOTSTRAP['resamples']} resamples, "
            f"seed {BOOTSTRAP['seed']}): " + ", ".join(cells) + "."
        )

    def to_markdown(self) -> str:
        lines = [f"# {self.method} on {self.dataset.get('name', 'dataset')}", ""]
        if self.warnings:
            lines += ["> **Warning: these figures are not benchmark results.**", ">"]
            lines += [f"> - {w}" for w in self.warnings]
            lines += [""]
        lines += [self.dataset_line(), ""]
        total = self.counts.get("overall", {})
        if total.get("failed") or total.get("invalid"):
            lines += [
                f"> **{total.get('failed', 0)} failed and {total.get('invalid', 0)} invalid pairs** of "
                f"{total.get('pairs', 0)}: the means below cover the {total.get('scored', 0)} scored pairs.",
                "",
            ]
        if self.protocol == "fg":
            lines += self._fg_tables()
        else:
            lines += self._binary_tables()
        lines += [
            "",
            "## Counts",
            "",
            "| | pairs | scored | degenerate | failed | invalid |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for label, c in self.counts.items():
            lines.append(
                f"| {label} | {c.get('pairs', 0)} | {c.get('scored', 0)} | {c.get('degenerate', 0)} | "
                f"{c.get('failed', 0)} | {c.get('invalid', 0)} |"
            )
        if self.anchor_accuracy is not None:
            preset = self.configuration.get("preset")
            reference = published.ANCHOR_ACCURACY.get(preset or "")
            note = (
                f" (published, paper Table 2, {published.backbone_label(preset)}: {reference:.2f}%)"
                if reference
                else ""
            )
            lines += [
                "",
                f"Anchor accuracy (anchor inside the target mask): **{100 * self.anchor_accuracy:.2f}%**{note}",
            ]
        if self.anchors:
            a = self.anchors
            lines += [
                "",
                f"Anchors: {a['per_concept']:.2f} per concept; {100 * a['precision']:.2f}% inside the target mask, "
                f"{100 * a['on_other_concepts']:.2f}% on another concept's mask (mean over {a['pairs']} pairs).",
            ]
        lines += self._affinity_lines()
        if self.timing:
            lines += [
                "",
                f"Method time: {self.timing['seconds_per_concept_query']:.3f} s per concept query "
                f"(mean over {self.timing['pairs_timed']} pairs, this machine).",
            ]
        if self.errors:
            lines += ["", "## Failed and invalid pairs (most frequent errors)", ""]
            lines += [f"- {count} x `{message}`" for message, count in self.errors.items()]
        lines += [
            "",
            "## Configuration",
            "",
            "| setting | value |",
            "|---|---|",
            f"| scored method | {self.method} |",
        ]
        for key, value in self.configuration.items():
            if key != "pipeline":
                lines.append(f"| {key} | {_cell(value)} |")
        for key, value in (self.configuration.get("pipeline") or {}).items():
            lines.append(f"| pipeline.{key} | {_cell(value)} |")
        lines.append(f"| package version | {self.package_version} |")
        for key, value in self.dataset.items():
            lines.append(f"| dataset.{key} | {_cell(value)} |")
        lines += ["", "## Decisions (method.md [decision] items)", "", "| decision | value |", "|---|---|"]
        lines += [f"| {k} | {_cell(v)} |" for k, v in self.decisions.items()]
        lines += ["", "## Metric settings", "", "| setting | value |", "|---|---|"]
        lines += [f"| {k} | {_cell(v)} |" for k, v in self.metric_settings.items()]
        lines += ["", f"_Written {self.created}. Published rows are copied from the AnchorDiff paper for reference; "
                  "they were not produced by this run._", ""]  # fmt: skip
        return "\n".join(lines)

    def _fg_tables(self) -> list[str]:
        header = "| Method | " + " | ".join(METRIC_LABELS[m] for m in TABLE4_COLUMNS) + " | source |"
        lines = [
            "## Results (layout of the paper's Table 4; percent)",
            "",
            header,
            "|---|" + "---:|" * len(TABLE4_COLUMNS) + "---|",
        ]
        for row in published.TABLE4_MCC:
            values = (row.miou_fg, row.map_fg, row.nar, row.acc_fg)
            lines.append(
                f"| {row.method} | "
                + " | ".join(f"{v:.2f}" for v in values)
                + " | published (paper Table 4) |"
            )
        lines += self._chance_rows(TABLE4_COLUMNS, "pairs")
        ours = " | ".join(self._ours(percent_cell(self.overall.get(m))) for m in TABLE4_COLUMNS)
        run = "this run (smoke: see the warning)" if self.smoke else "this run"
        lines.append(
            f"| {self._ours(self.row_label)} | {ours} | {run}, {self.counts['overall'].get('scored', 0)} pairs |"
        )
        lines += ["", self.interval_line((*TABLE4_COLUMNS, "iou_target"))]
        lines += self._counterpart_lines(
            {row.method: (row.miou_fg, row.map_fg, row.nar, row.acc_fg) for row in published.TABLE4_MCC},
            TABLE4_COLUMNS, "Table 4",
        )  # fmt: skip
        lines += [
            "",
            "## By subset (this run; percent)",
            "",
            "| subset | pairs scored | "
            + " | ".join(METRIC_LABELS[m] for m in (*TABLE4_COLUMNS, "iou_target"))
            + " | degenerate |",
            "|---|---:|" + "---:|" * (len(TABLE4_COLUMNS) + 2),
        ]
        for label, means in [("all", self.overall), *self.subsets.items()]:
            counts = self.counts.get("overall" if label == "all" else label, {})
            cells = " | ".join(percent_cell(means.get(m)) for m in (*TABLE4_COLUMNS, "iou_target"))
            lines.append(f"| {label} | {counts.get('scored', 0)} | {cells} | {counts.get('degenerate', 0)} |")
        lines += self._leakage_lines()
        return lines

    def _affinity_lines(self) -> list[str]:
        """Table 1's layout: this run's mean affinities beside the published ones."""
        if not self.affinity:
            return []
        names = {"w_attn": "W_attn", "w_cos": "W_cos", "w_cos_gated": "W_cos ⊙ G_attn"}
        lines = [
            "",
            f"## Affinity statistics (layout of the paper's Table 1; percent, mean over {self.affinity['images']} "
            "images, this run's graph layers)",
            "",
            "| Affinity | Same obj. | Conf. diff. | FG-BG | source |",
            "|---|---:|---:|---:|---|",
        ]
        for key, label in names.items():
            values = published.TABLE1_AFFINITY[key]
            lines.append(
                f"| {label} | " + " | ".join(f"{v:.2f}" for v in values) + " | published (paper Table 1) |"
            )
        for key, label in names.items():
            cells = " | ".join(percent_cell(self.affinity[key].get(pairs)) for pairs in AFFINITY_PAIRS)
            lines.append(f"| {label} | {cells} | this run |")
        return lines

    def _counterpart_lines(
        self, rows: Mapping[str, Sequence[float]], metrics: Sequence[str], table: str
    ) -> list[str]:
        """This run minus the published row of the same method on the same backbone, if the paper has one."""
        name = published.counterpart(self.method, self.configuration.get("preset"))
        if name not in rows:
            return []
        cells = []
        for metric, reference in zip(metrics, rows[name], strict=True):
            value = self.overall.get(metric)
            delta = "–" if value is None or not math.isfinite(value) else f"{100 * value - reference:+.2f}"
            cells.append(f"{METRIC_LABELS[metric].split()[0]} {delta}")
        caveat = " (a smoke run: not comparable)" if self.smoke else ""
        return [
            "",
            f"This run minus its published counterpart **{name}** (paper {table}), in points{caveat}: "
            + ", ".join(cells) + ".",
        ]  # fmt: skip

    def _chance_rows(
        self, metrics: Sequence[str], unit: str, blank: int = 0, before: bool = False
    ) -> list[str]:
        """Table rows of the chance maps (``blank`` empty cells placed before or after them)."""
        lines = []
        for kind, label in CHANCE_LABELS.items():
            if kind not in self.chance:
                continue
            cells = [percent_cell(self.chance[kind].get(m)) for m in metrics]
            cells = ["–"] * blank + cells if before else cells + ["–"] * blank
            lines.append(
                f"| {label} | {' | '.join(cells)} | chance, this run's {self.chance[kind].get('pairs', 0)} {unit} |"
            )
        return lines

    def _leakage_lines(self, top: int = 10) -> list[str]:
        """The groups with the highest mean NAR and, for each, its largest target -> distractor share."""
        if not self.leakage:
            return []
        lines = [
            "",
            f"## Groups that leak most (this run; top {min(top, len(self.leakage))} of {len(self.leakage)} by NAR)",
            "",
            "| group | pairs | NAR ↓ | largest leak (target → distractor: share of the target's map) |",
            "|---|---:|---:|---|",
        ]
        ranked = sorted(self.leakage.items(), key=lambda item: -item[1]["nar"])[:top]
        for group, entry in ranked:
            leaks = [
                (share, target, concept)
                for target, row in entry["matrix"].items()
                for concept, share in row.items()
                if concept != target
            ]
            worst = max(leaks) if leaks else None
            cell = f"{worst[1]} → {worst[2]}: {percent_cell(worst[0])}%" if worst else "–"
            lines.append(f"| {group} | {entry['pairs']} | {percent_cell(entry['nar'])} | {cell} |")
        lines += ["", "The full matrices (every target, every concept) are in `report.json` under `leakage`."]
        return lines

    def _binary_tables(self) -> list[str]:
        name = self.dataset.get("name", "")
        imagenet = name.startswith("imagenet")
        lines = [
            "## Results (layout of the paper's Table 3; percent)",
            "",
            "| Method | ImageNet-Seg Acc ↑ | mIoU ↑ | mAP ↑ | VOC single-class Acc ↑ | mIoU ↑ | mAP ↑ | source |",
            "|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for row in published.TABLE3_STANDARD:
            cells = " | ".join(f"{v:.2f}" for v in (*row.imagenet, *row.voc))
            lines.append(f"| {row.method} | {cells} | published (paper Table 3) |")
        lines += self._chance_rows(("acc", "miou", "map"), "images", blank=3, before=not imagenet)
        ours = [self._ours(percent_cell(self.overall.get(m))) for m in ("acc", "miou", "map")]
        blank = ["–"] * 3
        cells = " | ".join(ours + blank if imagenet else blank + ours)
        run = "this run (smoke: see the warning)" if self.smoke else "this run"
        lines.append(
            f"| {self._ours(self.row_label)} | {cells} | {run}, {self.counts['overall'].get('scored', 0)} images |"
        )
        compat, proper = compat_rows()
        voc = name.startswith("voc")
        if imagenet or voc:
            lines += self._counterpart_lines(
                {row.method: row.imagenet if imagenet else row.voc for row in published.TABLE3_STANDARD},
                ("acc", "miou", "map"), "Table 3",
            )  # fmt: skip
        lines += [
            "",
            self.interval_line(("acc", "miou", "map")),
            "",
            f"Published ImageNet-Seg mIoU: {len(compat)} rows equal Acc / (2 - Acc) to {COMPAT_TOLERANCE} points "
            f"(ConceptAttention's convention: {', '.join(compat)}); {len(proper)} rows do not "
            f"(a mean IoU: {', '.join(proper)}). Every published VOC mIoU is a mean IoU. Compare this run's "
            "mIoU with the first group only under --conceptattention-compat.",
            "",
            f"IoU foreground {percent_cell(self.overall.get('iou_foreground'))}, "
            f"background {percent_cell(self.overall.get('iou_background'))} (percent).",
        ]
        if self.metric_settings.get("conceptattention_compat"):
            lines += [
                "",
                "**mIoU above is ConceptAttention's compatibility figure Acc / (2 - Acc)**, not the mean IoU; "
                f"the proper mIoU is {percent_cell(self.overall.get('miou_proper'))}.",
            ]
        return lines


AFFINITY_PAIRS = ("same_object", "confusable", "fg_bg")


def anchor_summary(ok_rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Mean anchors per concept, share inside the target mask and on another concept's mask, over
    the scored pairs that list their anchors (``anchors``); {} when none does."""
    rows = [r for r in ok_rows if r.get("anchors") is not None]
    if not rows:
        return {}
    return {
        "per_concept": float(np.mean([len(r["anchors"]) for r in rows])),
        "precision": float(np.mean([r["anchor_precision"] for r in rows])),
        "on_other_concepts": float(np.mean([r["anchors_on_other_concepts"] for r in rows])),
        "pairs": len(rows),
    }


def affinity_summary(ok_rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Table 1's mean affinities over images (each image once, whatever its number of scored pairs;
    a mean over no pair of a kind, null in the row, is left out); {} when no row has them."""
    per_image: dict[str, Mapping[str, Any]] = {}
    for row in ok_rows:
        affinity = row.get("affinity")
        if isinstance(affinity, Mapping) and "w_cos" in affinity:
            per_image.setdefault(row["sample_id"], affinity)
    if not per_image:
        return {}
    summary: dict[str, Any] = {"images": len(per_image)}
    for matrix in ("w_attn", "w_cos", "w_cos_gated"):
        summary[matrix] = {}
        for pairs in AFFINITY_PAIRS:
            values = [a[matrix][pairs] for a in per_image.values() if a[matrix].get(pairs) is not None]
            summary[matrix][pairs] = float(np.mean(values)) if values else float("nan")
    return summary


def _subset_order(label: str) -> tuple[int, str]:
    order = {"2 concepts": 0, "3 concepts": 1, "generated": 2, "web": 3}
    return (order.get(label, 10), label)


def status_counts(rows: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    status = Counter(r.get("status") for r in rows)
    degenerate = sum(1 for r in rows if r.get("status") == "ok" and (r.get("scores") or {}).get("degenerate"))
    return {
        "pairs": len(rows),
        "scored": status.get("ok", 0),
        "degenerate": degenerate,
        "failed": status.get("failed", 0),
        "invalid": status.get("invalid", 0),
    }


def fg_means(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    def value(row: Mapping[str, Any], metric: str) -> float:
        v = row["scores"].get(metric)
        return math.nan if v is None else float(v)

    return {metric: _mean(value(r, metric) for r in rows) for metric in FG_METRICS}


def percent_cell(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{100 * value:.2f}"


def _cell(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, list | dict) else str(value)
    return text.replace("|", "\\|")


def finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value
