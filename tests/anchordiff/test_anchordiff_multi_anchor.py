"""Multi-anchor AnchorDiff (``anchordiff.multi_anchor``, method ``anchordiff_multi``): a naive
reference of every step, the planted two-instance scenes (issue 16), equality with single-anchor
AnchorDiff on single-instance scenes, and the wiring from a real (tiny) recording."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from anchordiff import AnchorDiff
from anchordiff.graph import anchordiff_heatmaps, build_graph
from anchordiff.multi_anchor import multi_anchor_heatmaps
from anchordiff.synthetic import synthetic_scene
from benchmark.metrics import fg_scores

SEEDS = range(6)


def naive_multi_anchor(w_hat, a_ci, grid, *, steps, max_anchors, threshold, radius):
    """A literal, loop-by-loop reading of the module docstring (dense, float64)."""
    w = w_hat.to_dense().double() if w_hat.layout != torch.strided else w_hat.double()
    a = a_ci.double()
    k, n = a.shape
    gh, gw = grid
    r = max(1, math.ceil(radius * max(gh, gw)))

    def propagate(token):
        s = torch.zeros(n, dtype=torch.float64)
        s[token] = 1.0
        for _ in range(steps):
            s = w.T @ s
        return s / s.max()

    def owner(scores):
        region = scores > scores.mean()
        return int(torch.stack([a[c, region].mean() for c in range(k)]).argmax())

    maps, anchors = [], []
    for c in range(k):
        grid_map = a[c].reshape(gh, gw)
        candidates = []
        for t in range(n):
            y, x = divmod(t, gw)
            window = grid_map[max(0, y - r) : y + r + 1, max(0, x - r) : x + r + 1]
            if a[c, t] >= window.max() and a[c, t] >= threshold * a[c].max():
                candidates.append(t)
        candidates = sorted(candidates, key=lambda t: -float(a[c, t]))[: 4 * max_anchors]
        chosen = [int(a[c].argmax())]
        combined = propagate(chosen[0])
        for t in candidates:
            if len(chosen) == max_anchors:
                break
            far = all(max(abs(t // gw - u // gw), abs(t % gw - u % gw)) > r for u in chosen)
            scores = propagate(t)
            if far and combined[t] <= combined.mean() and owner(scores) == c:
                chosen.append(t)
                combined = torch.maximum(combined, scores)
        low, high = combined.min(), combined.max()
        maps.append((combined - low) / (high - low) if high > low else torch.zeros_like(combined))
        anchors.append(chosen)
    return torch.stack(maps), anchors


@pytest.mark.parametrize(("instances", "seed"), [((2, 1), 0), ((2, 2), 1), ((1, 2), 2)])
def test_multi_anchor_equals_the_naive_reference(instances, seed):
    scene = synthetic_scene((32, 32), seed=seed, instances=instances)
    w_hat = build_graph(scene.a_ii, scene.o_ii)
    options = {"steps": 40, "max_anchors": 3, "threshold": 0.5, "radius": 0.1}
    result = multi_anchor_heatmaps(w_hat, scene.a_ci, scene.grid, **options)
    expected_maps, expected_anchors = naive_multi_anchor(w_hat, scene.a_ci, scene.grid, **options)
    assert [a.tolist() for a in result.anchors] == expected_anchors
    torch.testing.assert_close(result.heatmaps.double(), expected_maps, atol=1e-5, rtol=0)
    assert any(len(a) > 1 for a in expected_anchors)  # the scene exercises more than one anchor


def scores_of(heatmaps, scene, concept):
    gh, gw = scene.grid
    return fg_scores(heatmaps[concept].reshape(gh, gw).numpy(), scene.masks.numpy(), concept)


def test_two_instances_are_both_covered_without_more_leakage():
    """Concept 0 appears twice, far apart, beside a look-alike distractor (concept 1): one anchor
    reaches one instance; multi-anchor reaches both and leaks no more onto the distractor."""
    single_iou, multi_iou, single_nar, multi_nar = [], [], [], []
    for seed in SEEDS:
        scene = synthetic_scene((32, 32), seed=seed, instances=(2, 1))
        single = anchordiff_heatmaps(scene.a_ii, scene.o_ii, scene.a_ci)
        multi = multi_anchor_heatmaps(build_graph(scene.a_ii, scene.o_ii), scene.a_ci, scene.grid)
        assert len(multi.anchors[0]) == 2 and len(multi.anchors[1]) == 1
        a, b = scores_of(single, scene, 0), scores_of(multi.heatmaps, scene, 0)
        single_iou.append(a.iou_target)
        multi_iou.append(b.iou_target)
        single_nar.append(a.nar)
        multi_nar.append(b.nar)
    assert np.mean(multi_iou) >= np.mean(single_iou) + 0.3
    assert np.mean(single_iou) < 0.65  # one anchor really misses an instance
    assert np.mean(multi_nar) <= np.mean(single_nar) + 0.02


def test_leaky_scenes_gain_coverage_and_do_not_leak_more():
    """With weak object structure (one anchor's map already leaks onto the look-alike), the
    second instance is still found and NAR does not rise (scripts/multi_anchor_scenes.py)."""
    leaky = {"object_affinity": 1.0, "attention_noise": 1.0}
    single_iou, multi_iou, single_nar, multi_nar = [], [], [], []
    for seed in range(10):
        scene = synthetic_scene((32, 32), seed=seed, instances=(2, 1), **leaky)
        single = anchordiff_heatmaps(scene.a_ii, scene.o_ii, scene.a_ci)
        multi = multi_anchor_heatmaps(build_graph(scene.a_ii, scene.o_ii), scene.a_ci, scene.grid)
        a, b = scores_of(single, scene, 0), scores_of(multi.heatmaps, scene, 0)
        single_iou.append(a.iou_target)
        multi_iou.append(b.iou_target)
        single_nar.append(a.nar)
        multi_nar.append(b.nar)
    assert np.mean(single_nar) > 0.15  # the scenes do leak
    assert np.mean(multi_iou) >= np.mean(single_iou) + 0.1
    assert np.mean(multi_nar) <= np.mean(single_nar) + 0.02


@pytest.mark.parametrize(
    ("instances", "settings"),
    [((1, 1), {}), ((1, 1, 1), {}), ((1, 1), {"object_affinity": 1.0, "attention_noise": 1.0}),
     ((1, 1, 1), {"object_affinity": 1.0, "attention_noise": 1.0})],
)  # fmt: skip
def test_single_instance_scenes_are_unchanged(instances, settings):
    for seed in SEEDS:
        scene = synthetic_scene((32, 32), seed=seed, instances=instances, **settings)
        single = anchordiff_heatmaps(scene.a_ii, scene.o_ii, scene.a_ci)
        multi = multi_anchor_heatmaps(build_graph(scene.a_ii, scene.o_ii), scene.a_ci, scene.grid)
        assert [len(a) for a in multi.anchors] == [1] * len(instances)
        assert [int(a[0]) for a in multi.anchors] == scene.a_ci.argmax(dim=1).tolist()
        torch.testing.assert_close(multi.heatmaps, single, atol=1e-6, rtol=0)


def test_max_anchors_one_is_single_anchor_and_options_are_checked():
    scene = synthetic_scene((24, 24), seed=0, instances=(2, 1))
    w_hat = build_graph(scene.a_ii, scene.o_ii)
    one = multi_anchor_heatmaps(w_hat, scene.a_ci, scene.grid, max_anchors=1)
    torch.testing.assert_close(
        one.heatmaps, anchordiff_heatmaps(scene.a_ii, scene.o_ii, scene.a_ci), atol=1e-6, rtol=0
    )
    for bad, match in (({"max_anchors": 0}, "max_anchors"), ({"threshold": 0.0}, "anchor_threshold"),
                       ({"radius": 1.0}, "anchor_radius")):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            multi_anchor_heatmaps(w_hat, scene.a_ci, scene.grid, **bad)
    with pytest.raises(ValueError, match="does not hold"):
        multi_anchor_heatmaps(w_hat, scene.a_ci, (10, 10))


def test_synthetic_instances_plant_two_discs_of_one_concept():
    scene = synthetic_scene((32, 32), seed=3, instances=(2, 1))
    assert scene.instance_concepts.tolist() == [0, 0, 1]
    assert torch.equal(scene.masks[0], scene.instance_masks[0] | scene.instance_masks[1])
    assert torch.equal(scene.masks[1], scene.instance_masks[2])
    plain = synthetic_scene((32, 32), seed=3, num_objects=2)
    again = synthetic_scene((32, 32), seed=3, instances=(1, 1))
    assert torch.equal(plain.a_ci, again.a_ci) and torch.equal(plain.a_ii, again.a_ii)


def test_anchordiff_multi_from_a_tiny_recording_follows_the_graph_and_options(monkeypatch):
    ad = AnchorDiff.from_pretrained(
        "tiny", preset="sd3", max_anchors=2, anchor_threshold=0.3, anchor_radius=0.2
    )
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (96, 80, 3), dtype=np.uint8))
    out = ad(image, ["husky", "wolf"], mode="noise", method="anchordiff_multi", steps=20, return_record=True)
    record = out.record
    a_ii = torch.stack([record.a_ii[x] for x in ad.graph_layers]).mean(dim=0)
    o_ii = torch.stack([record.o_ii[x] for x in ad.graph_layers]).mean(dim=0)
    a_ci = record.a_ci.mean(dim=0)
    w_hat = build_graph(a_ii, o_ii, gate_quantile=0.9)
    expected, anchors = naive_multi_anchor(
        w_hat, a_ci, record.grid, steps=20, max_anchors=2, threshold=0.3, radius=0.2
    )
    again = ad.heatmaps_from_record(record, method="anchordiff_multi", steps=20, gate_quantile=0.9)
    gh, gw = record.grid
    torch.testing.assert_close(again.token_heatmaps.reshape(2, -1).double(), expected, atol=1e-5, rtol=0)
    assert [(int(r) * gw + int(c)) for r, c in again.anchors.tolist()] == [a[0] for a in anchors]
    assert ad.config["max_anchors"] == 2 and ad.config["anchor_radius"] == 0.2

    import anchordiff.pipeline as pipeline_module

    seen = {}

    def spy(w_hat, a_ci, grid, **options):
        seen.update(options, grid=grid)
        return multi_anchor_heatmaps(w_hat, a_ci, grid, **options)

    monkeypatch.setattr(pipeline_module, "multi_anchor_heatmaps", spy)
    ad.heatmaps_from_record(record, method="anchordiff_multi", steps=7)
    assert seen == {"steps": 7, "max_anchors": 2, "threshold": 0.3, "radius": 0.2, "grid": record.grid}
