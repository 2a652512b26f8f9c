"""The metrics against hand-computed values, scikit-learn and torch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from metrics_cases import halves_masks
from sklearn.metrics import average_precision_score

from benchmark.metrics import (
    BinaryAccumulator,
    PairScores,
    anchor_in_mask,
    average_precision,
    binary_image_scores,
    binary_scores,
    fg_scores,
    normalize_heatmap,
    resize_bilinear,
)


def two_concept_masks() -> np.ndarray:
    """4x4: M_0 = rows 0-1, cols 0-1; M_1 = rows 0-1, cols 1-3 (overlaps M_0 in column 1)."""
    masks = np.zeros((2, 4, 4), dtype=bool)
    masks[0, 0:2, 0:2] = True
    masks[1, 0:2, 1:4] = True
    return masks


def test_fg_scores_hand_computed_with_overlapping_masks():
    heatmap = np.zeros((4, 4))
    heatmap[0] = [1.0, 0.8, 0.6, 0.0]
    heatmap[1] = [0.9, 0.2, 0.7, 0.1]
    scores = fg_scores(heatmap, two_concept_masks(), 0)
    # mean 4.3 / 16; predicted over R: target T T T F (tp 3, fn 1), other T F T F (fp 2, tn 2);
    # M_other = columns 2-3 only: the overlap (column 1) belongs to the target
    assert scores.acc_fg == pytest.approx(5 / 8)
    assert scores.iou_target == pytest.approx(3 / 6)
    assert scores.miou_fg == pytest.approx((3 / 6 + 2 / 5) / 2)
    assert scores.nar == pytest.approx(1.4 / 4.3)
    # ranking 1 P, .9 P, .8 P, .7 N, .6 N, .2 P, .1 N, 0 N
    assert scores.map_fg == pytest.approx((1 + 1 + 1 + 4 / 6) / 4)
    assert scores.degenerate is False


def test_overlap_pixels_never_count_as_non_target():
    masks = two_concept_masks()
    heatmap = np.zeros((4, 4))
    heatmap[0:2, 1] = 1.0  # all of the heat on the overlap column
    scores = fg_scores(heatmap, masks, 0)
    assert scores.nar == 0.0
    # with concept 1 as target, M_other = M_0 minus M_1 = column 0; column 1 is its own mask
    assert fg_scores(heatmap, masks, 1).nar == 0.0
    heatmap[0:2, 0] = 1.0  # heat on column 0 too: non-target for concept 1 only
    assert fg_scores(heatmap, masks, 0).nar == 0.0
    assert fg_scores(heatmap, masks, 1).nar == pytest.approx(0.5)


def test_lower_resolution_heatmap_is_resized_bilinearly():
    heatmap = np.array([[0.0, 1.0], [0.0, 1.0]])
    # half-pixel bilinear 2 -> 4: every row becomes [0, .25, .75, 1]
    assert np.allclose(normalize_heatmap(heatmap, (4, 4)), [[0, 0.25, 0.75, 1.0]] * 4)
    scores = fg_scores(heatmap, halves_masks(), 0)
    assert scores.acc_fg == 1.0 and scores.miou_fg == 1.0 and scores.map_fg == 1.0
    assert scores.nar == pytest.approx(1.0 / 8.0)  # (0 + .25) * 4 / ((0 + .25 + .75 + 1) * 4)


@pytest.mark.parametrize("value", [0.0, 7.5, -3.0])
def test_constant_heatmap_is_degenerate(value):
    scores = fg_scores(np.full((4, 4), value), halves_masks(), 0)
    assert scores.degenerate is True and math.isnan(scores.nar)
    # nothing predicted: target IoU 0, non-target IoU 8 / 16, AP = positive fraction (one tie)
    assert scores.iou_target == 0.0
    assert scores.miou_fg == pytest.approx(0.25)
    assert scores.acc_fg == pytest.approx(0.5)
    assert scores.map_fg == pytest.approx(0.5)


def test_heat_only_outside_the_region_is_degenerate():
    masks = two_concept_masks()  # R = rows 0-1
    heatmap = np.zeros((4, 4))
    heatmap[3, 3] = 1.0
    scores = fg_scores(heatmap, masks, 0)
    assert scores.degenerate and math.isnan(scores.nar)


def test_pair_scores_is_frozen_and_fractional():
    scores = fg_scores(np.random.default_rng(0).random((8, 8)), two_concept_masks(), 1)
    assert isinstance(scores, PairScores)
    with pytest.raises(AttributeError):
        scores.nar = 0.0  # type: ignore[misc]
    for name in ("miou_fg", "iou_target", "acc_fg", "map_fg", "nar"):
        assert 0.0 <= getattr(scores, name) <= 1.0


@pytest.mark.parametrize(
    ("heatmap", "masks", "target", "message"),
    [
        (np.full((4, 4), np.nan), two_concept_masks(), 0, "NaN"),
        (np.zeros((2, 4, 4)), two_concept_masks(), 0, "2-D"),
        (np.zeros((4, 4)), two_concept_masks()[0], 0, r"\(K, H, W\)"),
        (np.zeros((4, 4)), two_concept_masks(), 2, "target"),
        (np.zeros((4, 4)), np.zeros((2, 4, 4), bool), 0, "empty"),
    ],
)
def test_bad_inputs_are_rejected_with_a_reason(heatmap, masks, target, message):
    with pytest.raises(ValueError, match=message):
        fg_scores(heatmap, masks, target)


@pytest.mark.parametrize(
    ("shape", "size"), [((7, 5), (33, 12)), ((64, 64), (100, 80)), ((40, 30), (9, 13)), ((3, 3), (3, 3))]
)
def test_resize_matches_torch_bilinear_half_pixel(shape, size):
    x = np.random.default_rng(1).random(shape)
    expected = torch.nn.functional.interpolate(
        torch.tensor(x)[None, None], size=size, mode="bilinear", align_corners=False
    )[0, 0].numpy()
    assert np.allclose(resize_bilinear(x, size), expected, atol=1e-12)


def test_average_precision_equals_sklearn_on_random_cases():
    rng = np.random.default_rng(2)
    for case in range(400):
        n = int(rng.integers(1, 300))
        labels = rng.random(n) < rng.uniform(0.05, 0.95)
        if not labels.any():
            labels[int(rng.integers(n))] = True
        scores = rng.random(n)
        if case % 2:  # many ties
            scores = np.round(scores, int(rng.integers(0, 3)))
        assert average_precision(labels, scores) == pytest.approx(
            average_precision_score(labels, scores), abs=1e-12
        )


def test_average_precision_edge_cases_match_sklearn():
    assert average_precision(np.ones(5, bool), np.arange(5.0)) == 1.0
    assert average_precision(np.array([0, 1, 0, 1]), np.zeros(4)) == pytest.approx(0.5)
    with pytest.warns(UserWarning):
        expected = average_precision_score([0, 0, 0], [0.1, 0.2, 0.3])
    assert average_precision(np.zeros(3, bool), np.array([0.1, 0.2, 0.3])) == expected == 0.0


@pytest.mark.parametrize(
    "transform",
    [lambda x: np.exp(3 * x), lambda x: x**3 + 2, lambda x: np.arctan(10 * x - 5), lambda x: 5 * x - 7],
)
def test_map_fg_is_unchanged_by_strictly_increasing_transforms(transform):
    rng = np.random.default_rng(3)
    masks = np.zeros((3, 32, 32), dtype=bool)
    masks[0, 2:18, 2:20] = True
    masks[1, 10:30, 12:30] = True
    masks[2, 20:31, 0:10] = True
    for _ in range(10):
        heatmap = rng.random((32, 32))  # at mask resolution: the ranking is all AP sees
        for target in range(3):
            base = fg_scores(heatmap, masks, target).map_fg
            assert fg_scores(transform(heatmap), masks, target).map_fg == pytest.approx(base, abs=1e-12)


def test_nar_is_unchanged_by_scaling_a_non_negative_heatmap():
    rng = np.random.default_rng(4)
    masks = np.zeros((2, 40, 40), dtype=bool)
    masks[0, 5:25, 5:25] = True
    masks[1, 15:35, 15:38] = True
    for _ in range(10):
        heatmap = rng.random((10, 10)) ** 2
        base = fg_scores(heatmap, masks, 0).nar
        for scale in (1e-3, 7.0, 1e4):
            assert fg_scores(scale * heatmap, masks, 0).nar == pytest.approx(base, rel=1e-12)


def test_anchor_in_mask_uses_the_token_centre():
    mask = np.zeros((64, 64), dtype=bool)
    mask[:32, 32:] = True  # top-right quadrant
    assert anchor_in_mask((0, 3), (4, 4), mask)  # token centre (8, 56)
    assert not anchor_in_mask((3, 3), (4, 4), mask)
    with pytest.raises(ValueError, match="outside"):
        anchor_in_mask((4, 0), (4, 4), mask)


def test_binary_image_scores_hand_computed_with_ignored_pixels():
    heatmap = np.array([[0.0, 1.0], [0.0, 1.0]])  # -> rows [0, .25, .75, 1]; predicted = columns 2-3
    mask = np.zeros((4, 4), dtype=bool)
    mask[:, 1:] = True
    ignore = np.zeros((4, 4), dtype=bool)
    ignore[3] = True  # VOC's 255 border: left out of every count
    scores = binary_image_scores(heatmap, mask, ignore=ignore)
    # 12 scored pixels: fg columns 1-3 (9), predicted columns 2-3 (6): tp 6, fn 3, tn 3, fp 0
    assert (scores.correct, scores.labeled) == (9, 12)
    assert scores.inter == (3, 6) and scores.union == (6, 9)
    # both channels pooled: 1 (6 P), .75 (3 P, 3 N), .25 (3 P, 3 N), 0 (6 N)
    assert scores.ap == pytest.approx((6 * 1 + 3 * 9 / 12 + 3 * 12 / 18) / 12)
    assert binary_image_scores(heatmap, mask, ignore=ignore, ap_channels="foreground").ap == 1.0
    h = normalize_heatmap(heatmap, (4, 4))[:3].ravel()
    fg = mask[:3].ravel()
    pooled = average_precision_score(np.concatenate([fg, ~fg]), np.concatenate([h, 1 - h]))
    assert scores.ap == pytest.approx(pooled)


def test_binary_scores_accumulate_over_the_dataset():
    big = np.zeros((10, 10), dtype=bool)
    big[:, :5] = True
    small = np.zeros((2, 2), dtype=bool)
    small[0, 0] = True
    heat_big = big.astype(float)  # perfect
    heat_small = np.array([[0.0, 1.0], [0.0, 0.0]])  # wrong pixel
    result = binary_scores([(heat_big, big), (heat_small, small)])
    # pixels: 100 correct + 2 of 4 correct
    assert result.acc == pytest.approx(102 / 104)
    # fg: inter 50 + 0, union 50 + 2; bg: inter 50 + 2, union 50 + 4
    assert result.iou_foreground == pytest.approx(50 / 52)
    assert result.iou_background == pytest.approx(52 / 54)
    assert result.miou == pytest.approx((50 / 52 + 52 / 54) / 2)
    assert result.images == 2 and not result.conceptattention_compat
    compat = binary_scores([(heat_big, big), (heat_small, small)], conceptattention_compat=True)
    assert compat.miou == pytest.approx(compat.acc / (2 - compat.acc))
    assert compat.miou != pytest.approx(result.miou)
    assert compat.acc == result.acc and compat.map == result.map


def test_accumulator_adds_scores_read_back():
    accumulator = BinaryAccumulator()
    image = accumulator.add(np.eye(4), np.eye(4, dtype=bool))
    again = BinaryAccumulator()
    again.add_scores(type(image).from_dict(image.as_dict()))
    assert again.result() == accumulator.result()
