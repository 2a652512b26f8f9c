"""Fixtures of the benchmark tests (builders live in ``benchmark_fixtures``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from benchmark_fixtures import make_mcc_rows, write_mcc_folder


@pytest.fixture
def mcc_folder(tmp_path) -> Path:
    """A published-layout folder with a test split of 5 images and no validation split."""
    return write_mcc_folder(tmp_path / "mcc", make_mcc_rows())


@pytest.fixture
def mcc_two_splits(tmp_path) -> Path:
    """Test: 5 images; validation: 3 other images."""
    folder = write_mcc_folder(tmp_path / "mcc2", make_mcc_rows())
    return write_mcc_folder(folder, make_mcc_rows(3, prefix="val"), split="validation")


@pytest.fixture
def mcc_dataset(mcc_folder, tmp_path):
    from benchmark.datasets import MCCDataset

    return MCCDataset(mcc_folder, cache_dir=tmp_path / "hf-cache")
