"""How long `mcc` takes to start: wall time of a few commands and the heaviest imports.

    python scripts/cli_startup.py [--runs 5]

Prints a table of median / best wall seconds per command over ``--runs`` runs (a fresh
process each time, so Python's start-up is included), against the 0.6 s bar of the
stage-contract issue, then the ten slowest imports of ``import flows.cli`` (cumulative,
from ``python -X importtime``).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BAR_S = 0.6
MCC = [sys.executable, "-m", "flows.cli"]


def wall(command: list[str], runs: int) -> tuple[float, float]:
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), min(seconds)


def slowest_imports(count: int = 10) -> list[tuple[float, str]]:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import flows.cli"],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = []
    for line in result.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = (part.strip() for part in line.removeprefix("import time:").split("|"))
        rows.append((int(cumulative) / 1e6, name))
    return sorted(rows, reverse=True)[:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mcc-startup-") as workdir:
        subprocess.run(
            [*MCC, "plan", "-w", workdir, "--max-groups", "3", "--per-group", "2"],
            check=True,
            capture_output=True,
        )
        commands = {
            "mcc --help": [*MCC, "--help"],
            "mcc status (6 records)": [*MCC, "status", "-w", workdir],
            "mcc generate --help": [*MCC, "generate", "--help"],
            "python -c pass (the floor)": [sys.executable, "-c", "pass"],
        }
        print(f"{'command':<30} {'median s':>9} {'best s':>8} {'bar s':>6}  under the bar")
        for label, command in commands.items():
            median, best = wall(command, args.runs)
            verdict = "" if label.startswith("python") else ("yes" if median < BAR_S else "NO")
            print(f"{label:<30} {median:>9.3f} {best:>8.3f} {BAR_S:>6.1f}  {verdict}")
    print("\nslowest imports of `import flows.cli` (cumulative s):")
    for seconds, name in slowest_imports():
        print(f"  {seconds:7.3f}  {name}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
