"""`make demo`: the pipeline as far as it exists, offline, on the smoke profile."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from manifests import ManifestStore, add_planned, load_groups, plan_scenes

DEMO_WORKDIR = Path(__file__).resolve().parent.parent / "demo-workdir"


def main() -> int:
    start = time.perf_counter()
    store = ManifestStore(DEMO_WORKDIR)
    groups = load_groups()[:4]
    created, existing = add_planned(store, plan_scenes(groups, per_group=2, seed=0))
    print(f"planned {created + existing} scenes for {len(groups)} concept groups ({created} new, {existing} reused)")
    for state, n in sorted(store.counts().by_state.items()):
        print(f"  {state:>10}: {n}")
    print(f"demo finished in {time.perf_counter() - start:.1f} s; work dir: {DEMO_WORKDIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
