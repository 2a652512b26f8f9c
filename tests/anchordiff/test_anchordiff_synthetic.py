"""AnchorDiff on synthetic confusable scenes: it recovers the target where A_CI and W_cos leak."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from fixture_scopes import shared_unless_mutating

from anchordiff.graph import affinity_stats, anchor_accuracy, anchordiff_heatmaps, select_anchors
from anchordiff.synthetic import synthetic_scene

GRID = (24, 24)
SCENES = [(seed, objects) for seed in range(3) for objects in (2, 3)]


@pytest.fixture(scope=shared_unless_mutating)
def scenes():
    return [synthetic_scene(GRID, objects, seed=seed) for seed, objects in SCENES]


def fg_metrics(heatmap: torch.Tensor, masks: torch.Tensor, target: int) -> tuple[float, float]:
    """mIoU_fg and NAR of one image-concept pair, as method.md defines them (Section 5.1).

    heatmap: (h, w) any resolution; masks: (K, H, W) bool; target: the queried concept.
    """
    size = masks.shape[1:]
    h = F.interpolate(heatmap[None, None].float(), size=size, mode="bilinear", align_corners=False)[0, 0]
    h = (h - h.min()) / (h.max() - h.min()) if h.max() > h.min() else torch.zeros_like(h)
    pred = h > h.mean()
    m_c = masks[target]
    m_other = masks.any(dim=0) & ~m_c
    region = m_c | m_other
    iou_target = (pred & m_c).sum() / ((pred | m_c) & region).sum()
    iou_other = (~pred & m_other).sum() / ((~pred | m_other) & region).sum()
    nar = h[m_other].sum() / h[region].sum()
    return float((iou_target + iou_other) / 2), float(nar)


def mean_metrics(scenes, method_heatmaps) -> tuple[float, float]:
    """Mean (mIoU_fg, NAR) over every image-concept pair of the scenes."""
    values = []
    for scene in scenes:
        objects = scene.masks.shape[0]
        heat = method_heatmaps(scene).reshape(objects, *scene.grid)
        values += [fg_metrics(heat[k], scene.masks, k) for k in range(objects)]
    miou, nar = zip(*values, strict=True)
    return sum(miou) / len(miou), sum(nar) / len(nar)


def test_metric_helper_on_known_maps():
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[0, :2, :2] = True
    masks[1, 2:, 2:] = True
    assert fg_metrics(masks[0].float(), masks, 0) == (1.0, 0.0)
    miou, nar = fg_metrics(masks.any(0).float(), masks, 0)  # lights up both objects
    assert miou == pytest.approx(0.25) and nar == pytest.approx(0.5)


def test_synthetic_scene_is_deterministic_and_well_formed():
    a, b = synthetic_scene(GRID, seed=4), synthetic_scene(GRID, seed=4)
    assert torch.equal(a.a_ii, b.a_ii) and torch.equal(a.a_ci, b.a_ci) and torch.equal(a.o_ii, b.o_ii)
    assert not torch.equal(a.a_ii, synthetic_scene(GRID, seed=5).a_ii)
    n = a.grid[0] * a.grid[1]
    assert a.a_ii.shape == (n, n) and a.a_ci.shape == (3, n) and a.o_ii.shape[0] == n
    assert torch.allclose(a.a_ii.sum(1), torch.ones(n), atol=1e-5)
    assert torch.allclose(a.a_ci.sum(1), torch.ones(3), atol=1e-5)
    assert a.masks.sum(0).max() == 1  # disjoint objects
    assert torch.equal(a.masks.reshape(3, n).T.long().argmax(1) + 1, torch.where(a.labels > 0, a.labels, 1))


def test_synthetic_scene_plants_the_papers_affinity_pattern(scenes):
    """Table 1's pattern: W_cos links look-alikes, W_attn does not, the gate removes the link."""
    scene = scenes[1]  # 3 objects
    stats = affinity_stats(scene.a_ii, scene.o_ii, scene.labels)
    assert stats["w_cos"]["confusable"] > 0.5
    assert stats["w_attn"]["same_object"] > 10 * stats["w_attn"]["confusable"]
    assert stats["w_cos_gated"]["same_object"] > 0.1
    assert stats["w_cos_gated"]["confusable"] < 0.01
    assert stats["w_cos_gated"]["fg_bg"] < 0.01
    assert anchor_accuracy(select_anchors(scene.a_ci), scene.masks, scene.grid).all()


def test_anchordiff_recovers_the_target_and_the_baselines_leak(scenes):
    anchordiff = mean_metrics(scenes, lambda s: anchordiff_heatmaps(s.a_ii, s.o_ii, s.a_ci))
    cross_attention = mean_metrics(scenes, lambda s: s.a_ci)  # the "A_CI only" row of Table 5
    no_gate = mean_metrics(scenes, lambda s: anchordiff_heatmaps(s.a_ii, s.o_ii, s.a_ci, use_gate=False))

    assert anchordiff[0] >= 0.9
    assert cross_attention[1] > anchordiff[1] + 0.1
    assert no_gate[1] > anchordiff[1] + 0.1
    assert cross_attention[0] < 0.5 and no_gate[0] < 0.5


def test_wrong_anchor_would_leak(scenes):
    """The graph does the separating: seeding on a look-alike grounds the look-alike instead."""
    scene = scenes[2]  # 2 objects
    swapped = scene.a_ci.flip(0)  # concept 0's attention now peaks on object 1
    heat = anchordiff_heatmaps(scene.a_ii, scene.o_ii, swapped).reshape(2, *scene.grid)
    miou, nar = fg_metrics(heat[0], scene.masks, 0)
    assert miou < 0.5 and nar > 0.5
