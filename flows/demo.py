"""`make demo`: the whole pipeline offline on the smoke profile, with random-weight miniatures.

1. starts the local Label Studio for `demo-workdir/` (creating its venv on first use);
2. runs the rebuild-dataset flow (plan, generate, localise, segment, gate, push to review);
3. runs the publish-dataset flow (machine masks admitted: nobody reviewed noise);
4. runs the score-benchmark flow with the tiny AnchorDiff and its baselines;
5. says where everything is. A second run reuses what exists (stages skip finished records).

`--no-review` (or MCC_DEMO_REVIEW=0) skips Label Studio: records go straight from the
quality gate to publishing, marked `machine`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
DEMO_WORKDIR = REPO / "demo-workdir"
LABEL_STUDIO_PORT = 8089


def main(argv: list[str] | None = None) -> int:
    from flows.commands.deploy import own_prefect_api

    with own_prefect_api():  # no Prefect server process outlives the demo
        return _demo(argv)


def _demo(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--no-review", action="store_true", help="skip Label Studio (records marked machine)")
    args = parser.parse_args(argv)
    review = not args.no_review and os.environ.get("MCC_DEMO_REVIEW", "1") != "0"

    from flows.config import load_profile
    from flows.pipeline import publish_dataset, rebuild_dataset, score_benchmark
    from manifests import ManifestStore

    start = time.perf_counter()
    workdir = DEMO_WORKDIR
    overrides: dict = {
        "workdir": str(workdir),
        "publish": {"out": str(workdir / "dataset")},
        "score": {"out": str(workdir / "reports")},
    }
    server = None
    if review:
        from annotators import labelstudio_server

        step("1/4 Label Studio (its own venv, SQLite under demo-workdir/labelstudio)")
        port = labelstudio_server.status(workdir)["port"] or (
            LABEL_STUDIO_PORT
            if labelstudio_server.port_is_free(LABEL_STUDIO_PORT)
            else labelstudio_server.free_port()
        )
        server = labelstudio_server.start(workdir, port=port)
        os.environ["LABEL_STUDIO_API_KEY"] = server.token
        overrides["review"] = {"mode": "labelstudio", "url": server.url}
    else:
        step("1/4 Label Studio skipped (--no-review): records are published with review status 'machine'")
    config = load_profile("smoke", **overrides)

    step(
        "2/4 rebuild-dataset flow: plan, generate (tiny FLUX), localise (tiny Qwen2.5-VL), "
        "segment (random SAM2), quality gate" + (", push to review" if review else "")
    )
    rebuilt = rebuild_dataset(config)
    print(f"    records by state: {rebuilt['states']}")
    if rebuilt.get("review"):
        print(f"    review push: {rebuilt['review']}")

    step("3/4 publish-dataset flow: Hugging Face dataset folder + COCO")
    published = publish_dataset(config)
    print(
        f"    {published['rows']} images ({published['rows_by_subset']}), {published['masks']} masks, "
        f"excluded {published['excluded'] or 'none'}"
    )

    step("4/4 score-benchmark flow: tiny AnchorDiff, cross-attention and ConceptAttention maps")
    reports = score_benchmark(config)

    counts = ManifestStore(workdir).counts()
    print()
    print("=" * 78)
    print('The models were random-weight miniatures ("tiny"): the images, boxes, masks and scores')
    print("are noise. This run proves every code path, not quality. See README for the GPU path.")
    print(f"work dir:        {workdir}  ({counts.total} records: {counts.by_state})")
    for name, folder in reports.items():
        print(f"report ({name}): {Path(folder) / 'report.md'}")
    if server is not None:
        print(f"review tasks:    {server.url}  (login {server.username} / {server.password})")
        print("                 stop it with: .venv/bin/mcc labelstudio stop --workdir demo-workdir")
    print(f"wall time:       {time.perf_counter() - start:.0f} s")
    print(
        f"load it:         datasets.load_dataset({str(Path(published['out']).relative_to(REPO))!r}, split='test')"
    )
    print(f"dataset folder:  {published['out']}")
    return 0


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
