"""Synthetic confusable scenes with planted structure, for tests and figures (pure torch).

A scene is a token grid with ``num_objects`` look-alike objects (discs) on a background.
Each object is also a queried concept. The generator plants the three properties AnchorDiff
relies on (``method.md``, paper Sections 3-4):

* ``a_ii`` (N, N), image self-attention: local (a Gaussian kernel over grid distance) and
  object-aware (extra logit ``object_affinity`` between tokens with the same label,
  background included), softmax over image keys, so rows sum to 1. Rows of tokens on the
  same object are similar; rows across an object boundary are not.
* ``o_ii = a_ii @ V`` (N, D), with value features ``V`` that are the *same* for every object
  (look-alikes) plus noise, and a different background feature: output-space affinity
  connects the look-alike objects with each other.
* ``a_ci`` (K, N), concept-to-image attention of concept k: a peak on object k, a plateau
  over object k and a slightly lower plateau over every other object (the leak), softmax
  over image keys.

So the raw concept attention leaks onto the look-alikes, ``W_cos`` alone connects them, and
only the ``W_attn`` gate separates them. With the defaults (32 x 32 grid, 2-3 objects, seeds
0-5) the mean affinities of ``anchordiff.graph.affinity_stats`` (same object / confusable /
foreground-background) are about ``W_cos`` 0.80 / 0.70 / 0.33 (paper Table 1: 0.79 / 0.67 /
0.42) and ``W_attn`` 0.34 / 0.00 / 0.004 (paper: 0.22 / 0.05 / 0.01): the objects here never
touch, so attention rows across objects barely overlap. Everything is seeded and
deterministic on CPU::

    from anchordiff.synthetic import synthetic_scene
    scene = synthetic_scene((32, 32), num_objects=3, seed=0)
    heat = anchordiff_heatmaps(scene.a_ii, scene.o_ii, scene.a_ci).reshape(3, 32, 32)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["SyntheticScene", "synthetic_scene"]

_LOGIT_FLOOR = 20.0


@dataclass(frozen=True)
class SyntheticScene:
    """One synthetic scene; tokens are flat row-major indices into ``grid``.

    Attributes:
        a_ii: ``(N, N)`` float32 image self-attention, rows sum to 1.
        o_ii: ``(N, D)`` float32 self-attention outputs ``a_ii @ V``.
        a_ci: ``(K, N)`` float32 concept-to-image attention, rows sum to 1; concept k
            is object k.
        labels: ``(N,)`` int64, 0 background, ``k + 1`` concept k.
        masks: ``(K, gh, gw)`` bool, ``masks[k]`` = every instance of concept k.
        centers: ``(M, 2)`` float32 centres (row, col) in token units of the M discs (M = K
            with one instance per concept).
        grid: ``(gh, gw)``.
        instance_concepts: ``(M,)`` int64 concept of each disc; instance_masks: ``(M, gh, gw)``.
    """

    a_ii: torch.Tensor
    o_ii: torch.Tensor
    a_ci: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor
    centers: torch.Tensor
    grid: tuple[int, int]
    instance_concepts: torch.Tensor | None = None
    instance_masks: torch.Tensor | None = None


def _place_discs(
    gh: int, gw: int, count: int, radius: tuple[float, float], gap: float, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random non-overlapping discs inside the grid -> centres (count, 2), radii (count,)."""
    for _ in range(1000):
        radii = radius[0] + (radius[1] - radius[0]) * torch.rand(count, generator=g)
        lo = radii + 0.5
        centers = torch.stack(
            [
                lo + torch.rand(count, generator=g) * (gh - 1 - 2 * lo),
                lo + torch.rand(count, generator=g) * (gw - 1 - 2 * lo),
            ],
            dim=1,
        )
        dist = torch.cdist(centers, centers)
        need = radii[:, None] + radii[None, :] + gap
        if bool((dist + torch.eye(count) * 1e9 >= need).all()):
            return centers, radii
    raise ValueError(
        f"cannot place {count} discs of radius {radius} with gap {gap} on a {gh}x{gw} grid; "
        "use a larger grid, fewer objects or smaller radii"
    )


def synthetic_scene(
    grid: tuple[int, int] = (32, 32),
    num_objects: int = 3,
    *,
    seed: int = 0,
    dim: int = 64,
    radius: tuple[float, float] | None = None,
    gap: float = 1.5,
    locality: float = 2.0,
    object_affinity: float = 2.0,
    attention_noise: float = 0.5,
    value_noise: float = 0.4,
    background_similarity: float = 0.4,
    concept_target: float = 2.0,
    concept_leak: float = 1.6,
    concept_peak: float = 1.0,
    concept_noise: float = 0.3,
    instances: tuple[int, ...] | None = None,
) -> SyntheticScene:
    """Generate one confusable scene (see the module docstring for what is planted).

    Args:
        grid: ``(gh, gw)`` token grid, ``N = gh * gw``.
        num_objects: K look-alike objects, each also a queried concept (>= 1).
        seed: all randomness comes from ``torch.Generator().manual_seed(seed)``.
        dim: D, the width of ``o_ii``.
        radius: (min, max) disc radius in tokens; default ``(0.12, 0.18) * min(gh, gw)``.
        gap: minimum background gap between discs, in tokens.
        locality: std of the local attention kernel, in tokens.
        object_affinity: extra attention logit between tokens with the same label.
        attention_noise: std of i.i.d. Gaussian noise on the attention logits.
        value_noise: std of the i.i.d. per-dimension noise on the value features (the class
            features have unit norm).
        background_similarity: cosine between the object and the background value feature.
        concept_target: A_CI logit plateau on the queried object.
        concept_leak: A_CI logit plateau on the other (look-alike) objects.
        concept_peak: A_CI extra logit at the queried object's centre (Gaussian bump).
        concept_noise: std of the noise on the A_CI logits.
        instances: discs per concept, e.g. ``(2, 1)``: concept 0 appears twice, far apart
            (separate objects for the attention, one concept for A_CI and the masks); None =
            one each (``num_objects`` is then ``len(instances)``).

    Returns:
        A :class:`SyntheticScene` on CPU, float32.
    """
    gh, gw = (int(x) for x in grid)
    if gh < 4 or gw < 4:
        raise ValueError(f"grid must be at least 4x4, got {grid}")
    if instances is not None:
        if not instances or any(int(m) < 1 for m in instances):
            raise ValueError(f"instances must give each concept at least one disc, got {instances}")
        num_objects = len(instances)
    if num_objects < 1:
        raise ValueError(f"num_objects must be >= 1, got {num_objects}")
    counts = [1] * num_objects if instances is None else [int(m) for m in instances]
    disc_concept = torch.tensor([k for k, m in enumerate(counts) for _ in range(m)], dtype=torch.int64)
    num_discs = len(disc_concept)
    g = torch.Generator().manual_seed(seed)
    n = gh * gw
    if radius is None:
        side = min(gh, gw)
        radius = (0.12 * side, 0.18 * side)

    # Objects and labels on the grid.
    centers, radii = _place_discs(gh, gw, num_discs, radius, gap, g)
    yy, xx = torch.meshgrid(
        torch.arange(gh, dtype=torch.float32), torch.arange(gw, dtype=torch.float32), indexing="ij"
    )
    coords = torch.stack([yy.reshape(-1), xx.reshape(-1)], dim=1)  # (N, 2) row, col
    dist_to_center = torch.cdist(coords, centers)  # (N, M)
    disc_flat = dist_to_center <= radii[None, :]  # (N, M), disjoint by construction
    labels = torch.zeros(n, dtype=torch.int64)  # concept + 1
    instance = torch.zeros(n, dtype=torch.int64)  # disc + 1: what attention groups
    for d in range(num_discs):
        labels[disc_flat[:, d]] = int(disc_concept[d]) + 1
        instance[disc_flat[:, d]] = d + 1
    masks_flat = torch.stack([disc_flat[:, disc_concept == k].any(dim=1) for k in range(num_objects)], dim=1)

    # A_II: local kernel + same-label affinity + noise, softmax over image keys.
    d2 = torch.cdist(coords, coords).pow(2)  # (N, N)
    same = (instance[:, None] == instance[None, :]).float()
    # The distance term is floored at -_LOGIT_FLOOR, like real attention whose logits span a
    # bounded range: far tokens keep a small weight (about e^-20 of a neighbour's) instead of
    # underflowing to float32 denormals, which make CPU matrix products very slow.
    logits = -(d2 / (2 * locality**2)).clamp(max=_LOGIT_FLOOR) + object_affinity * same
    logits = logits + attention_noise * torch.randn(n, n, generator=g)
    a_ii = torch.softmax(logits, dim=1)

    # Values: one shared "look-alike" object feature, one background feature, per-token noise.
    basis = torch.linalg.qr(torch.randn(dim, 2, generator=g))[0].T  # (2, D) orthonormal
    obj_feature = basis[0]
    bg_feature = background_similarity * basis[0] + math.sqrt(1 - background_similarity**2) * basis[1]
    classes = torch.stack([bg_feature, obj_feature])  # (2, D): background, look-alike object
    values = classes[(labels > 0).long()] + value_noise * torch.randn(n, dim, generator=g)
    o_ii = a_ii @ values

    # A_CI: plateau on the target, slightly lower plateau on the look-alikes, peak at the centre.
    in_object = masks_flat.float().T  # (K, N)
    any_object = in_object.sum(dim=0, keepdim=True)  # (1, N)
    disc_peak = torch.exp(-dist_to_center.T.pow(2) / (2 * (0.35 * radii[:, None]) ** 2))  # (M, N)
    peak = torch.stack([disc_peak[disc_concept == k].amax(dim=0) for k in range(num_objects)])  # (K, N)
    ci_logits = concept_target * in_object + concept_leak * (any_object - in_object) + concept_peak * peak
    ci_logits = ci_logits + concept_noise * torch.randn(num_objects, n, generator=g)
    a_ci = torch.softmax(ci_logits, dim=1)

    return SyntheticScene(
        a_ii=a_ii,
        o_ii=o_ii,
        a_ci=a_ci,
        labels=labels,
        masks=masks_flat.T.reshape(num_objects, gh, gw).contiguous(),
        centers=centers,
        grid=(gh, gw),
        instance_concepts=disc_concept,
        instance_masks=disc_flat.T.reshape(num_discs, gh, gw).contiguous(),
    )
