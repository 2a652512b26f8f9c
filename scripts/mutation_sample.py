"""A seeded random sample of the generated mutants, for a mutation pass that fits in the time there is.

On 2 cores a mutant takes about 3 s (each one runs the tests that reach its function, tiny models included),
so the whole pass over the ~11,000 mutants of the listed files takes many hours. A uniform random sample per
file estimates each file's kill rate without bias (mutant sampling); ``scripts/mutation_report.py`` then
reads only the mutants that ran. Prints the sampled names, one a line, for ``mutmut run``::

    mutmut run $(python scripts/mutation_sample.py --fraction 0.1 --seed 0)

Run after ``mutmut`` has generated the mutants (any ``mutmut run``, even one stopped at once, does).
"""

from __future__ import annotations

import argparse
import random
import sys

from mutmut.__main__ import SourceFileMutationData, walk_mutatable_files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--fraction", type=float, default=0.1, help="share of each file's mutants, 0 < f <= 1"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prefix", default="", help="only mutants whose name starts with this")
    args = parser.parse_args()
    if not 0 < args.fraction <= 1:
        parser.error(f"--fraction must be in (0, 1], got {args.fraction}")
    rng = random.Random(args.seed)
    for path in walk_mutatable_files():
        data = SourceFileMutationData(path=path)
        data.load()
        names = sorted(name for name in data.exit_code_by_key if name.startswith(args.prefix))
        if names:
            for name in rng.sample(names, max(1, round(args.fraction * len(names)))):
                print(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
