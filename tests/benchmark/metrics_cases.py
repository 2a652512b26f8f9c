"""Helpers shared by the metrics tests: hand-made masks and a call-counting spy."""

from __future__ import annotations

import numpy as np

from benchmark import metrics


def halves_masks() -> np.ndarray:
    """4x4: M_0 = right half, M_1 = left half (R is the whole image)."""
    masks = np.zeros((2, 4, 4), dtype=bool)
    masks[0, :, 2:] = True
    masks[1, :, :2] = True
    return masks


def count_calls(monkeypatch, name: str) -> list[int]:
    """Replace ``metrics.<name>`` by a spy that records each call and forwards it."""
    calls: list[int] = []
    original = getattr(metrics, name)

    def spy(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(metrics, name, spy)
    return calls
