"""The mutation pass's table: kill rate per file, survivors' diffs, mutants judged equivalent.

Run after ``mutmut run`` in the folder that holds ``mutants/`` (``make mutants`` does both)::

    python scripts/mutation_report.py [--equivalent docs/equivalent_mutants.tsv] [--diffs mutants/survivors.diff]

``docs/equivalent_mutants.tsv`` lists surviving mutants judged equivalent (no test can tell them from the
original), one ``<mutant name or fnmatch pattern>\\t<why>`` a line (a pattern such as
``benchmark.metrics.xǁ_Scratchǁ*`` covers a function whose every mutant is equivalent, e.g. a buffer cache). They are left out of the "non-equivalent" kill rate, which
is ``killed / (killed + survived - equivalent)``; timeouts count as killed (the mutant changed behaviour),
mutants no test reaches count as survivors, mutants not run yet are only counted. A listed name that a test
now kills, or that names no mutant, is reported, so the list cannot silently go stale. ``--sample FILE``
counts only the mutants named in FILE (a sampled pass, ``scripts/mutation_sample.py``).
"""

from __future__ import annotations

import argparse
import collections
import fnmatch
import re
import sys
from pathlib import Path

from mutmut.__main__ import (
    SourceFileMutationData,
    get_diff_for_mutant,
    status_by_exit_code,
    walk_mutatable_files,
)

KILLED = {"killed", "timeout", "caught by type check"}
SURVIVED = {"survived", "no tests"}


def read_equivalent(path: Path) -> dict[str, str]:
    """``{mutant name: reason}`` from a TSV file (``#`` comments and blank lines skipped)."""
    if not path.exists():
        return {}
    equivalent = {}
    for number, line in enumerate(path.read_text("utf-8").splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        name, _, reason = line.partition("\t")
        if not reason.strip():
            raise SystemExit(
                f"{path}:{number}: expected '<mutant name>\\t<why it is equivalent>', got {line!r}"
            )
        equivalent[name.strip()] = reason.strip()
    return equivalent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--equivalent", type=Path, default=Path("docs/equivalent_mutants.tsv"))
    parser.add_argument("--diffs", type=Path, default=Path("mutants/survivors.diff"))
    parser.add_argument(
        "--sample", type=Path, help="count only the mutants named in this file (scripts/mutation_sample.py)"
    )
    args = parser.parse_args()
    equivalent = read_equivalent(args.equivalent)
    sample = set(args.sample.read_text("utf-8").split()) if args.sample else None

    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    survivors: list[tuple[str, Path]] = []
    killed_names: set[str] = set()
    all_names: set[str] = set()
    for path in walk_mutatable_files():
        data = SourceFileMutationData(path=path)
        data.load()
        for name, exit_code in data.exit_code_by_key.items():
            all_names.add(name)
            if sample is not None and name not in sample:
                continue
            status = status_by_exit_code[exit_code]
            row = counts[str(path)]
            row["mutants"] += 1
            if status in KILLED:
                row["killed"] += 1
                killed_names.add(name)
            elif status in SURVIVED:
                row["survived"] += 1
                if _is_equivalent(name, equivalent):
                    row["equivalent"] += 1
                else:
                    survivors.append((name, path))
            else:
                row["not run"] += 1

    print("| file | mutants | killed | survived | equivalent | not run | kill rate (non-equivalent) |")
    print("|---|---|---|---|---|---|---|")
    total: collections.Counter = collections.Counter()
    for path, row in sorted(counts.items()):
        total.update(row)
        print(_row(path, row))
    print(_row("**all**", total))

    # a listed pattern is stale when a test now kills a mutant it names, or when it names no mutant of a
    # module this pass mutated (patterns of other modules belong to another pass)
    modules = {_module(n) for n in all_names}
    stale = sorted(
        p
        for p in equivalent
        if any(fnmatch.fnmatchcase(n, p) for n in killed_names)
        or (_module(p) in modules and not any(fnmatch.fnmatchcase(n, p) for n in all_names))
    )
    if stale:
        print(f"\n{len(stale)} listed 'equivalent' mutants are killed or gone: {', '.join(stale[:10])}")
    args.diffs.parent.mkdir(parents=True, exist_ok=True)
    with args.diffs.open("w", encoding="utf-8") as out:
        for name, path in survivors:
            out.write(f"# {name}\n{get_diff_for_mutant(name, path=path)}\n")
    print(f"\n{len(survivors)} non-equivalent survivors; their diffs: {args.diffs}")
    return 0


def _module(mutant_name: str) -> str:
    """``benchmark.metrics`` of ``benchmark.metrics.x_fg_scores__mutmut_3`` (or of ``...xǁClassǁmethod...``)."""
    return re.split(r"\.x[_ǁ]", mutant_name, maxsplit=1)[0]


def _is_equivalent(name: str, equivalent: dict[str, str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in equivalent)


def _row(name: str, row: collections.Counter) -> str:
    considered = row["killed"] + row["survived"] - row["equivalent"]
    rate = f"{100 * row['killed'] / considered:.1f}%" if considered else "-"
    return (
        f"| {name} | {row['mutants']} | {row['killed']} | {row['survived']} | {row['equivalent']} "
        f"| {row['not run']} | {rate} |"
    )


if __name__ == "__main__":
    sys.exit(main())
