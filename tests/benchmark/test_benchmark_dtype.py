"""`--dtype` of `mcc score` / `mcc sweep` and the one dtype parser behind it (``manifests.dtypes``)."""

from __future__ import annotations

import json

import datasets
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from anchordiff import AnchorDiff
from flows.cli import app
from manifests.dtypes import DTYPES, torch_dtype

runner = CliRunner()
ALLOWED = "bfloat16, float16, float32"


@pytest.fixture(autouse=True)
def private_datasets_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


@pytest.fixture
def loaded(monkeypatch) -> list[AnchorDiff]:
    """Every AnchorDiff the commands load, in order."""
    models: list[AnchorDiff] = []
    original = AnchorDiff.from_pretrained.__func__

    def recording(cls, *args, **kwargs):
        models.append(original(cls, *args, **kwargs))
        return models[-1]

    monkeypatch.setattr(AnchorDiff, "from_pretrained", classmethod(recording))
    return models


def test_names_and_torch_dtypes_map_to_torch_dtypes():
    assert DTYPES == ("bfloat16", "float16", "float32")
    assert [torch_dtype(name) for name in DTYPES] == [torch.bfloat16, torch.float16, torch.float32]
    assert torch_dtype(torch.bfloat16) is torch.bfloat16


@pytest.mark.parametrize(
    "bad", ["int8", "bf16", "float64", "auto", "", "torch.bfloat16", torch.int8, torch.float64, 16]
)
def test_anything_else_is_refused_naming_the_allowed_values(bad):
    with pytest.raises(ValueError, match=f"dtype must be one of {ALLOWED}, got {bad!r}"):
        torch_dtype(bad)


def test_from_pretrained_takes_a_name_and_refuses_others():
    assert (
        AnchorDiff.from_pretrained("tiny", device="cpu", dtype="bfloat16").transformer.dtype == torch.bfloat16
    )
    with pytest.raises(ValueError, match=f"dtype must be one of {ALLOWED}, got torch.int8"):
        AnchorDiff.from_pretrained("tiny", device="cpu", dtype=torch.int8)


@pytest.mark.parametrize("command", ["score", "sweep"])
def test_a_bad_dtype_exits_naming_the_allowed_values(command, mcc_folder, tmp_path, loaded):
    result = runner.invoke(app, [command, "--dataset", str(mcc_folder), "--model", "tiny", "--dtype", "int8",
                                 "--out", str(tmp_path / "out"), "--no-progress"])  # fmt: skip
    assert result.exit_code == 2
    assert f"--dtype must be one of {ALLOWED}, got 'int8'" in result.output
    assert loaded == []  # refused before any model is loaded


@pytest.mark.slow
def test_score_the_tiny_anchordiff_in_bfloat16(mcc_folder, tmp_path, loaded):
    out = tmp_path / "score"
    result = runner.invoke(app, ["score", "--dataset", str(mcc_folder), "--model", "tiny", "--dtype", "bfloat16",
                                 "--mode", "invert", "--limit", "2", "--out", str(out), "--no-progress"])  # fmt: skip
    assert result.exit_code == 0, result.output
    (model,) = loaded
    assert model.transformer.dtype == torch.bfloat16 and model.pipe.vae.dtype == torch.bfloat16
    report = json.loads((out / "report.json").read_text())
    assert report["configuration"]["dtype"] == "bfloat16"
    counts = report["counts"]["overall"]
    assert counts["failed"] == 0 and counts["invalid"] == 0 and counts["scored"] >= 1
    assert all(np.isfinite(value) for value in report["overall"].values() if value is not None)
    for path in (out / "heatmaps").glob("*.npz"):
        heatmaps = np.load(path)["heatmaps"]
        assert heatmaps.dtype == np.float32 and np.isfinite(heatmaps).all()


@pytest.mark.slow
def test_sweep_the_tiny_anchordiff_in_bfloat16(mcc_two_splits, tmp_path, loaded):
    out = tmp_path / "sweep"
    result = runner.invoke(app, ["sweep", "--dataset", str(mcc_two_splits), "--model", "tiny", "--dtype", "bfloat16",
                                 "--mode", "noise", "--limit", "1", "--layers", "1", "--steps", "10",
                                 "--out", str(out), "--no-progress"])  # fmt: skip
    assert result.exit_code == 0, result.output
    (model,) = loaded
    assert model.transformer.dtype == torch.bfloat16
    data = json.loads((out / "sweep.json").read_text())
    assert data["configuration"]["dtype"] == "bfloat16"
    assert data["counts"] and all(c["failed"] == 0 for c in data["counts"].values())
