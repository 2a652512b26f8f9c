"""A real Label Studio server for the review tests, started once per test session.

The server is started by ``annotators.labelstudio_server.start``, the code behind
``mcc labelstudio start``: on a fresh machine it first creates the Label Studio venv
(1-2 minutes), then boots (30-50 s the first time). If it cannot start, the tests that
need it fail with the server's log; they are never skipped.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from annotators import labelstudio_server
from manifests.store import ManifestStore


@pytest.fixture(scope="session")
def labelstudio(tmp_path_factory):
    """The running server: ``ServerInfo`` (url, token, ...) plus ``root``, the folder it serves.

    Set ``MCC_TEST_LABELSTUDIO_ROOT`` to a folder to keep a server there between test runs
    (it is started if needed and then left running); by default a temporary one is started
    and stopped.
    """
    keep = os.environ.get("MCC_TEST_LABELSTUDIO_ROOT")
    root = Path(keep) if keep else tmp_path_factory.mktemp("labelstudio-root")
    port = labelstudio_server.status(root)["port"] or labelstudio_server.free_port()
    info = labelstudio_server.start(root, port=port, log=lambda m: None)
    try:
        yield info, root
    finally:
        if not keep:
            labelstudio_server.stop(root)


@pytest.fixture
def review_store(labelstudio, request):
    """An empty work dir below the server's document root, and a project of its own."""
    _, root = labelstudio
    name = request.node.name[:40] + "-" + uuid.uuid4().hex[:6]
    return ManifestStore(root / name), f"t-{name}"
