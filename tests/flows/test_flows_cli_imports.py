"""`mcc` starts fast because the CLI module imports no model or data library: they load inside
the commands that need them (the figures come from scripts/cli_startup.py, not from a timed assert)."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = (
    "torch",
    "diffusers",
    "transformers",
    "datasets",
    "pandas",
    "pyarrow",
    "label_studio_sdk",
    "sam2",
    "prefect",
)


def loaded_after(statement: str) -> set[str]:
    code = f"import sys, json; {statement}; print(json.dumps(sorted(sys.modules)))"
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return {name.split(".")[0] for name in json.loads(output)}


def test_importing_the_cli_loads_no_heavy_library():
    loaded = loaded_after("import flows.cli")
    assert "typer" in loaded and "flows" in loaded  # the probe sees imports at all
    assert sorted(loaded & set(HEAVY)) == []


def test_the_status_path_loads_no_heavy_library():
    loaded = loaded_after(
        "import flows.cli; from manifests.store import ManifestStore; ManifestStore('.').counts()"
    )
    assert "fsspec" in loaded and sorted(loaded & {*HEAVY, "pycocotools", "numpy"}) == []
