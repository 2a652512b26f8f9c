"""Shared fixtures: every test gets its own work dir; nothing touches the network."""

from __future__ import annotations

import os
import tempfile

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Prefect: a private home per test session (no cached results from earlier runs), no telemetry.
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="mcc-test-prefect-"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault(
    "PREFECT_RESULTS_LOCAL_STORAGE_PATH", os.path.join(os.environ["PREFECT_HOME"], "results")
)
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture
def workdir(tmp_path):
    """An empty work dir (a local folder) for one test."""
    path = tmp_path / "workdir"
    path.mkdir()
    return path
