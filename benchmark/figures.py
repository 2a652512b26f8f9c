"""Figures of a run or a sweep (matplotlib, Agg, PNG; no pyplot state).

- ``qualitative_grid``: one row per image-concept pair: the image, its ground truth (target
  in green, the other concepts in orange), then for each method its heatmap and predicted
  mask (the metrics' own resize / min-max / mean threshold) with the pair's scores.
- ``layer_sensitivity``: the paper's Fig. 9: each metric of AnchorDiff with one graph layer
  at a time, the full method's value as a dashed line, published values as a grey curve.
- ``steps_curve``: the paper's Fig. 8: each metric against the number of propagation steps.
- ``leakage_figures``: per domain, each group's leakage matrix (row = queried concept, column =
  where its heatmap mass fell, in percent; the diagonal is the mass on the target itself).
- ``anchor_figure``: each kept image with every concept's mask outlined and its anchors marked in
  the concept's colour (eq. 7's anchor a star, further anchors circles).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from PIL import Image

from benchmark.metrics import binary_image_scores, fg_scores, normalize_heatmap, predicted_mask

TARGET_COLOUR = np.array([0, 158, 115], dtype=np.float32) / 255  # Okabe-Ito bluish green
OTHER_COLOUR = np.array([230, 159, 0], dtype=np.float32) / 255  # Okabe-Ito orange
PRED_COLOUR = np.array([86, 180, 233], dtype=np.float32) / 255  # Okabe-Ito sky blue
OUTLINE_COLOUR = np.array([240, 228, 66], dtype=np.float32) / 255  # Okabe-Ito yellow
IGNORE_COLOUR = np.array([0.6, 0.6, 0.6], dtype=np.float32)
METRIC_STYLE = {
    "miou_fg": ("mIoU$_{fg}$ ↑", "#0072B2"),
    "map_fg": ("mAP$_{fg}$ ↑", "#009E73"),
    "nar": ("NAR ↓", "#D55E00"),
    "acc_fg": ("Acc$_{fg}$ ↑", "#CC79A7"),
}
DISPLAY_SIZE = 224
"""Longest side, in pixels, of each picture in the qualitative grid."""


def _display(image: Image.Image, masks: np.ndarray) -> tuple[np.ndarray, float]:
    """The image scaled so its longest side is ``DISPLAY_SIZE`` (RGB float in [0, 1]) and the scale."""
    scale = DISPLAY_SIZE / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    resample = Image.BILINEAR if scale < 1 else Image.NEAREST
    return np.asarray(image.convert("RGB").resize(size, resample), dtype=np.float32) / 255, scale


def _shrink_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if mask.shape == shape:
        return mask
    picture = Image.fromarray(mask.astype(np.uint8) * 255).resize((shape[1], shape[0]), Image.NEAREST)
    return np.asarray(picture) > 127


def _overlay(base: np.ndarray, mask: np.ndarray, colour: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    out = base.copy()
    out[mask] = (1 - alpha) * out[mask] + alpha * colour
    return out


def _load_heatmaps(folder: Path, sample_id: str) -> np.ndarray | None:
    from benchmark.datasets import safe_name

    path = folder / f"{safe_name(sample_id)}.npz"
    if not path.exists():
        return None
    with np.load(path) as data:
        return data["heatmaps"].astype(np.float64)


def qualitative_grid(
    dataset: Any,
    runs: Sequence[tuple[str, str | os.PathLike]],
    path: str | os.PathLike,
    *,
    max_images: int = 6,
    max_rows: int = 8,
) -> Path | None:
    """Draw the qualitative grid of the first ``max_images`` images that every run kept.

    dataset: the benchmark dataset the runs scored (``benchmark.datasets``).
    runs: ``(label, heatmaps folder)`` per method (``<out_dir>/heatmaps`` of ``evaluate``).
    Returns the PNG path, or None when no run kept heatmaps of any image.
    """
    from benchmark.datasets import InvalidSample

    keys = dataset.sample_keys()
    rows: list[tuple[Any, int, list[np.ndarray]]] = []
    for index, key in enumerate(keys[:max_images]):
        maps = [_load_heatmaps(Path(folder), key.sample_id) for _, folder in runs]
        if any(m is None for m in maps):
            continue
        try:
            sample = dataset[index]
        except InvalidSample:
            continue
        for target in range(len(sample.concepts)):
            if sample.masks[target].any() and len(rows) < max_rows:
                rows.append((sample, target, [m[target] for m in maps]))
    if not rows:
        return None

    columns = 2 + 2 * len(runs)
    headers = ["image", "ground truth"] + [
        f"{label}\n{part}" for label, _ in runs for part in ("heatmap", "mask")
    ]
    binary = getattr(dataset, "protocol", "fg") == "binary"
    # one mosaic in one axes: far faster to draw than an axes per cell
    cell, gap, caption = DISPLAY_SIZE, 10, 26
    row_height = cell + caption
    canvas = np.ones((len(rows) * row_height, columns * (cell + gap) - gap, 3), dtype=np.float32)
    texts: list[tuple[float, float, str, dict[str, Any]]] = []
    for r, (sample, target, heatmaps) in enumerate(rows):
        cells, captions = _row_cells(sample, target, heatmaps, binary)
        top = r * row_height
        for c, (content, text) in enumerate(zip(cells, captions, strict=True)):
            left = c * (cell + gap)
            h, w = content.shape[:2]
            y0, x0 = top + (cell - h) // 2, left + (cell - w) // 2
            canvas[y0 : y0 + h, x0 : x0 + w] = np.clip(content, 0, 1)
            if text:
                texts.append(
                    (left + cell / 2, top + cell + caption / 2, text, {"ha": "center", "va": "center"})
                )
        others = [n for k, n in enumerate(sample.concepts) if k != target]
        label = (
            sample.concepts[target]
            + (f"\nvs {', '.join(others)}" if others else "")
            + f"\n{sample.sample_id[:20]}"
        )
        texts.append((-12, top + cell / 2, label, {"ha": "right", "va": "center"}))
    for c, header in enumerate(headers):
        texts.append((c * (cell + gap) + cell / 2, -12, header, {"ha": "center", "va": "bottom"}))

    dpi, left_margin, top_margin = 100, 150, 90
    height, width = canvas.shape[:2]
    figure = Figure(figsize=((width + left_margin + 10) / dpi, (height + top_margin) / dpi), dpi=dpi)
    ax = figure.add_axes((0, 0, 1, 1))
    ax.imshow(canvas, interpolation="nearest", extent=(0, width, height, 0))
    ax.set_xlim(-left_margin, width + 10)
    ax.set_ylim(height, -top_margin)
    ax.axis("off")
    for x, y, text, alignment in texts:
        ax.text(x, y, text, fontsize=9, **alignment)
    ax.text(
        width / 2, -top_margin + 8,
        "ground truth: green = target concept, orange = the other concepts\n"
        "mask: blue = predicted (heatmap > mean), yellow = the target's true outline",
        fontsize=9, ha="center", va="top",
    )  # fmt: skip
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out)
    return out


def _outline(mask: np.ndarray, width: int = 2) -> np.ndarray:
    """Pixels of ``mask`` within ``width`` pixels of its border (4-neighbour erosion)."""
    inner = mask.copy()
    for _ in range(width):
        padded = np.pad(inner, 1, constant_values=False)
        inner = inner & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def _row_cells(
    sample: Any, target: int, heatmaps: Sequence[np.ndarray], binary: bool
) -> tuple[list[np.ndarray], list[str | None]]:
    """The pictures (display size, RGB float in [0, 1]) and captions of one grid row."""
    picture, _ = _display(sample.image, sample.masks)
    shape = picture.shape[:2]
    target_mask = _shrink_mask(sample.masks[target], shape)
    others = np.zeros(shape, dtype=bool)
    for k in range(len(sample.concepts)):
        if k != target:
            others |= _shrink_mask(sample.masks[k], shape)
    others &= ~target_mask
    # overlays go on a grey copy of the image, so the image's own colours never read as labels
    grey = np.repeat(picture.mean(axis=2, keepdims=True), 3, axis=2)
    truth = _overlay(_overlay(grey, target_mask, TARGET_COLOUR, 0.7), others, OTHER_COLOUR, 0.7)
    if sample.ignore is not None:
        truth = _overlay(truth, _shrink_mask(sample.ignore, shape), IGNORE_COLOUR, 0.7)
    cells, captions = [picture, truth], [None, None]
    edge = _outline(target_mask)
    for heatmap in heatmaps:
        if not np.isfinite(heatmap).all():  # a failed pair: nothing to draw
            cells += [grey * 0.4, grey * 0.4]
            captions += ["non-finite heatmap (failed)", None]
            continue
        normalized = normalize_heatmap(heatmap, shape)
        cells.append(0.25 * grey + 0.75 * _colormap(normalized))
        if binary:
            scores = binary_image_scores(heatmap, sample.masks[target], ignore=sample.ignore)
            caption = f"IoU fg {100 * scores.inter[1] / max(scores.union[1], 1):.1f}"
        else:
            scores = fg_scores(heatmap, sample.masks, target)
            nar = "–" if math.isnan(scores.nar) else f"{100 * scores.nar:.1f}"
            caption = f"mIoU fg {100 * scores.miou_fg:.1f}   NAR {nar}"
        mask_cell = _overlay(grey, predicted_mask(normalized), PRED_COLOUR, 0.7)
        mask_cell[edge] = OUTLINE_COLOUR
        cells.append(mask_cell)
        captions += [None, caption]
    return cells, captions


def _colormap(values: np.ndarray) -> np.ndarray:
    from matplotlib import colormaps

    return colormaps["turbo"](values)[..., :3].astype(np.float32)


def _percent(value: float | None) -> float:
    return math.nan if value is None else 100 * value


def layer_sensitivity(
    singles: Mapping[int, Mapping[str, float]],
    path: str | os.PathLike,
    *,
    full_method: Mapping[str, float] | None = None,
    full_label: str = "full method",
    selected: Sequence[int] = (),
    published: Mapping[int, Sequence[float]] | None = None,
    published_label: str = "published",
    title: str = "Layer sensitivity",
) -> Path:
    """Fig. 9 style: one panel per metric, the single-layer values against the layer index.

    singles: layer -> means (fractions); full_method: the selected layers' means, drawn as a
    dashed line; selected: those layers, marked on the x axis; published: layer ->
    (mIoU_fg, mAP_fg, NAR, Acc_fg) in percent, drawn in grey for reference.
    """
    layers = sorted(singles)
    figure = Figure(figsize=(11, 6.2), dpi=110, layout="constrained")
    axes = figure.subplots(2, 2, sharex=True)
    for ax, (metric, (label, colour)), column in zip(axes.flat, METRIC_STYLE.items(), range(4), strict=True):
        values = [_percent(singles[layer].get(metric)) for layer in layers]
        ax.plot(layers, values, marker="o", color=colour, label="this run, single layer")
        _mark_missing(ax, layers, values)
        if published:
            keys = sorted(published)
            ax.plot(
                keys, [published[k][column] for k in keys], marker=".", color="0.55", linestyle="-",
                linewidth=1, label=published_label,
            )  # fmt: skip
        if full_method is not None and metric in full_method:
            ax.axhline(
                _percent(full_method[metric]), color=colour, linestyle="--", linewidth=1.2, label=full_label
            )
        for layer in selected:
            ax.axvline(layer, color="0.3", linestyle=":", linewidth=1)
        ax.set_title(label, fontsize=11)
        ax.set_ylabel("percent")
        ax.grid(alpha=0.3)
        ax.set_xticks(layers if len(layers) <= 16 else layers[:: max(1, len(layers) // 12)])
    for ax in axes[1]:
        ax.set_xlabel("graph layer (transformer block index)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    if selected:
        handles.append(Line2D([], [], color="0.3", linestyle=":", linewidth=1))
        labels.append("selected layers " + "+".join(f"L{layer}" for layer in selected))
    figure.legend(handles, labels, loc="outside lower center", ncols=len(labels), fontsize=9, frameon=False)
    figure.suptitle(title, fontsize=12)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out)
    return out


def steps_curve(
    steps: Mapping[int, Mapping[str, float]],
    path: str | os.PathLike,
    *,
    default_steps: int = 160,
    title: str = "Propagation steps",
) -> Path:
    """Fig. 8 style: one panel per metric (percent) against the number of propagation steps."""
    counts = sorted(steps)
    figure = Figure(figsize=(11, 6.2), dpi=110, layout="constrained")
    axes = figure.subplots(2, 2, sharex=True)
    geometric = bool(counts) and counts[0] > 0 and counts[-1] / counts[0] >= 16
    for ax, (metric, (label, colour)) in zip(axes.flat, METRIC_STYLE.items(), strict=True):
        values = [_percent(steps[n].get(metric)) for n in counts]
        ax.plot(counts, values, marker="o", color=colour, label="this run")
        _mark_missing(ax, counts, values)
        ax.axvline(
            default_steps,
            color="0.3",
            linestyle="--",
            linewidth=1,
            label=f"default N$_{{diff}}$ = {default_steps}",
        )
        if geometric:  # a geometric grid reads best on a log axis
            ax.set_xscale("log", base=2)
            ax.set_xticks(counts, [str(n) for n in counts])
            ax.minorticks_off()
        ax.tick_params(axis="x", labelrotation=45 if len(counts) > 6 else 0, labelsize=9)
        ax.set_title(label, fontsize=11)
        ax.set_ylabel("percent")
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("propagation steps N$_{diff}$")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncols=len(labels), fontsize=9, frameon=False)
    figure.suptitle(title, fontsize=12)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out)
    return out


def _mark_missing(ax: Any, xs: Sequence[float], values: Sequence[float]) -> None:
    """Write "n/a" at the bottom of the panel where a value is undefined (e.g. NAR of an
    all-degenerate setting), so a gap in a curve is never silent."""
    for x, value in zip(xs, values, strict=True):
        if math.isnan(value):
            ax.annotate(
                "n/a",
                (x, 0.5),
                xycoords=("data", "axes fraction"),
                ha="center",
                fontsize=9,
                color="0.35",
                bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "none"},
            )


def leakage_figures(leakage: Mapping[str, Mapping[str, Any]], out_dir: str | os.PathLike) -> list[Path]:
    """``leakage_<domain>.png`` in ``out_dir`` for each domain of ``Report.leakage`` (groups
    without a domain tag go to ``leakage_unknown.png``); returns the paths written."""
    by_domain: dict[str, list[tuple[str, Mapping[str, Any]]]] = {}
    for group, entry in leakage.items():
        by_domain.setdefault(str(entry.get("domain") or "unknown"), []).append((group, entry))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for domain, groups in sorted(by_domain.items()):
        columns = min(4, len(groups))
        rows = -(-len(groups) // columns)
        figure = Figure(figsize=(3.4 * columns, 3.1 * rows), constrained_layout=True)
        axes = figure.subplots(rows, columns, squeeze=False)
        for ax in axes.flat[len(groups) :]:
            ax.axis("off")
        for ax, (group, entry) in zip(axes.flat, groups, strict=False):
            targets = list(entry["matrix"])
            concepts = list(dict.fromkeys(c for row in entry["matrix"].values() for c in row))
            values = np.array(
                [[100 * entry["matrix"][t].get(c, math.nan) for c in concepts] for t in targets]
            )
            ax.imshow(values, cmap="magma_r", vmin=0, vmax=100)
            for (i, j), value in np.ndenumerate(values):
                if not math.isnan(value):
                    ax.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=8,
                            color="white" if value > 55 else "black")  # fmt: skip
            ax.set_xticks(range(len(concepts)), concepts, rotation=30, ha="right", fontsize=7)
            ax.set_yticks(range(len(targets)), targets, fontsize=7)
            ax.set_title(f"{group} (NAR {100 * entry['nar']:.1f}, {entry['pairs']} pairs)", fontsize=8)
        figure.suptitle(
            f"Leakage by group, {domain}: % of the queried concept's map on each mask", fontsize=9
        )
        path = out / f"leakage_{re.sub(r'[^A-Za-z0-9._-]+', '_', domain)}.png"
        figure.savefig(path, dpi=110)
        written.append(path)
    return written


CONCEPT_COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9")
"""Okabe-Ito colours of concepts 0, 1, 2, ... in ``anchor_figure``."""


def anchor_figure(
    dataset: Any, heatmap_dir: str | os.PathLike, path: str | os.PathLike, *, title: str, max_images: int = 6
) -> Path | None:
    """Draw the anchors the run kept (``anchors`` of its heatmap files) on the first images.

    Each panel: the image, each concept's mask outline and anchors in the concept's colour. An
    anchor (row, col) on the (gh, gw) heatmap grid is drawn at its token's centre,
    ``((col + 0.5) * W / gw, (row + 0.5) * H / gh)`` in the displayed image. Returns the PNG
    path, or None when no kept file holds anchors.
    """
    from benchmark.datasets import InvalidSample, safe_name

    panels = []
    for index, key in enumerate(dataset.sample_keys()[:max_images]):
        file = Path(heatmap_dir) / f"{safe_name(key.sample_id)}.npz"
        if not file.exists():
            continue
        with np.load(file) as data:
            if "anchors" not in data:
                continue
            anchors, grid = data["anchors"], data["heatmaps"].shape[1:]
        try:
            sample = dataset[index]
        except InvalidSample:
            continue
        panels.append((sample, anchors, grid))
    if not panels:
        return None
    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(3.4 * columns, 3.6 * rows + 0.4), dpi=100)
    figure.suptitle(title, fontsize=10)
    for i, (sample, anchors, (gh, gw)) in enumerate(panels):
        ax = figure.add_subplot(rows, columns, i + 1)
        picture, _ = _display(sample.image, sample.masks)
        height, width = picture.shape[:2]
        ax.imshow(picture, interpolation="nearest")
        for k in range(len(sample.concepts)):
            colour = CONCEPT_COLOURS[k % len(CONCEPT_COLOURS)]
            mask = _shrink_mask(sample.masks[k], (height, width))
            if mask.any():
                ax.contour(mask.astype(float), levels=[0.5], colors=[colour], linewidths=1.5)
            points = [(r, c) for r, c in anchors[k] if r >= 0]
            for j, (r, c) in enumerate(points):
                x, y = (c + 0.5) * width / gw, (r + 0.5) * height / gh
                ax.plot(x, y, marker="*" if j == 0 else "o", markersize=14 if j == 0 else 9, color=colour,
                        markeredgecolor="white", markeredgewidth=1.2, linestyle="none")  # fmt: skip
        handles = [
            Line2D(
                [],
                [],
                color=CONCEPT_COLOURS[k % len(CONCEPT_COLOURS)],
                marker="*",
                linestyle="-",
                label=f"{concept} ({int((anchors[k][:, 0] >= 0).sum())})",
            )  # fmt: skip
            for k, concept in enumerate(sample.concepts)
        ]
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.02), fontsize=8, frameon=False,
                  ncol=len(handles))  # fmt: skip
        ax.set_title(sample.sample_id[:28], fontsize=8)
        ax.axis("off")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, bbox_inches="tight")
    return out
