"""The performance script runs end to end (small grid) and its dense reference is right."""

from __future__ import annotations

import json

import pytest
import torch

from anchordiff import AnchorDiff
from anchordiff.bench import (
    RECORDER_TOLERANCE,
    _inputs,
    agrees_with_dense,
    dense_reference,
    main,
    recorder_output_change,
)
from anchordiff.graph import anchordiff_heatmaps


@pytest.mark.parametrize("kind", ["synthetic", "random"])
def test_dense_reference_equals_the_fast_path(kind):
    a_ii, o_ii, a_ci = _inputs(kind, torch.device("cpu"), grid=(12, 12))
    heat, gate = dense_reference(a_ii, o_ii, a_ci)
    assert gate.dtype == torch.bool and int(gate.sum()) <= 0.02 * 144**2 + 1
    assert torch.allclose(heat, anchordiff_heatmaps(a_ii, o_ii, a_ci), atol=1e-5)


def test_dense_reference_on_a_given_gate():
    """``gate=`` replaces eqs. 8-9 only: its own gate gives the same heatmaps, one entry more changes them."""
    a_ii, o_ii, a_ci = _inputs("random", torch.device("cpu"), grid=(12, 12))
    heat, gate = dense_reference(a_ii, o_ii, a_ci)
    same, returned = dense_reference(a_ii, o_ii, a_ci, gate=gate)
    assert torch.equal(returned, gate) and torch.equal(same, heat)
    anchor = int(a_ci[0].argmax())
    closed = (~gate[anchor]).nonzero()[0, 0]
    opened = gate.clone()
    opened[anchor, closed] = opened[closed, anchor] = True
    assert (dense_reference(a_ii, o_ii, a_ci, gate=opened)[0] - heat).abs().max() > 1e-4


RESULT = {"max_abs_diff": 0.0, "max_abs_diff_same_gate": 0.0, "gate_disagreement_margin": 0.0}


@pytest.mark.parametrize(
    ("change", "agrees"),
    [
        ({}, True),
        ({"loop_host_syncs": "none"}, True),
        ({"max_abs_diff": 1e-3, "gate_disagreement_margin": 1e-6}, True),  # a flip within rounding of tau
        ({"max_abs_diff": 1e-3, "gate_disagreement_margin": 1e-3}, False),  # a flip far from tau: wrong gate
        ({"max_abs_diff_same_gate": 2e-4}, False),  # the arithmetic after the gate differs
        ({"loop_host_syncs": "synchronises: called a synchronizing CUDA operation"}, False),
    ],
)
def test_agrees_with_dense(change, agrees):
    assert agrees_with_dense({**RESULT, "loop_host_syncs": None, **change}) is agrees


@pytest.mark.parametrize("preset", ["sd3", "sd35"])
def test_the_recorder_leaves_the_bf16_transformer_output_unchanged(preset):
    ad = AnchorDiff.from_pretrained("tiny", preset=preset, device="cpu", dtype=torch.bfloat16)
    assert ad.transformer.dtype == torch.bfloat16
    assert 0 <= recorder_output_change(ad) <= RECORDER_TOLERANCE


def test_bench_writes_json_and_markdown(tmp_path, capsys):
    report = main(["--grid", "12", "--repeats", "1", "--threads", "1", "--no-gpu", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "anchordiff_bench.json").read_text())
    assert [row["inputs"] for row in saved["graph"]] == ["synthetic", "random"]
    for row in saved["graph"]:
        assert row["n_tokens"] == 144 and row["threads"] == 1
        assert row["max_abs_diff"] <= 1e-4 and row["one_call_max_abs_diff"] <= 1e-6
        assert row["max_abs_diff_same_gate"] <= 1e-4 and row["gate_disagreement_margin"] == 0.0
        assert row["loop_host_syncs"] is None and agrees_with_dense(row)
        assert row["fast_s"]["total"] > 0 and row["dense_s"]["propagation"] > 0
        assert row["speedup"] == pytest.approx(row["dense_s"]["total"] / row["fast_s"]["total"])
    assert saved["gpu_skipped"] == "--no-gpu"
    table = (tmp_path / "anchordiff_bench.md").read_text()
    assert table.count("| cpu | 1 |") == 2
    assert table in capsys.readouterr().out
    assert report["graph"][0]["inputs"] == "synthetic"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bench_gpu_section(tmp_path):
    report = main(["--grid", "64", "--repeats", "1", "--threads", "1", "--out", str(tmp_path)])
    cuda_rows = [row for row in report["graph"] if row["device"].startswith("cuda")]
    assert len(cuda_rows) == 2 and all(agrees_with_dense(row) for row in cuda_rows)
    assert all(
        row["loop_host_syncs"] == "none" and row["max_abs_diff_same_gate"] <= 1e-4 for row in cuda_rows
    )
    queries = report["gpu_queries"]["queries"]
    assert {q["mode"] for q in queries} == {"noise", "invert"}
    assert all(q["peak_bytes"] >= report["gpu_queries"]["weights_bytes"] for q in queries)
