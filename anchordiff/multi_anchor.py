"""Multi-anchor AnchorDiff: one anchor per instance of a concept (pure torch, no model imports).

The paper propagates one anchor per concept (eq. 7), so a concept with several distant
instances is found once; its stated limitation names multi-anchor selection as future
work. This module adds it on the same graph ``W_hat`` (eqs. 8-11), as the method
``anchordiff_multi``. For concept k, with ``a = A_CI[k]`` on the (gh, gw) token grid:

1. **First anchor**: ``argmax a`` (exactly eq. 7's anchor).
2. **Candidates**: tokens that are local maxima of ``a`` in a (2r+1) x (2r+1) window,
   with ``a >= threshold * max(a)``, strongest first (at most ``4 * max_anchors``);
   ``r = ceil(radius * max(gh, gw))``.
3. **Propagation**: every anchor and candidate is its own one-hot seed, propagated
   ``steps`` times over ``W_hat`` (eq. 12); each seed's scores are divided by their maximum
   (propagation conserves mass, so a raw score's scale depends on the instance's size; this
   gives every instance the same peak).
4. **Greedy selection**: a candidate becomes an anchor when it lies farther than ``r``
   tokens (Chebyshev) from every anchor so far, outside what they already reach (its value
   in the running combined map is at most that map's mean, the metrics' threshold), and
   its region is *owned* by concept k: over the tokens the candidate's own scores put above
   their mean, concept k has the highest mean A_CI of the K concepts (a look-alike's region,
   where concept k only leaks, never seeds concept k). Until ``max_anchors``. The combined
   map is the elementwise maximum of the selected anchors' scaled scores, then min-max
   (eq. 13).

With one instance every other candidate lies on the reached object, on a look-alike (owned
by its own concept) or below the threshold, so the map equals single-anchor AnchorDiff's
(to float rounding): ``minmax(s / max s) == minmax(s)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from anchordiff.graph import minmax, propagate_scores, select_anchors

DEFAULT_MAX_ANCHORS = 3
DEFAULT_ANCHOR_THRESHOLD = 0.5
DEFAULT_ANCHOR_RADIUS = 0.1


@dataclass(frozen=True)
class MultiAnchorResult:
    """``heatmaps`` (K, N) float32 in [0, 1]; ``anchors[k]`` the (A_k,) flat token indices
    selected for concept k, the first being eq. 7's anchor."""

    heatmaps: torch.Tensor
    anchors: list[torch.Tensor]


def check_multi_anchor_options(max_anchors: int, threshold: float, radius: float) -> None:
    if not isinstance(max_anchors, int) or max_anchors < 1:
        raise ValueError(f"max_anchors must be a positive int, got {max_anchors!r}")
    if not 0.0 < threshold <= 1.0:
        raise ValueError(
            f"anchor_threshold must be in (0, 1] (a fraction of the A_CI maximum), got {threshold}"
        )
    if not 0.0 <= radius < 1.0:
        raise ValueError(f"anchor_radius must be in [0, 1) (a fraction of the grid side), got {radius}")


def suppression_radius(grid: tuple[int, int], radius: float) -> int:
    """``radius`` (a fraction of the longer grid side) in tokens, at least 1."""
    return max(1, math.ceil(radius * max(grid)))


def candidate_anchors(
    a_ci: torch.Tensor, grid: tuple[int, int], *, threshold: float, window: int, limit: int
) -> list[torch.Tensor]:
    """Per concept, the candidate tokens of step 2 (flat indices, strongest first).

    a_ci: (K, N) concept-to-image attention, N = gh * gw row-major.
    """
    k, n = a_ci.shape
    gh, gw = grid
    maps = a_ci.reshape(k, 1, gh, gw)
    pooled = F.max_pool2d(maps, kernel_size=2 * window + 1, stride=1, padding=window).reshape(k, n)
    local_max = a_ci >= pooled
    strong = a_ci >= threshold * a_ci.amax(dim=1, keepdim=True)
    result = []
    for concept in range(k):
        chosen = torch.nonzero(local_max[concept] & strong[concept]).reshape(-1)
        order = torch.argsort(a_ci[concept, chosen], descending=True, stable=True)
        result.append(chosen[order][:limit])
    return result


def multi_anchor_heatmaps(
    w_hat: torch.Tensor,
    a_ci: torch.Tensor,
    grid: tuple[int, int],
    *,
    steps: int = 160,
    max_anchors: int = DEFAULT_MAX_ANCHORS,
    threshold: float = DEFAULT_ANCHOR_THRESHOLD,
    radius: float = DEFAULT_ANCHOR_RADIUS,
) -> MultiAnchorResult:
    """Multi-anchor heatmaps of K concepts over one graph (module docstring, steps 1-4).

    w_hat: (N, N) row-normalised graph (``anchordiff.graph.build_graph``), dense or sparse.
    a_ci: (K, N) layer-averaged concept-to-image attention. grid: (gh, gw), N = gh * gw.
    """
    check_multi_anchor_options(max_anchors, threshold, radius)
    k, n = a_ci.shape
    if grid[0] * grid[1] != n:
        raise ValueError(f"grid {grid} does not hold the {n} tokens of a_ci")
    a_ci = a_ci.float()
    window = suppression_radius(grid, radius)
    first = select_anchors(a_ci)
    candidates = candidate_anchors(a_ci, grid, threshold=threshold, window=window, limit=4 * max_anchors)
    seeds = torch.cat([first, *candidates])
    scores = propagate_scores(w_hat, seeds, steps=steps)  # (S, N)
    peak = scores.amax(dim=1, keepdim=True)
    scaled = torch.where(peak > 0, scores / peak.clamp_min(torch.finfo(scores.dtype).tiny), scores)
    gw = grid[1]

    def owner(seed_scores: torch.Tensor) -> int:
        """The concept with the highest mean A_CI over the region a seed reaches."""
        region = seed_scores > seed_scores.mean()
        return int(a_ci[:, region].mean(dim=1).argmax()) if bool(region.any()) else -1

    combined_rows, chosen = [], []
    offset = k
    for concept in range(k):
        anchors = [int(first[concept])]
        combined = scaled[concept].clone()
        for j, token in enumerate(candidates[concept].tolist()):
            if len(anchors) >= max_anchors:
                break
            far = all(max(abs(token // gw - a // gw), abs(token % gw - a % gw)) > window for a in anchors)
            if far and combined[token] <= combined.mean() and owner(scaled[offset + j]) == concept:
                anchors.append(token)
                combined = torch.maximum(combined, scaled[offset + j])
        offset += len(candidates[concept])
        combined_rows.append(combined)
        chosen.append(torch.tensor(anchors, dtype=torch.int64, device=a_ci.device))
    return MultiAnchorResult(minmax(torch.stack(combined_rows))[0], chosen)
