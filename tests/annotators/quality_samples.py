"""Gate samples shared by the quality-gate tests: two well separated concepts on a 100 x 100 image."""

from __future__ import annotations

import numpy as np

from annotators.quality import GateSample

SIZE = 100


def rect(x1: int, y1: int, x2: int, y2: int) -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    mask[y1:y2, x1:x2] = True
    return mask


def good_sample() -> GateSample:
    """Two well separated concepts, each mask filling its box."""
    return GateSample(
        concepts=["lemon", "lime"],
        boxes={"lemon": [(10, 10, 40, 40)], "lime": [(60, 60, 90, 90)]},
        masks={"lemon": rect(12, 12, 38, 38), "lime": rect(62, 62, 88, 88)},
        scores={"lemon": 0.9, "lime": 0.8},
        image_size=(SIZE, SIZE),
    )
