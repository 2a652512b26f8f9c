"""Time `annotators.review.push` of 1,000 segmented records (with masks) to a local Label Studio, and print a table.

    .venv/bin/python scripts/bench_review_push.py [--records 1000] [--size 512] [--batch-size 100]
                                                 [--workdir DIR] [--url URL --token TOKEN]

Without --url the script starts a Label Studio server for the work dir (a temporary one by
default) with `annotators.labelstudio_server`, as `mcc labelstudio start` does, and stops it
afterwards; starting it is not timed, nor is building the manifest. Records: 70% two-concept,
30% three-concept, each concept an ellipse mask with its box; images are small noise PNGs
(the image bytes are not sent: local storage). A second push (nothing to do) and a pull with
no submitted annotation are timed too. CPU only.

The reference, in the same run: the same task payloads (built beforehand, not timed) imported with the
raw SDK call ``client.projects.import_tasks(project, request=batch, return_task_ids=True)`` in batches
of ``--batch-size`` into a fresh project with the same labeling config, before and after the push; the
table gives push's time over the faster of the two.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from annotators import labelstudio_format as fmt
from annotators import labelstudio_server
from annotators.review import _import_tasks, _task, connect, pull, push
from manifests import Concept, GeneratedSource, ManifestStore, Record, State, encode_mask

CONCEPTS = [("husky", "wolf", "alaskan malamute"), ("lemon", "lime", "citron"), ("crow", "raven", "rook")]


def build_records(store: ManifestStore, n: int, size: int, seed: int = 0) -> int:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    image = Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8))
    masks = 0
    for i in range(n):
        names = CONCEPTS[i % len(CONCEPTS)][: 3 if i % 10 < 3 else 2]
        concepts = []
        for _ in names:
            cx, cy = rng.uniform(0.2, 0.8, 2) * size
            ax, ay = rng.uniform(0.08, 0.2, 2) * size
            mask = ((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2 <= 1.0
            ys, xs = np.nonzero(mask)
            box = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
            concepts.append(Concept(name=names[len(concepts)], boxes=[box], mask=encode_mask(mask)))
        record = Record(
            id=f"gen-bench{i:05d}",
            group="-".join(names[:2]),
            concepts=concepts,
            source=GeneratedSource(template="t", setting="s", seed=i),
            state=State.segmented,
        )
        store.store_image(record, image)
        store.put(record)
        masks += len(concepts)
    return masks


def raw_import(
    url: str, token: str, store: ManifestStore, batch_size: int, via: str = "sdk"
) -> tuple[int, float]:
    """The reference: the records' task payloads imported batch by batch into a new project, with the plain
    SDK call (``via="sdk"``) or as push sends them (``"http"``: one ``json.dumps`` body per batch, without
    push's record work). Returns (tasks, seconds of the import calls)."""
    client = connect(url, token)
    project_id = client.projects.create(
        title=f"raw {via} {time.strftime('%H%M%S')}", label_config=fmt.LABEL_CONFIG
    ).id
    records = sorted(store.iter(), key=lambda r: r.id)
    tasks = [_task(r, store, f"/data/local-files/?d=bench/{r.image.path}") for r in records]
    started = time.perf_counter()
    for i in range(0, len(tasks), batch_size):
        batch = tasks[i : i + batch_size]
        if via == "sdk":
            ids = client.projects.import_tasks(project_id, request=batch, return_task_ids=True).task_ids
        else:
            ids = _import_tasks(client, url, token, project_id, batch)
        assert len(ids) == len(batch)
    return len(tasks), time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--size", type=int, default=512, help="image side in pixels")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--url", default=None)
    parser.add_argument("--token", default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="mcc-bench-review-"))
    started = None
    if args.url is None:
        print(f"starting Label Studio for {workdir} (not timed) ...", flush=True)
        t = time.perf_counter()
        started = labelstudio_server.start(workdir, port=labelstudio_server.free_port(), log=lambda m: None)
        print(f"  up in {time.perf_counter() - t:.1f} s", flush=True)
        url, token = started.url, started.token
    else:
        url, token = args.url, args.token
    store = ManifestStore(workdir / "bench")
    try:
        masks = build_records(store, args.records, args.size)
        project = f"bench {time.strftime('%H%M%S')}"
        rows = []
        raw_before = raw_import(url, token, store, args.batch_size)
        rows.append(("raw SDK import (before)", *raw_before))
        t = time.perf_counter()
        report = push(store, url=url, token=token, project=project, batch_size=args.batch_size)
        rows.append(("push (new tasks)", report.pushed, time.perf_counter() - t))
        pushed_s = rows[-1][2]
        raw_after = raw_import(url, token, store, args.batch_size)
        rows.append(("raw SDK import (after)", *raw_after))
        http = raw_import(url, token, store, args.batch_size, via="http")
        rows.append(("raw JSON import (as push)", *http))
        t = time.perf_counter()
        again = push(store, url=url, token=token, project=project, batch_size=args.batch_size)
        rows.append(("push again (no-op)", again.pushed, time.perf_counter() - t))
        t = time.perf_counter()
        pulled = pull(store, url=url, token=token, project=project)
        rows.append(("pull (nothing submitted)", pulled.pending, time.perf_counter() - t))
    finally:
        if started is not None:
            labelstudio_server.stop(workdir)

    print(
        f"\n{args.records} records, {masks} masks, {args.size}x{args.size} px, batch size {args.batch_size}, "
        f"images via {report.images}"
    )
    print(f"{'step':<26}{'tasks':>8}{'seconds':>10}{'tasks/s':>10}")
    for step, tasks, seconds in rows:
        print(f"{step:<26}{tasks:>8}{seconds:>10.1f}{(tasks / seconds if tasks else 0):>10.0f}")
    reference = min(raw_before[1], raw_after[1])
    print(f"push / raw SDK import: {pushed_s / reference:.2f}x (target <= 1.5x)")
    print(f"push / raw JSON import of the same bodies: {pushed_s / http[1]:.2f}x (push's own record work)")


if __name__ == "__main__":
    main()
