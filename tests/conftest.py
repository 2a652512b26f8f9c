"""Shared fixtures: every test gets its own work dir; nothing touches the network."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture
def workdir(tmp_path):
    """An empty work dir (a local folder) for one test."""
    path = tmp_path / "workdir"
    path.mkdir()
    return path
