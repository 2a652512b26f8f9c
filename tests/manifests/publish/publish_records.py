"""Generated records (images and masks drawn here) for the publish tests."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
from PIL import Image

from manifests import Concept, GeneratedSource, ManifestStore, Record, State, WebSource, encode_mask
from manifests.record import web_record_id

GROUPS = {
    2: ("lemon-lime", ["lemon", "lime"]),
    3: ("husky-wolf-malamute", ["siberian husky", "gray wolf", "alaskan malamute"]),
}


def ellipse(height: int, width: int, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    """(H, W) bool ellipse."""
    yy, xx = np.mgrid[:height, :width]
    return ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1


def make_record(
    store: ManifestStore,
    index: int,
    *,
    num_concepts: int = 2,
    size: tuple[int, int] = (72, 56),
    state: State = State.reviewed,
    web: bool = False,
    review: str = "accepted",
) -> Record:
    """A record with a stored image (W, H) = ``size`` and one elliptic mask per concept."""
    width, height = size
    group, names = GROUPS[num_concepts]
    rng = np.random.default_rng(index)
    if web:
        url = f"https://images.example.org/{group}/{index}.jpg"
        source = WebSource(
            url=url,
            page_url=f"https://example.org/photo/{index}",
            licence="CC BY 4.0",
            attribution=f"Photographer {index}",
            provider="openverse",
            retrieved_at=datetime(2026, 1, 1, tzinfo=UTC),
        )
        record_id = web_record_id(url)
    else:
        source = GeneratedSource(
            template="side-by-side",
            setting="a snowy field",
            seed=index,
            prompt=f"a photo of a {' and a '.join(names)} side by side, seed {index}",
            model="black-forest-labs/FLUX.1-dev",
            revision="0ef5fff",
            steps=28,
            guidance=3.5,
            width=width,
            height=height,
        )
        record_id = f"gen-{num_concepts}-{index:04d}"
    pixels = rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8)
    concepts = []
    for k, name in enumerate(names):
        cx = (k + 0.5 + 0.2 * rng.random()) * width / num_concepts
        mask = ellipse(height, width, cx, height / 2, width / (2.5 * num_concepts), height / 3)
        ys, xs = np.nonzero(mask)
        box = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
        concepts.append(
            Concept(name=name, boxes=[box], mask=encode_mask(mask), scores={"sam2_iou": 0.9}, review=review)
        )
    record = Record(id=record_id, group=group, concepts=concepts, source=source)
    store.store_image(record, Image.fromarray(pixels))
    record.advance(State.generated, "generate", params={"model": "black-forest-labs/FLUX.1-dev"})
    record.advance(State.localized, "localize", params={"model": "Qwen/Qwen2.5-VL-7B-Instruct"})
    record.advance(State.segmented, "segment", params={"model": "facebook/sam2.1-hiera-large"})
    record.state = state
    store.put(record)
    return record
