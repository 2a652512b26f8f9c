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
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from benchmark import published
from benchmark.metrics import FG_METRICS, BinaryAccumulator, BinaryImageScores

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
    return {
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


def _mean(values: Iterable[float]) -> float:
    finite = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(finite)) if finite else math.nan


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
    """

    method: str
    protocol: str
    dataset: dict[str, Any]
    configuration: dict[str, Any]
    overall: dict[str, float]
    subsets: dict[str, dict[str, float]] = field(default_factory=dict)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    anchor_accuracy: float | None = None
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
    ) -> Report:
        """Aggregate the rows of ``pairs.jsonl`` (each ``status`` ok / failed / invalid)."""
        from manifests.version import code_version

        ok = [r for r in rows if r.get("status") == "ok"]
        counts = {"overall": status_counts(rows)}
        subsets: dict[str, dict[str, float]] = {}
        if protocol == "fg":
            overall = fg_means(ok)
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
            accumulator = BinaryAccumulator(conceptattention_compat=conceptattention_compat)
            for row in ok:
                accumulator.add_scores(BinaryImageScores.from_dict(row["binary"]))
            result = accumulator.result()
            overall = {
                "acc": result.acc,
                "miou": result.miou,
                "map": result.map,
                "iou_foreground": result.iou_foreground,
                "iou_background": result.iou_background,
            }
            if conceptattention_compat:
                proper = BinaryAccumulator()
                for row in ok:
                    proper.add_scores(BinaryImageScores.from_dict(row["binary"]))
                overall["miou_proper"] = proper.result().miou
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
            timing=timing,
            errors=dict(errors.most_common(20)),
            decisions=method_decisions(configuration, method),
            metric_settings={
                **METRIC_DECISIONS,
                "limit_images": limit,
                "conceptattention_compat": conceptattention_compat,
                "ap_channels": ap_channels if protocol == "binary" else None,
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

    def to_markdown(self) -> str:
        lines = [f"# {self.method} on {self.dataset.get('name', 'dataset')}", ""]
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
        ours = " | ".join(f"**{percent_cell(self.overall.get(m))}**" for m in TABLE4_COLUMNS)
        lines.append(
            f"| **{self.row_label}** | {ours} | this run, {self.counts['overall'].get('scored', 0)} pairs |"
        )
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
        ours = [f"**{percent_cell(self.overall.get(m))}**" for m in ("acc", "miou", "map")]
        blank = ["–"] * 3
        cells = " | ".join(ours + blank if imagenet else blank + ours)
        lines.append(
            f"| **{self.row_label}** | {cells} | this run, {self.counts['overall'].get('scored', 0)} images |"
        )
        lines += [
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
