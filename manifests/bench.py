"""The manifest store at scale; prints one table (figures, no assertions).

    python -m manifests.bench [--records 100000] [--keep DIR]

In one run, on fresh work dirs under the system's temporary folder (or ``--keep DIR``),
each figure beside the same question answered the literal way (the reference):

- ``mcc plan``: the whole command (a new process) planning ``--records`` scenes, rounded
  up to whole groups (``put_many``: one disk sync per batch, the record index written with
  them), against ``add_planned`` as it was: one ``exists`` + ``put`` per record (one fsync
  each), in this process.
- ``mcc status``: the whole command as a user runs it (a new process: start-up, imports,
  the listing, the table), with the record index up to date, after 1% of the records were
  rewritten by another writer, and with no index at all (its first run on an old work
  dir); against ``counts`` by opening and parsing every record, in this process.
- dedupe: ``ImageIndex.from_store``, the scraper's duplicate index over every image of the
  store (every record is given an image fingerprint for this row, perceptual hashes cached
  as after a scrape), against the same index built by opening every record.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.table import Table

from manifests import ImageInfo, ManifestStore, Record, load_groups, plan_scenes

console = Console(width=150)


def reference_add_planned(store: ManifestStore, specs) -> int:
    """The literal plan: per spec, ``exists`` then ``put`` (fsync per record)."""
    created = 0
    for spec in specs:
        if not store.exists(spec.record_id):
            store.put(spec.to_record())
            created += 1
    return created


def reference_get(store: ManifestStore, record_id: str) -> Record:
    """A record read the way ``get`` did before the record index: through fsspec."""
    return Record.model_validate_json(store.fs.cat_file(store.path(f"records/{record_id}.json")))


def reference_counts(store: ManifestStore) -> tuple[Counter, Counter]:
    """Counts by state and by rejection from opening and parsing every record."""
    by_state: Counter[str] = Counter()
    by_rejection: Counter[tuple[str, str]] = Counter()
    for record_id in store.ids():
        record = reference_get(store, record_id)
        by_state[record.state.value] += 1
        if record.rejection is not None:
            by_rejection[(record.rejection.stage, record.rejection.reason)] += 1
    return by_state, by_rejection


def reference_image_index(store: ManifestStore):
    """``ImageIndex`` built by opening every record (the hash cache still spares the images)."""
    from generators.perceptual_hash import from_hex
    from generators.web.index import INDEX_PATH, ImageIndex

    cache = json.loads(store.read_bytes(INDEX_PATH))
    index = ImageIndex()
    for record_id in store.ids():
        record = reference_get(store, record_id)
        if record.image is None:
            continue
        shas = [record.image.sha256] + [
            e.params["content_sha256"] for e in record.history if "content_sha256" in e.params
        ]
        index.add(record.id, shas, from_hex(cache[record.id]["phash"]))
    return index


def mcc_seconds(*arguments: str) -> tuple[float, str]:
    """Wall seconds and standard output of ``mcc ARGUMENTS`` in a new process."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", *arguments],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "120"},
    )
    return time.perf_counter() - started, done.stdout


def status_seconds(workdir: Path, records: int) -> float:
    """Wall seconds of ``mcc status`` on ``workdir``, whose printed total must be ``records``."""
    seconds, out = mcc_seconds("status", "--workdir", str(workdir))
    totals = re.findall(r"\btotal\b\D*?(\d[\d,]*)", out)
    if not totals or int(totals[-1].replace(",", "")) != records:
        raise AssertionError(f"mcc status of {workdir} does not count {records:,} records:\n{out}")
    return seconds


def table_row(question: str, seconds: float, reference_seconds: float | None, what: str) -> tuple[str, ...]:
    """The printed cells of one row: seconds to 2 decimals and the ratio reference / mcc (blank without
    a reference)."""
    if reference_seconds is None:
        return (question, f"{seconds:.2f}", "", "", what)
    return (
        question,
        f"{seconds:.2f}",
        f"{reference_seconds:.2f}",
        f"{reference_seconds / seconds:.1f}x",
        what,
    )


COLUMNS = (
    ("question", "left"),
    ("mcc", "right"),
    ("reference", "right"),
    ("reference / mcc", "right"),
    ("reference is", "left"),
)


def timed(function, *args):
    started = time.perf_counter()
    result = function(*args)
    return time.perf_counter() - started, result


def bench_shas(record_id: str) -> tuple[str, str]:
    """(stored image sha256, downloaded bytes sha256) of a bench record, derived from its id."""
    return tuple(hashlib.sha256(f"{record_id}{part}".encode()).hexdigest() for part in ("", "-download"))


def with_fingerprints(record: Record) -> Record:
    """``record`` with an image and, like a scraped record, the downloaded bytes' sha256 in its history
    (``bench_shas``; its state is left as it is)."""
    stored, downloaded = bench_shas(record.id)
    record.image = ImageInfo(path=f"images/{record.id}.png", sha256=stored, width=1024, height=1024)
    record.log("bench", "fingerprinted", params={"content_sha256": downloaded})
    return record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument(
        "--keep", type=Path, help="Work in this folder and keep it (default: a temporary one)."
    )
    args = parser.parse_args(argv)

    root = args.keep or Path(tempfile.mkdtemp(prefix="mcc-bench-store-"))
    root.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, float, float | None, str]] = []
    try:
        groups = load_groups()
        per_group = -(-args.records // len(groups))
        specs = plan_scenes(groups, per_group=per_group, seed=0)
        console.print(f"{len(specs)} scene specs ({per_group} per group); work dirs in {root}")
        workdir = root / "store"
        store, reference = ManifestStore(workdir), ManifestStore(root / "reference")
        seconds, _ = mcc_seconds(
            "plan", "--workdir", str(workdir), "--per-group", str(per_group), "--seed", "0"
        )
        reference_seconds, reference_created = timed(reference_add_planned, reference, specs)
        assert len(store.ids()) == reference_created == len(specs), (len(store.ids()), reference_created)
        rows.append(
            (
                f"mcc plan of {len(specs):,} records (new process)",
                seconds,
                reference_seconds,
                "exists + put (fsync) per record",
            )
        )

        reference_seconds, expected = timed(reference_counts, store)
        counts = store.counts()
        assert (Counter(counts.by_state), Counter(counts.by_rejection)) == expected
        rows.append(
            (
                "mcc status, index up to date (new process)",
                status_seconds(workdir, len(specs)),
                reference_seconds,
                "open and parse every record",
            )
        )
        changed = [store.get(i) for i in store.ids()[::100]]
        for record in changed:
            store.put(record.reject("bench", "changed_by_another_writer"))
        rows.append(
            (
                f"mcc status after {len(changed):,} records rewritten",
                status_seconds(workdir, len(specs)),
                None,
                "",
            )
        )
        os.unlink(store.path("indexes/records.json"))
        rows.append(
            (
                "mcc status with no index (first run: full read)",
                status_seconds(workdir, len(specs)),
                None,
                "",
            )
        )

        from generators.perceptual_hash import to_hex
        from generators.web.index import INDEX_PATH, ImageIndex

        store.put_many(with_fingerprints(store.get(i)) for i in store.ids())
        cache = {i: {"sha256": bench_shas(i)[0], "phash": to_hex(n)} for n, i in enumerate(store.ids())}
        store.write_bytes(INDEX_PATH, json.dumps(cache).encode())
        reference_seconds, expected_index = timed(reference_image_index, store)
        seconds, index = timed(ImageIndex.from_store, store)
        assert len(index) == len(expected_index) == len(specs)
        for record_id in store.ids():  # both indexes find each record by either of its hashes
            for built in (index, expected_index):
                assert [built.match(sha, 0, -1) for sha in bench_shas(record_id)] == [
                    (record_id, "identical bytes (sha256)")
                ] * 2, record_id
        rows.append(
            (f"dedupe index over {len(specs):,} images", seconds, reference_seconds, "open every record")
        )
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)

    table = Table(title=f"manifest store at {args.records:,} records, {os.cpu_count()} CPUs (seconds, wall)")
    for column, justify in COLUMNS:
        table.add_column(column, justify=justify)
    for row in rows:
        table.add_row(*table_row(*row))
    console.print(table)
    console.print(
        "mcc rows are whole commands in a new process (start-up and imports included, about 0.4 s); "
        "the reference rows run in this process, without start-up."
    )


if __name__ == "__main__":
    main()
