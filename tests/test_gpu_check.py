"""`scripts/gpu_check.py --tiny`: every row of the GPU check runs on the tiny models and reports a number."""

from __future__ import annotations

import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"


def _row_names() -> list[str]:
    return runpy.run_path(str(SCRIPT))["ROW_NAMES"]


@pytest.mark.slow  # about 30 s of CPU; over 60 s wall on a loaded 2-core machine
def test_tiny_gpu_check_runs_every_row(tmp_path):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny"], capture_output=True, text=True, timeout=600, cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    table = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| check | what ran | value |")
    rows = {
        cells[0]: cells for cells in ([c.strip() for c in line.strip("|").split("|")] for line in table[1:])
    }
    names = _row_names()
    assert len(names) == 12 and list(rows) == names, result.stdout
    for name in names:
        value, ok = rows[name][2], rows[name][-1]
        assert re.fullmatch(r"-?\d+(\.\d+)?(e[-+]\d+)?", value), (name, value)
        assert ok == "yes", (name, rows[name])
    assert float(rows["AnchorDiff SD3 recorder output unchanged in bf16"][2]) <= 1.6e-2
    assert "bf16" in rows["AnchorDiff SD3.5 invert"][1] and "sd35" in rows["AnchorDiff SD3.5 invert"][1]


def test_a_failing_row_fails_the_script(tmp_path):
    """A check that raises: its error is in the table and the exit status is 1 (the other rows still run)."""
    runner = tmp_path / "run.py"
    runner.write_text(
        "import runpy, sys\n"
        f"module = runpy.run_path({str(SCRIPT)!r})\n"
        "def broken(setup):\n"
        "    raise RuntimeError('out of memory, lower the batch')\n"
        "checks = module['CHECKS']\n"
        "checks[:] = [('sd3', 'AnchorDiff graph', broken), checks[-1]]\n"
        "sys.exit(module['main'](['--tiny']))\n"
    )
    result = subprocess.run([sys.executable, str(runner)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr[-4000:]
    assert "| AnchorDiff graph | cpu | – |" in result.stdout
    assert "FAILED RuntimeError: out of memory, lower the batch | FAILED |" in result.stdout
    assert "| AnchorDiff graph + 160 propagation steps |" in result.stdout and "| yes |" in result.stdout


def test_only_some_checks_and_the_table_file(tmp_path):
    """``--only graph --out FILE``: just that row, in the printed table and in FILE (no partial file left)."""
    out = tmp_path / "table.md"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--only", "graph", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    rows = [line for line in out.read_text().splitlines() if line.startswith("| ") and "---" not in line]
    assert [row.split("|")[1].strip() for row in rows] == [
        "check",
        "AnchorDiff graph + 160 propagation steps",
    ]
    assert "gate disagreements 0 of" in rows[1] and rows[1].endswith("| yes |")
    assert out.read_text().split("\n", 1)[1] in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.md"]
    bad = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--only", "flux2"], capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2 and "invalid choice: 'flux2'" in bad.stderr
