"""The MCC metrics and the standard single-concept protocol, in numpy (no model imports).

Every method's heatmap goes through the same three steps before it is scored
(``normalize_heatmap``):

1. **resize** bilinearly to the masks' (H, W), with the half-pixel-centre convention of
   ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False, antialias=False)``
   (also OpenCV's ``INTER_LINEAR``): output pixel ``i`` samples the input at
   ``(i + 0.5) * in / out - 0.5``, clamped to the image. A heatmap already at (H, W) is used as is.
2. **min-max** normalise to [0, 1] over the whole image; a constant heatmap (max == min)
   becomes all zeros.
3. **threshold** at the mean of the normalised heatmap over the whole image: the predicted
   mask is ``h > mean(h)``.

Multi-concept metrics (method.md "Metrics", eq. 14), for one image and one target concept c:
``M_c`` the target mask, ``M_other`` the union of the other concepts' masks minus ``M_c``,
``R = M_c | M_other``. Acc_fg, IoU_fg and AP_fg count only pixels in R; NAR is
``sum(h[M_other]) / sum(h[R])``. All values are fractions in [0, 1]; reports print percentages.

Standard protocol (Table 3): Acc and mIoU over the whole image (foreground = the queried
class), intersections and unions accumulated over the dataset, AP per image averaged
(``BinaryAccumulator`` / ``binary_scores``).

Average precision is the step-wise definition of ``sklearn.metrics.average_precision_score``
(``sum_n (R_n - R_{n-1}) P_n`` over the distinct score thresholds, tied scores form one
threshold), computed here without scikit-learn.
"""

from __future__ import annotations

import functools
import math
import sys
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = [
    "BinaryAccumulator",
    "BinaryImageScores",
    "BinaryScores",
    "PairScores",
    "anchor_in_mask",
    "average_precision",
    "binary_image_scores",
    "binary_scores",
    "fg_scores",
    "leakage_shares",
    "normalize_heatmap",
    "resize_bilinear",
]

FG_METRICS = ("miou_fg", "iou_target", "acc_fg", "map_fg", "nar")
"""The per-pair fields of ``PairScores`` that reports average, in report order."""

APChannels = Literal["both", "foreground"]

_LOW_BYTE = 0 if sys.byteorder == "little" else 7
"""Offset of a uint64's lowest byte in memory."""


# --------------------------------------------------------------------------------------------
# Work buffers
# --------------------------------------------------------------------------------------------


class _Scratch(threading.local):
    """Per-thread work buffers that the per-pair metrics reuse from call to call.

    Scoring one 1024 x 1024 pair needs a few arrays of 1-8 MB. Allocated afresh on every call,
    each costs page faults (the C allocator hands blocks that large back to the system when
    they are freed): about a third of a pair's CPU time. A buffer of up to ``max_bytes`` is
    kept per name and grown on demand; a larger request gets a fresh array. Arrays handed out
    here are views of the kept buffers: they must never be returned to a caller.
    """

    max_bytes = 64 * 2**20

    def __init__(self) -> None:
        self._buffers: dict[str, np.ndarray] = {}

    def array(self, name: str, size: int, dtype: type | np.dtype) -> np.ndarray:
        """A 1-D work array of ``size`` elements of ``dtype`` (uninitialised)."""
        dtype = np.dtype(dtype)
        nbytes = size * dtype.itemsize
        if nbytes > self.max_bytes:
            return np.empty(size, dtype=dtype)
        buffer = self._buffers.get(name)
        if buffer is None or buffer.size < nbytes:
            buffer = self._buffers[name] = np.empty(nbytes, dtype=np.uint8)
        return buffer[:nbytes].view(dtype)

    def countdown(self, size: int) -> np.ndarray:
        """float64 ``[size, size - 1, ..., 1]``, read-only (a view of an array kept between calls)."""
        countdown = self._buffers.get("_countdown")
        if countdown is None or countdown.size < size:
            countdown = np.arange(size, 0, -1, dtype=np.float64)
            countdown.setflags(write=False)
            if countdown.nbytes <= self.max_bytes:
                self._buffers["_countdown"] = countdown
        return countdown[countdown.size - size :]


_SCRATCH = _Scratch()


# --------------------------------------------------------------------------------------------
# Heatmap preparation: resize, min-max, threshold
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _bilinear_weights(out_size: int, in_size: int) -> np.ndarray:
    """(out_size, in_size) float64 matrix of 1-D bilinear interpolation (align_corners=False)."""
    weights = np.zeros((out_size, in_size), dtype=np.float64)
    source = np.maximum((np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5, 0.0)
    low = np.minimum(np.floor(source).astype(np.int64), in_size - 1)
    high = np.minimum(low + 1, in_size - 1)
    frac = source - low
    rows = np.arange(out_size)
    np.add.at(weights, (rows, low), 1.0 - frac)
    np.add.at(weights, (rows, high), frac)
    weights.setflags(write=False)
    return weights


def _resize_into(image: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``resize_bilinear(image, out.shape)`` written into ``out``, a C-contiguous float64 array."""
    image = np.asarray(image, dtype=np.float64)
    height, width = out.shape
    if image.shape == out.shape:
        np.copyto(out, image)
        return out
    rows = _bilinear_weights(height, image.shape[0])
    cols = _bilinear_weights(width, image.shape[1])
    if height * image.shape[1] <= image.shape[0] * width:  # cheaper order of the two products
        return np.matmul(rows @ image, cols.T, out=out)
    return np.matmul(rows, image @ cols.T, out=out)


def resize_bilinear(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a (h, w) array to ``size = (H, W)`` bilinearly; returns (H, W) float64.

    Same values as ``torch.nn.functional.interpolate(x[None, None], size, mode="bilinear",
    align_corners=False)`` (no antialiasing, also when shrinking). Separable: ``Wy @ x @ Wx.T``.
    """
    image = np.asarray(image, dtype=np.float64)
    height, width = size
    if image.shape == (height, width):
        return image
    return _resize_into(image, np.empty((height, width), dtype=np.float64))


def _as_heatmap(heatmap: np.ndarray) -> np.ndarray:
    heatmap = np.asarray(heatmap)
    if heatmap.ndim != 2 or 0 in heatmap.shape:
        raise ValueError(f"a heatmap must be a non-empty 2-D (h, w) array, got shape {heatmap.shape}")
    if not np.issubdtype(heatmap.dtype, np.number) or np.issubdtype(heatmap.dtype, np.complexfloating):
        raise ValueError(f"a heatmap must hold real numbers, got dtype {heatmap.dtype}")
    if not np.isfinite(heatmap).all():
        raise ValueError("the heatmap contains NaN or infinite values")
    return heatmap


def _normalize_into(heatmap: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``normalize_heatmap(heatmap, out.shape)`` written into ``out`` (C-contiguous float64)."""
    _resize_into(_as_heatmap(heatmap), out)
    low, high = out.min(), out.max()
    if not high > low:
        out.fill(0.0)
        return out
    out -= low
    out /= high - low
    return out


def normalize_heatmap(heatmap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Steps 1-2 of every metric: bilinear resize to ``size = (H, W)``, then min-max to [0, 1].

    Returns (H, W) float64; all zeros when the resized heatmap is constant. Raises
    ValueError for a non-2-D heatmap or one with NaN / infinite values.
    """
    return _normalize_into(heatmap, np.empty(tuple(size), dtype=np.float64))


def _normalized_scratch(heatmap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``normalize_heatmap`` into the thread's work buffer (valid until the next call)."""
    height, width = size
    return _normalize_into(heatmap, _SCRATCH.array("heatmap", height * width, np.float64).reshape(size))


def predicted_mask(normalized: np.ndarray) -> np.ndarray:
    """Step 3: ``normalized > mean(normalized)`` over the whole image; (H, W) bool."""
    return normalized > normalized.mean()


# --------------------------------------------------------------------------------------------
# Average precision
# --------------------------------------------------------------------------------------------


def _average_precision_split(positives: np.ndarray, negatives: np.ndarray) -> float:
    """AP from the scores of the positive and of the negative samples (any real values, 1-D).

    For each distinct positive score v: recall step = (#positives == v) / P and precision =
    #(positives >= v) / #(all >= v), which is sklearn's step-wise sum with ties grouped
    (thresholds without a positive add no recall, so they drop out).
    """
    n_pos = positives.size
    if n_pos == 0:
        return 0.0  # sklearn: "No positive class found in y_true", recall set to 1, AP 0
    pos = np.sort(positives)
    neg = np.sort(negatives)
    starts = np.flatnonzero(np.concatenate(([True], pos[1:] != pos[:-1])))  # first index of each value
    values = pos[starts]
    counts = np.diff(np.append(starts, n_pos))
    pos_at_or_above = n_pos - starts
    neg_at_or_above = neg.size - np.searchsorted(neg, values, side="left")
    precision = pos_at_or_above / (pos_at_or_above + neg_at_or_above)
    return float(np.dot(counts, precision) / n_pos)


def _pack_into(scores: np.ndarray, labels: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Sort keys ``(score bits << 1) | label`` of float64 scores in [0, 1] into ``out`` (uint64).

    The bit pattern of a non-negative float64 orders like the float, and its top two bits
    are 0 below 2.0, so shifting left keeps the order and frees the lowest bit for the label
    (the shift also drops the sign bit, so -0.0 and 0.0 get one key). ``scores`` may be
    ``out`` viewed as float64 (packed in place). All three are 1-D of one length.
    """
    if scores.ctypes.data != out.ctypes.data:
        np.copyto(out.view(np.float64), scores)
    np.left_shift(out, np.uint64(1), out=out)
    np.bitwise_or(out, labels, out=out)
    return out


def _packed_keys(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """1-D uint64 sort keys ``(score bits << 1) | label`` (see ``_pack_into``), a new array."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    return _pack_into(scores, np.asarray(labels, dtype=bool).ravel(), np.empty(scores.size, np.uint64))


def _average_precision_runs(positive: np.ndarray, new_run: np.ndarray, n_pos: int) -> float:
    """AP in linear passes over every run of equal scores (the path for many tied scores).

    positive: (n,) uint8 labels and new_run: (n,) bool, True where a run of equal scores
    starts, both in ascending score order; n_pos: positives (> 0). A threshold is the first
    index of a run; the positives and samples at or above it give its precision, and the
    run's own positives its recall step.
    """
    n = positive.size
    count = np.int32 if n < 2**31 else np.int64
    through = np.cumsum(positive, dtype=count, out=_SCRATCH.array("through", n, count))  # positives <= i
    starts = np.flatnonzero(new_run)
    true_positives = np.take(through, starts)  # becomes the positives at or above each threshold
    true_positives -= positive[starts]
    np.subtract(n_pos, true_positives, out=true_positives)
    recall_steps = np.empty_like(true_positives)
    np.subtract(true_positives[:-1], true_positives[1:], out=recall_steps[:-1])
    recall_steps[-1] = true_positives[-1]
    np.subtract(n, starts, out=starts)
    return float(np.dot(recall_steps, true_positives / starts) / n_pos)


_TIED_FRACTION_FOR_RUNS = 1 / 8
"""Above this fraction of samples tied, ``_average_precision_runs`` beats looking up each one."""


def _average_precision_sorted(keys: np.ndarray) -> float:
    """AP from packed keys (``_pack_into``) sorted ascending; overwrites ``keys``.

    Sorted ascending, the samples scoring at or above a positive are those from the start s
    of its run of equal scores on, so with P positives, n samples and j0 the positives before
    s, sklearn's step-wise AP (tied scores form one threshold) is the mean over the positives
    of their threshold's precision:

        AP = 1/P * sum over positives of (P - j0) / (n - s).

    For a positive that does not share its score with its predecessor, s is its own index
    and j0 its rank j among the positives, both at hand; only tied samples (few for a
    continuous heatmap: mostly the clamped borders of an upsampled one) need their run's
    start looked up. When many are tied the run-by-run pass is used instead. Work arrays
    come from the thread's scratch.
    """
    n = keys.size
    if n == 0:
        return 0.0
    flags = _SCRATCH.array("flags", n, np.uint8)
    np.bitwise_and(keys.view(np.uint8)[_LOW_BYTE::8], 1, out=flags)  # the label bits
    positions = np.flatnonzero(flags.view(bool))  # ascending indices of the positives
    n_pos = positions.size
    if n_pos == 0:
        return 0.0  # sklearn: "No positive class found in y_true", recall set to 1, AP 0
    bits = np.right_shift(keys, np.uint64(1), out=keys)  # the scores' bits alone
    new_run = _SCRATCH.array("new_run", n, bool)
    new_run[0] = True
    np.not_equal(bits[1:], bits[:-1], out=new_run[1:])
    n_tied = n - int(np.count_nonzero(new_run))
    if n_tied > _TIED_FRACTION_FOR_RUNS * n:
        return _average_precision_runs(flags, new_run, n_pos)
    precision = np.subtract(n, positions, out=_SCRATCH.array("precision", n_pos, np.float64))  # n - s
    np.divide(_SCRATCH.countdown(n_pos), precision, out=precision)  # (P - j0) / (n - s), untied
    if n_tied:
        tied = np.flatnonzero(np.logical_not(new_run, out=_SCRATCH.array("tied", n, bool)))
        # a run of equal scores is a streak of consecutive tied indices and the one before it
        first = np.empty(n_tied, dtype=bool)
        first[0] = True
        np.not_equal(tied[1:], tied[:-1] + 1, out=first[1:])
        run_starts = np.maximum.accumulate(np.where(first, tied - 1, 0))
        positive = flags[tied].view(bool)
        tied, run_starts = tied[positive], run_starts[positive]
        if tied.size:
            rank = np.searchsorted(positions, tied)  # j of each tied positive
            before = np.searchsorted(positions, run_starts)  # j0: the positives before its run
            precision[rank] = (n_pos - before) / (n - run_starts)
    return float(precision.sum() / n_pos)


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Average precision of ``scores`` against binary ``labels`` (1-D, same length).

    Exactly ``sklearn.metrics.average_precision_score(labels, scores)``: the step-wise sum
    over distinct thresholds, tied scores form one step; 0.0 when there is no positive.
    """
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=np.float64)
    if labels.shape != scores.shape or labels.ndim != 1:
        raise ValueError(
            f"labels and scores must be 1-D of one length, got {labels.shape} and {scores.shape}"
        )
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or infinite values")
    labels = labels.astype(bool)
    if scores.size and scores.min() >= 0.0 and scores.max() <= 1.0:
        keys = _packed_keys(scores, labels)
        keys.sort()
        return _average_precision_sorted(keys)
    return _average_precision_split(scores[labels], scores[~labels])


# --------------------------------------------------------------------------------------------
# Multi-concept (MCC) metrics
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairScores:
    """Scores of one image-concept pair; fractions in [0, 1].

    ``miou_fg``: mean of the target IoU and the non-target IoU over R (a class whose union
    over R is empty is left out of the mean). ``iou_target``: IoU of the predicted mask with
    M_c over R. ``acc_fg``: pixel accuracy over R. ``map_fg``: average precision of the
    normalised heatmap against M_c over R. ``nar``: non-target activation ratio; NaN when
    ``degenerate``. ``degenerate``: the normalised heatmap sums to 0 over R (e.g. a
    constant heatmap), so NAR is undefined; the pair is kept for the other metrics and
    counted in reports.
    """

    miou_fg: float
    iou_target: float
    acc_fg: float
    map_fg: float
    nar: float
    degenerate: bool

    def as_dict(self) -> dict[str, float | bool]:
        return {name: getattr(self, name) for name in (*FG_METRICS, "degenerate")}


def _as_masks(masks: np.ndarray) -> np.ndarray:
    masks = np.asarray(masks)
    if masks.ndim != 3 or 0 in masks.shape:
        raise ValueError(f"masks must be a non-empty (K, H, W) array, got shape {masks.shape}")
    if masks.dtype != bool:
        if not (np.issubdtype(masks.dtype, np.integer) and masks.min() >= 0 and masks.max() <= 1):
            raise ValueError(f"masks must be bool (or 0/1 integers), got dtype {masks.dtype}")
        masks = masks.astype(bool)
    return masks


def _iou(intersection: int, union: int) -> float:
    return intersection / union if union else math.nan


def fg_scores(heatmap: np.ndarray, masks: np.ndarray, target: int) -> PairScores:
    """Score one method's heatmap for concept ``target`` of an image (method.md "Metrics").

    heatmap: (h, w) real array at any resolution (token grid or image size); resized
        bilinearly to (H, W), min-max normalised and thresholded at its mean over the whole
        image (module docstring).
    masks: (K, H, W) bool, one ground-truth mask per concept of the image, image pixels.
        Masks may overlap: pixels of M_c never count as non-target.
    target: index into ``masks`` of the queried concept.

    Raises ValueError on a bad shape, NaN / infinite heatmap values, or an empty target mask
    (such a pair cannot be scored). Thread-safe (work buffers are per thread).
    """
    masks = _as_masks(masks)
    if not (isinstance(target, int | np.integer) and 0 <= target < masks.shape[0]):
        raise ValueError(f"target must be an index in [0, {masks.shape[0]}), got {target!r}")
    target_mask = masks[target]
    if not target_mask.any():
        raise ValueError(f"the target mask (index {target}) is empty: the pair cannot be scored")
    shape, size = target_mask.shape, target_mask.size
    other = np.zeros_like(target_mask)
    for index in range(masks.shape[0]):
        if index != target:
            other |= masks[index]
    other &= ~target_mask

    h = _normalized_scratch(heatmap, shape)
    pred = np.greater(h, h.mean(), out=_SCRATCH.array("pred", size, bool).reshape(shape))
    both = _SCRATCH.array("both", size, bool).reshape(shape)

    n_target = int(np.count_nonzero(target_mask))
    n_other = int(np.count_nonzero(other))
    tp = int(np.count_nonzero(np.logical_and(pred, target_mask, out=both)))
    fp = int(np.count_nonzero(np.logical_and(pred, other, out=both)))
    fn = n_target - tp
    tn = n_other - fp
    iou_target = _iou(tp, tp + fp + fn)
    iou_other = _iou(tn, tn + fn + fp)
    defined = [value for value in (iou_target, iou_other) if not math.isnan(value)]
    miou = sum(defined) / len(defined)

    target_sum = float(np.sum(h, where=target_mask))
    other_sum = float(np.sum(h, where=other))
    total = target_sum + other_sum
    degenerate = not total > 0.0

    # AP over R = M_c | M_other: sort keys packing each pixel's score with its label
    n_region = n_target + n_other
    if n_region == size:  # R is the whole image: pack h in place (h is not used after this)
        keys = _pack_into(h.reshape(-1), target_mask.reshape(-1), h.reshape(-1).view(np.uint64))
    else:
        region = np.logical_or(target_mask, other, out=both)
        scores = h[region]  # boolean indexing: faster than np.compress into a buffer
        keys = _pack_into(scores, target_mask[region], scores.view(np.uint64))
    keys.sort()
    return PairScores(
        miou_fg=miou,
        iou_target=iou_target,
        acc_fg=(tp + tn) / (n_target + n_other),
        map_fg=_average_precision_sorted(keys),
        nar=math.nan if degenerate else other_sum / total,
        degenerate=degenerate,
    )


def leakage_shares(heatmap: np.ndarray, masks: np.ndarray, target: int) -> list[float]:
    """Where the target's heatmap mass falls, concept by concept (NAR split by distractor).

    heatmap, masks, target: as ``fg_scores``. With h the normalised heatmap and
    R = M_c | M_other, entry ``target`` is ``sum(h[M_c]) / sum(h[R])`` and entry j != target
    is ``sum(h[M_j minus M_c]) / sum(h[R])``: the share of the mass on distractor j. With
    disjoint masks the entries sum to 1 and the distractor entries sum to NAR (overlapping
    distractors count their common pixels once for each). All NaN when degenerate.
    """
    masks = _as_masks(masks)
    target_mask = masks[target]
    h = _normalized_scratch(heatmap, target_mask.shape)
    region = target_mask.copy()
    for mask in masks:
        region |= mask
    total = float(np.sum(h, where=region))
    if not total > 0.0:
        return [math.nan] * masks.shape[0]
    shares = []
    for index, mask in enumerate(masks):
        where = mask if index == target else np.logical_and(mask, ~target_mask)
        shares.append(float(np.sum(h, where=where)) / total)
    return shares


def anchor_in_mask(anchor: tuple[int, int], grid: tuple[int, int], mask: np.ndarray) -> bool:
    """Whether a token-grid anchor falls inside a mask (Table 2's anchor accuracy).

    anchor: (row, col) on a (gh, gw) token grid, row-major; mask: (H, W) bool in image
    pixels. The anchor's token covers pixels [row * H / gh, (row + 1) * H / gh); its centre
    pixel ``floor((row + 0.5) * H / gh)`` (same for columns) is tested.
    """
    row, col = int(anchor[0]), int(anchor[1])
    grid_h, grid_w = int(grid[0]), int(grid[1])
    if not (0 <= row < grid_h and 0 <= col < grid_w):
        raise ValueError(f"anchor {(row, col)} is outside the {grid_h}x{grid_w} token grid")
    height, width = mask.shape
    y = min(int((row + 0.5) * height / grid_h), height - 1)
    x = min(int((col + 0.5) * width / grid_w), width - 1)
    return bool(mask[y, x])


# --------------------------------------------------------------------------------------------
# Standard single-concept protocol (ImageNet-Segmentation, PascalVOC single-class)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BinaryImageScores:
    """One image under the standard protocol: counts to accumulate and its own scores.

    ``correct`` / ``labeled``: correctly predicted / scored pixels (ignored pixels excluded).
    ``inter`` / ``union``: per class (background, foreground) pixel counts.
    ``ap``: the image's average precision (see ``ap_channels`` of ``binary_image_scores``).
    ``constant_ap``: for a constant heatmap only, the AP of Chefer et al.'s evaluation code,
        where min-max gives NaN, set to 0 in both channels, so every score ties (the positive
        rate: 0.5 with both channels). None for any other heatmap.
    """

    correct: int
    labeled: int
    inter: tuple[int, int]
    union: tuple[int, int]
    ap: float
    constant_ap: float | None = None

    @property
    def acc(self) -> float:
        return self.correct / self.labeled if self.labeled else math.nan

    def as_dict(self) -> dict[str, object]:
        return {
            "correct": self.correct,
            "labeled": self.labeled,
            "inter": list(self.inter),
            "union": list(self.union),
            "ap": self.ap,
            "constant_ap": self.constant_ap,
        }

    def reported_ap(self, conceptattention_compat: bool = False) -> float:
        """The AP that enters mAP: ``constant_ap`` for a constant heatmap under the
        compatibility option (Chefer's NaN -> 0), ``ap`` otherwise."""
        if conceptattention_compat and self.constant_ap is not None:
            return self.constant_ap
        return self.ap

    @classmethod
    def from_dict(cls, data: dict) -> BinaryImageScores:
        return cls(
            correct=int(data["correct"]),
            labeled=int(data["labeled"]),
            inter=(int(data["inter"][0]), int(data["inter"][1])),
            union=(int(data["union"][0]), int(data["union"][1])),
            ap=float(data["ap"]),
            constant_ap=None if data.get("constant_ap") is None else float(data["constant_ap"]),
        )


def binary_image_scores(
    heatmap: np.ndarray,
    mask: np.ndarray,
    *,
    ignore: np.ndarray | None = None,
    ap_channels: APChannels = "both",
) -> BinaryImageScores:
    """Score one image of a single-concept benchmark.

    heatmap: (h, w) real array, any resolution (resized, normalised and thresholded like
        every metric here). mask: (H, W) bool foreground of the queried class.
    ignore: optional (H, W) bool of pixels left out of every count (VOC's label 255).
    ap_channels: ``"both"`` (default, the standard protocol of Chefer et al. that Table 3's
        published rows use): AP over the background channel (1 - h against background
        labels) and the foreground channel (h against foreground labels) pooled together;
        ``"foreground"``: AP of h against the foreground labels only.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"a single-concept mask must be (H, W), got shape {mask.shape}")
    mask = mask.astype(bool, copy=False)
    if ignore is not None:
        ignore = np.asarray(ignore, dtype=bool)
        if ignore.shape != mask.shape:
            raise ValueError(f"ignore is {ignore.shape}, the mask is {mask.shape}")
    if ap_channels not in ("both", "foreground"):
        raise ValueError(f"ap_channels must be 'both' or 'foreground', got {ap_channels!r}")
    h = _normalized_scratch(heatmap, mask.shape)
    constant = not h.any()  # min-max of a constant heatmap gives zeros (NaN in Chefer's code)
    pred = np.greater(h, h.mean(), out=_SCRATCH.array("pred", mask.size, bool).reshape(mask.shape))
    if ignore is not None:
        keep = ~ignore
        h, pred, mask = h[keep], pred[keep], mask[keep]
    h, pred, mask = h.reshape(-1), pred.reshape(-1), mask.reshape(-1)
    labeled = int(mask.size)
    tp = int(np.count_nonzero(np.logical_and(pred, mask, out=_SCRATCH.array("both", labeled, bool))))
    n_fg = int(np.count_nonzero(mask))
    n_pred = int(np.count_nonzero(pred))
    fp, fn = n_pred - tp, n_fg - tp
    tn = labeled - tp - fp - fn
    # foreground channel: h against the foreground labels; with "both", pooled with the
    # background channel: 1 - h against the background labels
    keys = _SCRATCH.array("keys", 2 * labeled if ap_channels == "both" else labeled, np.uint64)
    _pack_into(h, mask, keys[:labeled])
    if ap_channels == "both":
        background = keys[labeled:]
        np.subtract(1.0, h, out=background.view(np.float64))
        _pack_into(background.view(np.float64), np.logical_not(mask, out=pred), background)
    keys.sort()
    ap = _average_precision_sorted(keys)
    constant_ap = None
    if constant and labeled:  # every score ties at 0: AP = positives / entries
        constant_ap = 0.5 if ap_channels == "both" else n_fg / labeled
    return BinaryImageScores(
        correct=tp + tn,
        labeled=labeled,
        inter=(tn, tp),
        union=(tn + fp + fn, tp + fp + fn),
        ap=ap,
        constant_ap=constant_ap,
    )


@dataclass(frozen=True)
class BinaryScores:
    """Dataset-level scores of the standard protocol; fractions in [0, 1].

    ``acc``: accumulated pixel accuracy. ``miou``: mean of the background and foreground IoU,
    each from intersections and unions accumulated over the dataset; with
    ``conceptattention_compat`` it is instead ``acc / (2 - acc)``, what ConceptAttention's
    published script computes (it skips an argmax). ``map``: mean of the per-image AP (with
    ``conceptattention_compat``, a constant heatmap's AP is Chefer's ``constant_ap``).
    """

    acc: float
    miou: float
    map: float
    iou_foreground: float
    iou_background: float
    images: int
    conceptattention_compat: bool

    def as_dict(self) -> dict[str, float | int | bool]:
        return dict(self.__dict__)


class BinaryAccumulator:
    """Accumulates the standard protocol over a dataset, one image at a time.

    >>> acc = BinaryAccumulator()
    >>> for heatmap, mask in pairs:        # doctest: +SKIP
    ...     acc.add(heatmap, mask)
    >>> acc.result().miou                  # doctest: +SKIP
    """

    def __init__(self, *, conceptattention_compat: bool = False, ap_channels: APChannels = "both"):
        self.conceptattention_compat = conceptattention_compat
        self.ap_channels = ap_channels
        self._correct = 0
        self._labeled = 0
        self._inter = np.zeros(2, dtype=np.int64)
        self._union = np.zeros(2, dtype=np.int64)
        self._aps: list[float] = []

    def add(
        self, heatmap: np.ndarray, mask: np.ndarray, ignore: np.ndarray | None = None
    ) -> BinaryImageScores:
        """Score one image (``binary_image_scores``), add it, and return its scores."""
        scores = binary_image_scores(heatmap, mask, ignore=ignore, ap_channels=self.ap_channels)
        self.add_scores(scores)
        return scores

    def add_scores(self, scores: BinaryImageScores) -> None:
        """Add an image scored earlier (e.g. read back from a results file)."""
        self._correct += scores.correct
        self._labeled += scores.labeled
        self._inter += scores.inter
        self._union += scores.union
        self._aps.append(scores.reported_ap(self.conceptattention_compat))

    def result(self) -> BinaryScores:
        acc = self._correct / self._labeled if self._labeled else math.nan
        ious = [
            i / u if u else math.nan for i, u in zip(self._inter.tolist(), self._union.tolist(), strict=True)
        ]
        if self.conceptattention_compat:
            miou = acc / (2.0 - acc)
        else:
            defined = [value for value in ious if not math.isnan(value)]
            miou = sum(defined) / len(defined) if defined else math.nan
        return BinaryScores(
            acc=acc,
            miou=miou,
            map=float(np.mean(self._aps)) if self._aps else math.nan,
            iou_foreground=ious[1],
            iou_background=ious[0],
            images=len(self._aps),
            conceptattention_compat=self.conceptattention_compat,
        )


def binary_scores(
    pairs: Iterable[tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, np.ndarray | None]],
    *,
    conceptattention_compat: bool = False,
    ap_channels: APChannels = "both",
) -> BinaryScores:
    """The standard protocol over ``(heatmap, mask)`` or ``(heatmap, mask, ignore)`` tuples.

    heatmap (h, w) real, mask (H, W) bool foreground, ignore (H, W) bool or None. See
    ``BinaryScores`` for what each figure is and ``binary_image_scores`` for ``ap_channels``.
    ``conceptattention_compat=True`` reproduces ConceptAttention's "mIoU" = Acc / (2 - Acc);
    it is off by default and never the paper's definition.
    """
    accumulator = BinaryAccumulator(conceptattention_compat=conceptattention_compat, ap_channels=ap_channels)
    for item in pairs:
        accumulator.add(*item)
    return accumulator.result()
