"""Time `build_dataset` on a synthetic manifest: by default 1,000 reviewed records of 1024 x 1024
images (70% two-concept, 30% three-concept: 2,300 masks), and print a table.

    .venv/bin/python scripts/bench_publish.py [--records 1000] [--size 1024] [--workdir DIR] [--load]

Images are photo-like PNGs (about 1.8 MB each, like FLUX.1-dev's 1024 px output): 40 distinct
pictures reused across records; masks are ellipses at varying places. Building the
manifest is not timed. CPU only: the build uses no accelerator.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from manifests import Concept, GeneratedSource, ImageInfo, ManifestStore, Record, State, encode_mask
from manifests.publish import build_dataset


def photo_like(rng: np.random.Generator, size: int) -> bytes:
    """A smooth random picture with fine noise, as PNG bytes (compresses like a photo)."""
    low = Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
    pixels = np.asarray(low.resize((size, size), Image.Resampling.BICUBIC)).astype(np.int16)
    pixels = np.clip(pixels + rng.integers(-6, 7, pixels.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def make_manifest(store: ManifestStore, records: int, size: int) -> int:
    """Write ``records`` reviewed records; returns the number of masks."""
    rng = np.random.default_rng(0)
    pictures = [photo_like(rng, size) for _ in range(40)]
    yy, xx = np.mgrid[:size, :size]
    masks = 0
    for index in range(records):
        k = 3 if index % 10 < 3 else 2
        names = ["siberian husky", "gray wolf", "alaskan malamute"][:k] if k == 3 else ["lemon", "lime"]
        data = pictures[index % len(pictures)]
        path = f"images/gen-{index:05d}.png"
        store.write_bytes(path, data)
        concepts = []
        for j, name in enumerate(names):
            cx = (j + 0.5) * size / k + rng.uniform(-0.05, 0.05) * size
            cy = size * rng.uniform(0.35, 0.65)
            rx, ry = size / (2.6 * k), size * rng.uniform(0.15, 0.3)
            mask = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
            box = (cx - rx, cy - ry, cx + rx, cy + ry)
            concepts.append(Concept(name=name, boxes=[box], mask=encode_mask(mask), review="accepted"))
        masks += k
        record = Record(
            id=f"gen-{index:05d}",
            group="husky-wolf-malamute" if k == 3 else "lemon-lime",
            concepts=concepts,
            source=GeneratedSource(
                template="side-by-side",
                setting="a field",
                seed=index,
                prompt="a photo",
                model="black-forest-labs/FLUX.1-dev",
                revision="main",
                steps=28,
                guidance=3.5,
                width=size,
                height=size,
            ),
            state=State.reviewed,
            image=ImageInfo(path=path, sha256=hashlib.sha256(data).hexdigest(), width=size, height=size),
        )
        store.put(record)
    return masks


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--workdir", type=Path, default=None, help="reuse/keep a manifest here")
    parser.add_argument("--load", action="store_true", help="also time load_dataset of the folder")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-publish-"))
    workdir = args.workdir or tmp / "work"
    store = ManifestStore(workdir)
    started = time.perf_counter()
    if len(store.ids()) != args.records:
        masks = make_manifest(store, args.records, args.size)
    else:
        masks = sum(r.num_concepts for r in store.iter())
    setup = time.perf_counter() - started

    out = tmp / "dataset"
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    summary = build_dataset(store, out, version="bench")
    build = time.perf_counter() - started
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    rows = [
        ("records / masks", f"{summary.rows} / {summary.masks} (manifest: {args.records} / {masks})"),
        ("image size", f"{args.size} x {args.size}"),
        ("cpu cores available", str(len(os.sched_getaffinity(0)))),
        ("manifest setup (not timed)", f"{setup:.1f} s"),
        ("build_dataset wall time", f"{build:.1f} s"),
        ("build_dataset CPU time (user+sys)", f"{cpu:.1f} s"),
        ("load average (1 min) after build", f"{os.getloadavg()[0]:.1f}"),
        ("images per second", f"{summary.rows / build:.1f}"),
        ("shards", str(len(summary.shards))),
        ("dataset folder size", f"{folder_bytes(out) / 1e6:.1f} MB"),
        ("  of which parquet", f"{sum(s.file_bytes for s in summary.shards) / 1e6:.1f} MB"),
        ("peak resident memory", f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB"),
        ("work dir images", f"{folder_bytes(Path(workdir) / 'images') / 1e6:.1f} MB"),
    ]
    if args.load:
        os.environ["HF_HUB_OFFLINE"] = "1"
        from datasets import load_dataset

        started = time.perf_counter()
        ds = load_dataset(str(out), split="test", cache_dir=str(tmp / "cache"))
        rows.append(
            ("load_dataset (first load)", f"{time.perf_counter() - started:.1f} s, {ds.num_rows} rows")
        )
    width = max(len(name) for name, _ in rows)
    print(f"{'measure':<{width}}  value\n{'-' * width}  {'-' * 40}")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    if args.workdir is None:
        shutil.rmtree(tmp)
    else:
        shutil.rmtree(out)


if __name__ == "__main__":
    main()
