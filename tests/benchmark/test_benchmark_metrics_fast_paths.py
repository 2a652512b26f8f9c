"""The fast paths of the metrics (tie look-ups, work buffers) against plain references."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from metrics_cases import count_calls
from sklearn.metrics import average_precision_score

from benchmark import metrics
from benchmark.metrics import (
    average_precision,
    binary_image_scores,
    fg_scores,
    normalize_heatmap,
    resize_bilinear,
)


def scores_with_ties(rng: np.random.Generator, n: int, tied_fraction: float) -> np.ndarray:
    """n scores in [0, 1]: continuous, then a fraction of them overwritten by copies of others."""
    scores = rng.random(n)
    copies = int(tied_fraction * n)
    if copies:
        scores[rng.choice(n, copies, replace=False)] = scores[rng.integers(0, n, copies)]
    return scores


@pytest.mark.parametrize("path", ["look-ups", "runs"])
def test_both_ap_paths_equal_sklearn_at_every_tie_fraction(monkeypatch, path):
    # force one path: look-ups up to any tie fraction, or the run-by-run pass always
    monkeypatch.setattr(metrics, "_TIED_FRACTION_FOR_RUNS", 2.0 if path == "look-ups" else -1.0)
    runs = count_calls(monkeypatch, "_average_precision_runs")
    rng = np.random.default_rng(10)
    cases = 0
    for n in (1, 2, 7, 60, 600, 5000):
        for tied_fraction in (0.0, 0.01, 0.05, 0.3, 0.9):
            for positive_rate in (0.02, 0.5, 0.97):
                scores = scores_with_ties(rng, n, tied_fraction)
                labels = rng.random(n) < positive_rate
                if not labels.any():
                    labels[int(rng.integers(n))] = True
                assert average_precision(labels, scores) == pytest.approx(
                    average_precision_score(labels, scores), abs=1e-12
                )
                cases += 1
    assert cases == 90
    assert (len(runs) > 50) if path == "runs" else (len(runs) == 0)


def test_ap_ties_at_the_ends_and_whole_runs():
    # the lowest score tied and positive (a run starting at index 0), the highest tied, all tied
    scores = np.array([0.0, 0.0, 0.0, 0.3, 0.5, 0.5, 1.0, 1.0])
    for labels in (
        [1, 0, 1, 0, 1, 0, 1, 1],
        [1, 1, 1, 0, 0, 0, 0, 1],
        [0, 0, 0, 0, 0, 0, 1, 0],
        [1, 1, 1, 1, 1, 1, 1, 1],
    ):
        labels = np.array(labels, dtype=bool)
        assert average_precision(labels, scores) == pytest.approx(
            average_precision_score(labels, scores), abs=1e-12
        )
    assert average_precision(np.array([1, 0, 0, 1], bool), np.full(4, 0.25)) == pytest.approx(0.5)
    # -0.0 and 0.0 are one score (one threshold)
    labels = np.array([1, 0, 1, 0], bool)
    signed = np.array([-0.0, 0.0, 0.5, 0.0])
    assert average_precision(labels, signed) == pytest.approx(
        average_precision_score(labels, np.abs(signed)), abs=1e-12
    )


def reference_fg(heatmap: np.ndarray, masks: np.ndarray, target: int) -> dict[str, float]:
    """method.md's fg metrics written plainly, AP by scikit-learn."""
    h = normalize_heatmap(heatmap, masks.shape[1:])
    pred = h > h.mean()
    m_c = masks[target]
    m_other = np.any(np.delete(masks, target, axis=0), axis=0) & ~m_c
    region = m_c | m_other
    tp, fp = np.sum(pred & m_c), np.sum(pred & m_other)
    fn, tn = np.sum(m_c) - tp, np.sum(m_other) - fp
    ious = [i / u for i, u in ((tp, tp + fp + fn), (tn, tn + fn + fp)) if u]
    total = h[region].sum()
    return {
        "acc_fg": (tp + tn) / region.sum(),
        "miou_fg": sum(ious) / len(ious),
        "map_fg": average_precision_score(m_c[region], h[region]),
        "nar": h[m_other].sum() / total if total > 0 else math.nan,
    }


def random_masks(rng: np.random.Generator, shape: tuple[int, int], k: int, whole: bool) -> np.ndarray:
    """k overlapping random rectangles, or (``whole``) vertical bands covering the image."""
    height, width = shape
    masks = np.zeros((k, height, width), dtype=bool)
    if whole:
        edges = np.linspace(0, width, k + 1).astype(int)
        for index in range(k):
            masks[index, :, edges[index] : edges[index + 1]] = True
        return masks
    for index in range(k):
        top, left = rng.integers(0, height // 2), rng.integers(0, width // 2)
        bottom, right = top + rng.integers(4, height // 2 + 4), left + rng.integers(4, width // 2 + 4)
        masks[index, top:bottom, left:right] = True
    return masks


def test_fg_scores_on_upsampled_heatmaps_equal_the_plain_definition():
    # upsampling clamps the borders (runs of tied scores): the look-up path's ties
    rng = np.random.default_rng(11)
    for case in range(24):
        shape = (int(rng.integers(40, 120)), int(rng.integers(40, 120)))
        grid = (int(rng.integers(2, 17)), int(rng.integers(2, 17)))
        k = int(rng.integers(2, 4))
        masks = random_masks(rng, shape, k, whole=case % 2 == 0)
        heatmap = rng.random(grid).astype(np.float32 if case % 3 else np.float64)
        if case % 5 == 4:
            heatmap = np.round(heatmap, 1)  # many ties: the run-by-run path
        for target in range(k):
            got = fg_scores(heatmap, masks, target)
            expected = reference_fg(heatmap, masks, target)
            for name, value in expected.items():
                assert getattr(got, name) == pytest.approx(value, abs=1e-12, nan_ok=True), (case, name)


def test_work_buffers_never_leak_into_results():
    rng = np.random.default_rng(12)
    masks = random_masks(rng, (64, 80), 3, whole=False)
    whole = random_masks(rng, (64, 80), 2, whole=True)
    first, second = rng.random((8, 10)), rng.random((16, 16))
    normalized = normalize_heatmap(first, (64, 80))
    kept = normalized.copy()
    resized = resize_bilinear(second, (64, 80))
    kept_resized = resized.copy()
    before = fg_scores(first, masks, 1)
    for heatmap in (second, rng.random((64, 80))):  # other calls reuse the buffers
        fg_scores(heatmap, masks, 0)
        fg_scores(heatmap, whole, 1)
        binary_image_scores(heatmap, masks[0])
    assert np.array_equal(normalized, kept) and np.array_equal(resized, kept_resized)
    assert fg_scores(first, masks, 1) == before
    # a heatmap at the mask size is not modified either
    full = rng.random((64, 80))
    full_kept = full.copy()
    fg_scores(full, whole, 0)
    assert np.array_equal(full, full_kept)


def test_requests_over_the_buffer_limit_get_fresh_arrays(monkeypatch):
    rng = np.random.default_rng(13)
    masks = random_masks(rng, (48, 48), 2, whole=False)
    heatmap = rng.random((6, 6))
    mask = masks[0]
    ignore = rng.random((48, 48)) < 0.1
    kept = (fg_scores(heatmap, masks, 0), binary_image_scores(heatmap, mask, ignore=ignore))
    monkeypatch.setattr(metrics._Scratch, "max_bytes", 0)
    metrics._SCRATCH._buffers.clear()
    assert (fg_scores(heatmap, masks, 0), binary_image_scores(heatmap, mask, ignore=ignore)) == kept
    assert not metrics._SCRATCH._buffers  # nothing was kept


def test_threads_get_their_own_buffers():
    rng = np.random.default_rng(14)
    masks = random_masks(rng, (96, 96), 3, whole=False)
    heatmaps = [rng.random((12, 12)) for _ in range(12)]
    serial = [fg_scores(h, masks, index % 3) for index, h in enumerate(heatmaps)]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(3):
            threaded = list(
                pool.map(lambda item: fg_scores(item[1], masks, item[0] % 3), enumerate(heatmaps))
            )
            assert threaded == serial


@pytest.mark.parametrize("ap_channels", ["both", "foreground"])
def test_binary_image_scores_equal_the_plain_definition(ap_channels):
    rng = np.random.default_rng(15)
    for case in range(20):
        shape = (int(rng.integers(20, 70)), int(rng.integers(20, 70)))
        mask = random_masks(rng, shape, 1, whole=False)[0]
        ignore = rng.random(shape) < 0.1 if case % 2 else None
        heatmap = rng.random((int(rng.integers(2, 12)), int(rng.integers(2, 12))))
        got = binary_image_scores(heatmap, mask, ignore=ignore, ap_channels=ap_channels)
        h = normalize_heatmap(heatmap, shape)
        pred = h > h.mean()
        keep = np.ones(shape, bool) if ignore is None else ~ignore
        h, pred, fg = h[keep], pred[keep], mask[keep]
        assert got.correct == int(np.sum(pred == fg)) and got.labeled == int(keep.sum())
        assert got.inter == (int(np.sum(~pred & ~fg)), int(np.sum(pred & fg)))
        if ap_channels == "both":
            expected = average_precision_score(np.concatenate([fg, ~fg]), np.concatenate([h, 1 - h]))
        else:
            expected = average_precision_score(fg, h)
        assert got.ap == pytest.approx(expected, abs=1e-12)
