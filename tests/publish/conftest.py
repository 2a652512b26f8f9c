"""A small manifest of generated records (images and masks drawn here) for the publish tests."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in these tests may reach the Hub

from datetime import UTC, datetime

import numpy as np
import pytest
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
    record.advance(State.segmented, "segment", params={"model": "facebook/sam2.1-hiera-large"})
    record.state = state
    store.put(record)
    return record


@pytest.fixture
def small_store(tmp_path) -> ManifestStore:
    """5 two-concept and 3 three-concept reviewed records (2 of them web), one segmented
    (machine masks), one rejected, one planned."""
    store = ManifestStore(tmp_path / "work")
    for i in range(5):
        make_record(store, i, num_concepts=2, web=(i == 3), review="edited" if i == 1 else "accepted")
    for i in range(5, 8):
        make_record(store, i, num_concepts=3, web=(i == 6), size=(64, 48))
    make_record(store, 8, num_concepts=2, state=State.segmented, review="machine")
    rejected = make_record(store, 9, num_concepts=3)
    rejected.reject("review", "wrong_concept", "not a wolf")
    store.put(rejected)
    store.put(
        Record(
            id="gen-planned",
            group="lemon-lime",
            concepts=[Concept(name="lemon"), Concept(name="lime")],
            source=GeneratedSource(template="t", setting="s", seed=1),
        )
    )
    return store


@pytest.fixture
def cache_dir(tmp_path) -> str:
    """A private `datasets` cache, so tests never read another run's cached arrow files."""
    return str(tmp_path / "hf-cache")
