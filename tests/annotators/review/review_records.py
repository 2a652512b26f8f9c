"""Test records for the review tests: segmented records with generated images and disk masks."""

from __future__ import annotations

import numpy as np
from PIL import Image

from manifests.masks import encode_mask
from manifests.record import SAM_SCORE, Concept, GeneratedSource, Record, State
from manifests.store import ManifestStore


def disk_masks(height: int, width: int, n: int) -> list[np.ndarray]:
    """``n`` disjoint disks side by side: (H, W) bool masks."""
    yy, xx = np.mgrid[:height, :width]
    radius = min(height, width / n) / 3
    return [((xx - (i + 0.5) * width / n) ** 2 + (yy - height / 2) ** 2) < radius**2 for i in range(n)]


def make_segmented(
    store: ManifestStore,
    record_id: str,
    concepts=("husky", "wolf"),
    size=(96, 64),
    seed=0,
    group="husky-wolf",
) -> Record:
    """A ``segmented`` record with a random RGB image of ``size`` (W, H), one disk mask and its box per concept."""
    width, height = size
    rng = np.random.default_rng(seed)
    image = Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8))
    items = []
    for i, (name, mask) in enumerate(zip(concepts, disk_masks(height, width, len(concepts)), strict=True)):
        ys, xs = np.nonzero(mask)
        box = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
        score = 0.9 - 0.1 * i  # the SAM score as the segmenter writes it
        items.append(Concept(name=name, boxes=[box], mask=encode_mask(mask), scores={SAM_SCORE: score}))
    record = Record(
        id=record_id,
        group=group,
        concepts=items,
        source=GeneratedSource(template="a {a} and a {b}", setting="snow", seed=seed),
    )
    store.store_image(record, image)
    record.state = State.segmented
    store.put(record)
    return record
