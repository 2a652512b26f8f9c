"""Edge cases of ``benchmark.metrics`` that the mutation pass found unpinned.

Each test names what it pins. References are independent: scikit-learn's
``average_precision_score``, torch's bilinear ``interpolate`` and plain numpy written here.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from metrics_cases import count_calls, halves_masks
from sklearn.metrics import average_precision_score

from benchmark import metrics
from benchmark.metrics import (
    FG_METRICS,
    BinaryAccumulator,
    BinaryImageScores,
    anchor_in_mask,
    average_precision,
    binary_image_scores,
    binary_scores,
    fg_scores,
    normalize_heatmap,
    predicted_mask,
    resize_bilinear,
)

# --------------------------------------------------------------------------------------------
# References
# --------------------------------------------------------------------------------------------


def torch_resize(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """torch's half-pixel bilinear resize (align_corners=False, no antialias) in float64."""
    tensor = torch.tensor(np.asarray(x, dtype=np.float64))[None, None]
    return torch.nn.functional.interpolate(tensor, size=size, mode="bilinear", align_corners=False)[
        0, 0
    ].numpy()


def reference_fg(heatmap: np.ndarray, masks: np.ndarray, target: int) -> dict[str, float]:
    """method.md's fg metrics written plainly: min-max, mean threshold, sklearn AP.

    The resize is ``resize_bilinear`` (checked against torch in this file): torch's rounding differs
    in the last bit, which can split or join tied scores and so move AP.
    """
    masks = np.asarray(masks).astype(bool)
    r = resize_bilinear(heatmap, masks.shape[1:])
    h = (r - r.min()) / (r.max() - r.min()) if r.max() > r.min() else np.zeros_like(r)
    pred = h > h.mean()
    m_c = masks[target]
    m_other = np.any(np.delete(masks, target, axis=0), axis=0) & ~m_c
    region = m_c | m_other
    tp, fp = np.sum(pred & m_c), np.sum(pred & m_other)
    fn, tn = np.sum(m_c) - tp, np.sum(m_other) - fp
    iou_target = tp / (tp + fp + fn)
    ious = [i / u for i, u in ((tp, tp + fp + fn), (tn, tn + fn + fp)) if u]
    total = h[region].sum()
    return {
        "acc_fg": (tp + tn) / region.sum(),
        "iou_target": iou_target,
        "miou_fg": sum(ious) / len(ious),
        "map_fg": average_precision_score(m_c[region], h[region]) if m_c[region].any() else 0.0,
        "nar": h[m_other].sum() / total if total > 0 else math.nan,
    }


def assert_matches_reference(got, expected: dict[str, float]) -> None:
    for name, value in expected.items():
        assert getattr(got, name) == pytest.approx(value, abs=1e-12, nan_ok=True), name


# --------------------------------------------------------------------------------------------
# Work buffers
# --------------------------------------------------------------------------------------------


def test_scratch_array_keeps_one_buffer_per_name_up_to_max_bytes():
    """_Scratch.array: a request of up to max_bytes (inclusive) is served from the kept buffer of
    its name, reused at the same size, grown on demand; a larger request gets a fresh array."""
    scratch = metrics._Scratch()
    scratch.max_bytes = 160
    first = scratch.array("x", 20, np.float64)  # exactly max_bytes: still kept
    assert first.dtype == np.float64 and first.shape == (20,)
    assert "x" in scratch._buffers
    again = scratch.array("x", 20, np.float64)  # same size: the same memory
    assert np.shares_memory(first, again)
    smaller = scratch.array("x", 7, np.int16)
    assert smaller.dtype == np.int16 and smaller.shape == (7,) and np.shares_memory(first, smaller)
    other = scratch.array("y", 20, np.float64)
    assert not np.shares_memory(first, other)
    fresh = scratch.array("x", 21, np.float64)  # over max_bytes: not kept
    assert fresh.shape == (21,) and not np.shares_memory(first, fresh)
    assert np.shares_memory(scratch.array("x", 20, np.float64), first)
    small = metrics._Scratch()
    small.max_bytes = 160
    grown_from = small.array("z", 2, np.float64)
    grown = small.array("z", 10, np.float64)
    assert not np.shares_memory(grown_from, grown)
    assert np.shares_memory(small.array("z", 5, np.float64), grown)


def test_scratch_countdown_is_a_kept_read_only_float64_countdown():
    """_Scratch.countdown: float64 [size, ..., 1], read-only, kept between calls (and served as a
    tail view for smaller sizes) when it fits in max_bytes (inclusive), not kept when larger."""
    scratch = metrics._Scratch()
    scratch.max_bytes = 40
    five = scratch.countdown(5)  # 40 bytes == max_bytes: kept
    assert five.dtype == np.float64
    assert np.array_equal(five, [5.0, 4.0, 3.0, 2.0, 1.0])
    assert not five.flags.writeable
    assert np.shares_memory(scratch.countdown(5), five)
    three = scratch.countdown(3)
    assert np.array_equal(three, [3.0, 2.0, 1.0]) and np.shares_memory(three, five)
    six = scratch.countdown(6)  # 48 bytes: handed out, not kept
    assert np.array_equal(six, np.arange(6, 0, -1)) and six.dtype == np.float64
    assert not six.flags.writeable
    assert np.shares_memory(scratch.countdown(4), five)


# --------------------------------------------------------------------------------------------
# Heatmap preparation
# --------------------------------------------------------------------------------------------


def test_resize_bilinear_always_returns_float64():
    """resize_bilinear: an integer image already at the size comes back as float64 (same values);
    a float64 one at the size is returned as is; other sizes equal torch's bilinear."""
    image = np.arange(12, dtype=np.int32).reshape(3, 4)
    same = resize_bilinear(image, (3, 4))
    assert same.dtype == np.float64 and np.array_equal(same, image)
    floats = image.astype(np.float64)
    assert resize_bilinear(floats, (3, 4)) is floats
    resized = resize_bilinear(image, (7, 5))
    assert resized.dtype == np.float64
    assert np.allclose(resized, torch_resize(image, (7, 5)), atol=1e-12)


@pytest.mark.parametrize(
    ("shape", "size"), [((1, 5), (4, 9)), ((6, 1), (3, 8)), ((1, 1), (5, 4)), ((4, 7), (1, 3))]
)
def test_one_pixel_dimensions_resize_like_torch(shape, size):
    """A heatmap (or target) with a 1-pixel dimension is valid: resized like torch, scored."""
    x = np.random.default_rng(20).random(shape)
    r = resize_bilinear(x, size)
    assert np.allclose(r, torch_resize(x, size), atol=1e-12)
    expected = (r - r.min()) / (r.max() - r.min()) if r.max() > r.min() else np.zeros(size)
    assert np.allclose(normalize_heatmap(x, size), expected, atol=1e-12)


def test_fg_scores_accepts_a_one_pixel_wide_heatmap():
    """fg_scores on a (1, w) token row heatmap: no error, values of the plain definition."""
    heatmap = np.array([[0.1, 0.9, 0.4, 0.7, 0.0]])
    masks = np.zeros((2, 6, 10), dtype=bool)
    masks[0, :, 5:] = True
    masks[1, 1:5, :4] = True
    for target in (0, 1):
        assert_matches_reference(fg_scores(heatmap, masks, target), reference_fg(heatmap, masks, target))


def test_every_real_dtype_is_scored_as_its_float64_cast():
    """Integer, float32 and long-double heatmaps give exactly the values of their float64 cast
    (the resize is done in float64 whatever the input dtype)."""
    rng = np.random.default_rng(21)
    base = rng.integers(0, 255, (5, 7))
    masks = np.zeros((2, 13, 9), dtype=bool)
    masks[0, 2:9, 1:6] = True
    masks[1, 6:13, 4:9] = True
    for heatmap in (
        base,
        base.astype(np.uint8),
        base.astype(np.float32),
        rng.random((5, 7)).astype(np.longdouble),
    ):
        as_float = heatmap.astype(np.float64)
        assert np.array_equal(normalize_heatmap(heatmap, (13, 9)), normalize_heatmap(as_float, (13, 9)))
        assert np.array_equal(normalize_heatmap(heatmap, (3, 20)), normalize_heatmap(as_float, (3, 20)))
        assert fg_scores(heatmap, masks, 0) == fg_scores(as_float, masks, 0)
        assert fg_scores(heatmap, masks, 0).map_fg == pytest.approx(
            reference_fg(as_float, masks, 0)["map_fg"]
        )


@pytest.mark.parametrize(
    "heatmap",
    [
        np.ones((4, 4), dtype=np.complex128),
        np.zeros((4, 4), dtype=bool),
        np.full((4, 4), "a"),
        np.ones((2, 3), dtype=np.complex64),
    ],
    ids=["complex128", "bool", "str", "complex64-resized"],
)
def test_non_real_heatmaps_are_rejected(heatmap):
    """_as_heatmap: complex, bool and non-numeric heatmaps raise ValueError (not accepted)."""
    with pytest.raises(ValueError):
        normalize_heatmap(heatmap, (4, 4))
    with pytest.raises(ValueError):
        fg_scores(heatmap, halves_masks(), 0)


def test_normalize_heatmap_is_min_max_of_the_resized_heatmap():
    """normalize_heatmap: (r - min) / (max - min) of the resized heatmap, min 0 and max 1 exactly,
    for a range that is neither 1 nor starting at 0 (at the size and resized)."""
    rng = np.random.default_rng(22)
    x = 3.0 + 8.0 * rng.random((6, 5))
    for size in ((6, 5), (11, 8)):
        r = torch_resize(x, size)
        got = normalize_heatmap(x, size)
        assert got.dtype == np.float64 and got.shape == size
        assert np.allclose(got, (r - r.min()) / (r.max() - r.min()), atol=1e-12)
        assert got.min() == 0.0 and got.max() == 1.0


@pytest.mark.parametrize("value", [0.0, 5.0, -2.5])
def test_constant_heatmap_normalizes_to_exact_zeros(value):
    """A constant heatmap (max == min) becomes exactly 0.0 everywhere (no NaN, no warning)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = normalize_heatmap(np.full((3, 3), value), (5, 4))
        scores = fg_scores(np.full((3, 3), value), halves_masks(), 0)
    assert got.dtype == np.float64 and np.array_equal(got, np.zeros((5, 4)))
    assert not np.isnan(got).any()
    assert scores.degenerate and scores.acc_fg == 0.5 and scores.map_fg == 0.5


def test_predicted_mask_is_strictly_above_the_mean():
    """predicted_mask: h > mean(h); pixels equal to the mean (and a constant map) are not predicted."""
    h = np.array([[0.0, 1.0], [0.5, 0.5]])  # mean 0.5
    assert np.array_equal(predicted_mask(h), [[False, True], [False, False]])
    assert not predicted_mask(np.zeros((3, 3))).any()
    assert predicted_mask(np.zeros((3, 3))).dtype == bool


# --------------------------------------------------------------------------------------------
# Average precision
# --------------------------------------------------------------------------------------------


def test_average_precision_outside_unit_interval_matches_sklearn(monkeypatch):
    """The split path (scores outside [0, 1]): sklearn's value with ties inside the positives,
    across the positive / negative boundary, a single positive, all tied, and 0.0 without positive."""
    split = count_calls(monkeypatch, "_average_precision_split")
    rng = np.random.default_rng(23)
    cases = [
        (np.array([1, 0, 1, 1, 0, 0]), np.array([5.0, 3.0, 5.0, -1.0, 5.0, 2.0])),
        (np.array([0, 0, 1, 0]), np.array([-2.0, 7.0, 3.0, 1.0])),  # one positive
        (np.array([0, 1, 0, 0]), np.array([-2.0, 7.0, 3.0, 1.0])),  # one positive, on top
        (np.array([1, 0, 1, 0, 1]), np.full(5, -4.0)),  # all tied
        (np.array([1, 1, 1]), np.array([-3.0, 2.0, 9.0])),  # only positives
    ]
    for _ in range(60):
        n = int(rng.integers(2, 40))
        labels = (rng.random(n) < rng.uniform(0.1, 0.9)).astype(int)
        labels[int(rng.integers(n))] = 1
        scores = np.round(rng.normal(0.0, 3.0, n), int(rng.integers(0, 2)))
        scores[0] = 10.0  # surely outside [0, 1]
        cases.append((labels, scores))
    for labels, scores in cases:
        assert average_precision(labels, scores) == pytest.approx(
            average_precision_score(labels, scores), abs=1e-12
        ), (labels, scores)
    assert average_precision(np.zeros(4, int), np.array([-1.0, 2.0, 3.0, 5.0])) == 0.0
    assert len(split) == len(cases) + 1


def test_average_precision_path_choice_at_the_unit_interval_bounds(monkeypatch):
    """Scores in [0, 1] with the bounds themselves (0.0 and 1.0) take the packed-key path; scores
    above 1 or below 0 take the split path; empty input is 0.0."""
    split = count_calls(monkeypatch, "_average_precision_split")
    labels = np.array([1, 0, 1, 0, 0, 1])
    for scores in (
        np.array([0.0, 0.3, 0.5, 0.3, 0.9, 0.7]),  # min exactly 0
        np.array([0.1, 0.3, 1.0, 0.3, 0.9, 0.7]),  # max exactly 1
        np.array([0.0, 1.0, 1.0, 0.0, 0.5, 1.0]),
    ):
        assert average_precision(labels, scores) == pytest.approx(average_precision_score(labels, scores))
    assert not split
    for scores in (
        np.array([0.1, 0.3, 1.5, 0.3, 0.9, 0.7]),  # max in (1, 2]
        np.array([0.1, 0.3, 2.0, 0.3, 0.9, 0.7]),
        np.array([-0.1, 0.3, -0.5, 0.3, 0.9, 0.7]),  # negative, max <= 1
    ):
        split.clear()
        assert average_precision(labels, scores) == pytest.approx(average_precision_score(labels, scores))
        assert split == [1]
    assert average_precision(np.zeros(0, bool), np.zeros(0)) == 0.0


def test_average_precision_of_negative_scores_orders_them_by_value():
    """Negative scores (max <= 1) rank by value, as sklearn's: -0.9 is below -0.1."""
    labels = np.array([0, 1, 0, 1, 0])
    scores = np.array([-0.9, -0.1, -0.5, 0.4, -0.05])
    assert average_precision(labels, scores) == pytest.approx(average_precision_score(labels, scores))
    assert average_precision(np.array([1, 0]), np.array([-0.1, -0.9])) == 1.0


def test_average_precision_accepts_object_arrays_of_numbers():
    """Scores given as an object array of Python floats are converted like sklearn does."""
    labels = np.array([0, 1, 1, 0, 1])
    for values in ([0.1, 0.7, 0.3, 0.7, 0.2], [3.0, -1.0, 2.0, 2.0, 5.0]):
        scores = np.array(values, dtype=object)
        assert average_precision(labels, scores) == pytest.approx(
            average_precision_score(labels, np.array(values)), abs=1e-12
        )


def test_average_precision_requires_one_dimensional_inputs_of_one_length():
    """ValueError for same-shape 2-D inputs and for 1-D inputs of different lengths."""
    with pytest.raises(ValueError):
        average_precision(np.ones((2, 3), bool), np.full((2, 3), 0.5))
    with pytest.raises(ValueError):
        average_precision(np.ones(3, bool), np.full(4, 0.5))
    with pytest.raises(ValueError):
        average_precision(np.ones(3, bool), np.array([0.1, np.inf, 0.2]))


def test_tie_fraction_threshold_is_strictly_above_one_eighth(monkeypatch):
    """The run-by-run pass is used only when strictly more than n / 8 samples are tied:
    16 samples with 2 tied use the look-ups, with 3 tied the runs; both equal sklearn."""
    runs = count_calls(monkeypatch, "_average_precision_runs")
    labels = np.array([1, 0, 0, 1, 0, 1, 1, 0, 0, 0, 1, 0, 1, 0, 0, 1])
    distinct = np.linspace(0.05, 0.95, 16)
    two_tied = distinct.copy()
    two_tied[[3, 9]] = two_tied[[4, 10]]  # 14 runs: n_tied = 2 = 16 / 8
    three_tied = two_tied.copy()
    three_tied[12] = three_tied[13]  # n_tied = 3
    assert average_precision(labels, two_tied) == pytest.approx(average_precision_score(labels, two_tied))
    assert runs == []
    assert average_precision(labels, three_tied) == pytest.approx(average_precision_score(labels, three_tied))
    assert runs == [1]


# --------------------------------------------------------------------------------------------
# Multi-concept metrics
# --------------------------------------------------------------------------------------------


def test_pair_scores_as_dict_lists_every_metric_and_degenerate():
    """PairScores.as_dict: {metric: value} in FG_METRICS order, then "degenerate"."""
    scores = fg_scores(np.random.default_rng(24).random((4, 4)), halves_masks(), 0)
    as_dict = scores.as_dict()
    assert list(as_dict) == [*FG_METRICS, "degenerate"]
    for name, value in as_dict.items():
        assert value == getattr(scores, name)
    assert as_dict["degenerate"] is False


def test_single_mask_pair_has_no_non_target_class():
    """K = 1 (no other concept, M_other empty): the non-target IoU is undefined and left out of the
    mean, so a perfect prediction scores mIoU 1; NAR 0."""
    masks = np.zeros((1, 4, 6), dtype=bool)
    masks[0, :, :3] = True
    heatmap = masks[0].astype(float)
    scores = fg_scores(heatmap, masks, 0)
    assert scores.iou_target == 1.0 and scores.miou_fg == 1.0 and scores.acc_fg == 1.0
    assert scores.map_fg == 1.0 and scores.nar == 0.0 and not scores.degenerate
    imperfect = np.random.default_rng(25).random((4, 6))
    assert_matches_reference(fg_scores(imperfect, masks, 0), reference_fg(imperfect, masks, 0))


def test_integer_masks_of_zeros_and_ones_are_accepted():
    """_as_masks: uint8 / int64 0/1 masks score exactly like the bool masks."""
    heatmap = np.random.default_rng(26).random((3, 3))
    masks = halves_masks()
    masks[1, 0, 3] = True  # an overlap pixel
    expected = fg_scores(heatmap, masks, 1)
    for dtype in (np.uint8, np.int64):
        assert fg_scores(heatmap, masks.astype(dtype), 1) == expected


@pytest.mark.parametrize(
    "masks",
    [
        halves_masks().astype(np.int64) * 2,
        halves_masks().astype(np.int64) - 1,  # -1 / 0
        halves_masks().astype(np.float64),
        halves_masks().astype(np.float32) * 0.5,
    ],
    ids=["int-two", "int-minus-one", "float64-01", "float32-half"],
)
def test_masks_other_than_bool_or_zero_one_integers_are_rejected(masks):
    """_as_masks: integers outside {0, 1} and float masks (even 0/1) raise ValueError."""
    with pytest.raises(ValueError):
        fg_scores(np.ones((4, 4)), masks, 0)


def test_masks_with_one_pixel_height_are_scored():
    """A (K, 1, W) mask stack is valid (no dimension of 1 is rejected)."""
    masks = np.zeros((2, 1, 8), dtype=bool)
    masks[0, 0, :3] = True
    masks[1, 0, 3:6] = True
    heatmap = np.array([[0.9, 0.8, 0.1, 0.2, 0.7, 0.0, 0.3, 0.4]])
    assert_matches_reference(fg_scores(heatmap, masks, 0), reference_fg(heatmap, masks, 0))


def test_nar_is_defined_when_the_region_total_is_at_most_one():
    """degenerate iff the normalised heat over R sums to 0: a total of exactly 1 (or less than 1)
    is not degenerate and gives NAR = other / total."""
    heatmap = np.zeros((4, 4))
    heatmap[1, 3] = 1.0  # the only heat, in the target (right half)
    scores = fg_scores(heatmap, halves_masks(), 0)
    assert not scores.degenerate and scores.nar == 0.0
    scores = fg_scores(heatmap, halves_masks(), 1)  # now the heat is non-target
    assert not scores.degenerate and scores.nar == 1.0
    heatmap[2, 0] = 0.25  # heat in the left half too: total 1.25 over R
    assert fg_scores(heatmap, halves_masks(), 0).nar == pytest.approx(0.25 / 1.25)
    masks = np.zeros((2, 4, 4), dtype=bool)
    masks[0, 0, :2] = True  # M_c: two pixels of row 0; M_other: pixel (1, 0)
    masks[1, 1, 0] = True
    heatmap = np.zeros((4, 4))
    heatmap[3, 3] = 1.0  # the max, outside R: the total over R is 0.5
    heatmap[0, 0], heatmap[1, 0] = 0.2, 0.3
    scores = fg_scores(heatmap, masks, 0)
    assert not scores.degenerate and scores.nar == pytest.approx(0.3 / 0.5)


# --------------------------------------------------------------------------------------------
# Anchor accuracy
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("grid", "shape"),
    [((3, 5), (7, 11)), ((4, 6), (4, 6)), ((2, 3), (64, 48)), ((5, 2), (9, 3)), ((6, 1), (6, 2))],
)
def test_anchor_in_mask_tests_the_centre_pixel_of_every_token(grid, shape):
    """anchor_in_mask: pixel (floor((row + .5) * H / gh), floor((col + .5) * W / gw)) for every
    token of non-square grids, including row / column 0 and the last ones."""
    rng = np.random.default_rng(27)
    mask = rng.random(shape) < 0.5
    for row in range(grid[0]):
        for col in range(grid[1]):
            y = math.floor((row + 0.5) * shape[0] / grid[0])
            x = math.floor((col + 0.5) * shape[1] / grid[1])
            assert anchor_in_mask((row, col), grid, mask) == bool(mask[y, x]), (row, col)


def test_anchor_in_mask_last_token_of_a_pixel_grid():
    """One token per pixel: the last row / column token tests the last pixel, not the one before."""
    mask = np.zeros((4, 4), dtype=bool)
    mask[3, 3] = True
    assert anchor_in_mask((3, 3), (4, 4), mask)
    assert not anchor_in_mask((2, 3), (4, 4), mask) and not anchor_in_mask((3, 2), (4, 4), mask)


def test_anchor_in_mask_clamps_a_centre_rounded_onto_the_border():
    """On a huge grid float rounding puts (row + .5) * H / gh at H: the clamp keeps it at H - 1."""
    grid = (2**53, 2**53)
    last = 2**53 - 1
    mask = np.zeros((2, 2), dtype=bool)
    mask[1, 1] = True
    assert anchor_in_mask((last, last), grid, mask)
    assert not anchor_in_mask((last, 0), grid, mask)


@pytest.mark.parametrize("anchor", [(0, 5), (3, 0), (-1, 0), (0, -1)])
def test_anchor_outside_the_grid_is_rejected(anchor):
    """ValueError for a row or column outside [0, gh) x [0, gw) (3 x 5 grid)."""
    with pytest.raises(ValueError):
        anchor_in_mask(anchor, (3, 5), np.ones((6, 10), dtype=bool))


# --------------------------------------------------------------------------------------------
# Standard single-concept protocol
# --------------------------------------------------------------------------------------------


def voc_like_image():
    """A 4x4 image whose pooled ("both") AP differs from its foreground-only AP, ignore row 3."""
    heatmap = np.array([[0.0, 1.0], [0.0, 1.0]])
    mask = np.zeros((4, 4), dtype=bool)
    mask[:, 1:] = True
    ignore = np.zeros((4, 4), dtype=bool)
    ignore[3] = True
    return heatmap, mask, ignore


def test_integer_ignore_mask_equals_the_bool_one():
    """binary_image_scores: an ignore mask of 0/1 integers is read as bool (not as indices)."""
    heatmap, mask, ignore = voc_like_image()
    expected = binary_image_scores(heatmap, mask, ignore=ignore)
    assert expected.labeled == 12
    for dtype in (np.uint8, np.int64):
        assert binary_image_scores(heatmap, mask, ignore=ignore.astype(dtype)) == expected


def test_image_with_every_pixel_ignored_scores_zero():
    """Every pixel ignored: zero counts, AP 0.0, accuracy NaN."""
    heatmap, mask, _ = voc_like_image()
    scores = binary_image_scores(heatmap, mask, ignore=np.ones((4, 4), dtype=bool))
    assert (scores.correct, scores.labeled, scores.inter, scores.union) == (0, 0, (0, 0), (0, 0))
    assert scores.ap == 0.0 and math.isnan(scores.acc)
    assert (
        binary_image_scores(heatmap, mask, ignore=np.ones((4, 4), bool), ap_channels="foreground").ap == 0.0
    )


def test_accumulator_defaults_and_passes_ignore_and_ap_channels():
    """BinaryAccumulator: compat off by default (False, not None); add() forwards ignore and
    ap_channels; map is the mean of the per-image APs; binary_scores forwards ap_channels."""
    heatmap, mask, ignore = voc_like_image()
    accumulator = BinaryAccumulator()
    assert accumulator.conceptattention_compat is False
    added = accumulator.add(heatmap, mask, ignore)
    assert added == binary_image_scores(heatmap, mask, ignore=ignore) and added.labeled == 12
    second = accumulator.add(np.eye(4), np.eye(4, dtype=bool))
    result = accumulator.result()
    assert result.conceptattention_compat is False
    assert result.map == pytest.approx((added.ap + second.ap) / 2)
    assert result.acc == pytest.approx((added.correct + second.correct) / 28)
    foreground = BinaryAccumulator(ap_channels="foreground")
    fg_image = foreground.add(heatmap, mask, ignore)
    assert fg_image.ap == binary_image_scores(heatmap, mask, ignore=ignore, ap_channels="foreground").ap
    assert fg_image.ap == 1.0 and added.ap < 1.0
    assert foreground.result().map == 1.0
    both = binary_scores([(heatmap, mask, ignore)])
    only_fg = binary_scores([(heatmap, mask, ignore)], ap_channels="foreground")
    assert both.map == pytest.approx(added.ap) and only_fg.map == 1.0


def test_empty_accumulator_is_all_nan_without_warnings():
    """No image added: acc, miou, map and both IoUs NaN, 0 images, no warning (no empty mean)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = BinaryAccumulator().result()
        compat = BinaryAccumulator(conceptattention_compat=True).result()
    for value in (result.acc, result.miou, result.map, result.iou_foreground, result.iou_background):
        assert math.isnan(value)
    assert result.images == 0 and math.isnan(compat.miou)


def test_class_with_empty_union_is_left_out_of_the_miou():
    """An image with no foreground and nothing predicted: foreground IoU NaN, mIoU = background IoU."""
    accumulator = BinaryAccumulator()
    accumulator.add(np.zeros((3, 3)), np.zeros((4, 4), dtype=bool))
    result = accumulator.result()
    assert math.isnan(result.iou_foreground)
    assert result.iou_background == 1.0 and result.miou == 1.0 and result.acc == 1.0


def test_binary_scores_as_dict_holds_every_field():
    """BinaryScores.as_dict: every dataclass field with its value."""
    result = binary_scores([(np.eye(4), np.eye(4, dtype=bool))])
    as_dict = result.as_dict()
    assert set(as_dict) == {
        "acc",
        "miou",
        "map",
        "iou_foreground",
        "iou_background",
        "images",
        "conceptattention_compat",
    }
    assert as_dict["images"] == 1 and as_dict["conceptattention_compat"] is False
    assert as_dict["acc"] == result.acc and as_dict["map"] == result.map
    assert (
        BinaryImageScores.from_dict(binary_image_scores(np.eye(4), np.eye(4, dtype=bool)).as_dict()).labeled
        == 16
    )
