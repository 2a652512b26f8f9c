"""A small manifest of generated records (images and masks drawn here) for the publish tests."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in these tests may reach the Hub

import pytest
from publish_records import make_record

from manifests import Concept, GeneratedSource, ManifestStore, Record, State


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
    rejected.reject("review", "rejected_by_reviewer", "not a wolf")
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
