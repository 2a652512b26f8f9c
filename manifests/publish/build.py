"""Build the dataset folder: shards, card, COCO, preview and ``manifest.json`` (see ``manifests.publish``)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from manifests.publish.card import CardContext, preview_grid, render_card, render_licence
from manifests.publish.coco import coco_document
from manifests.publish.selection import (
    Exclusion,
    PublishError,
    Selection,
    default_workers,
    select_publishable,
)
from manifests.publish.shards import (
    CARD_PATH,
    COLUMN_DOCS,
    LICENSE_PATH,
    MANAGED,
    MANIFEST_FORMAT,
    MANIFEST_PATH,
    PREVIEW_PATH,
    PREVIOUS_FORMATS,
    SUBSETS,
    Shard,
    WrittenShard,
    catalogue_for,
    coco_path,
    dataset_features,
    plan_shards,
    write_shard,
)
from manifests.splits import DEFAULT_VALIDATION_FRACTION, SPLITS, assign_splits
from manifests.store import ManifestStore
from manifests.version import code_version
from manifests.workdir import WorkDir


@dataclass
class BuildSummary:
    """What a build wrote and what it left out (every record of the manifest is counted
    once: in ``rows``, in ``excluded`` with a reason, or in ``skipped`` by state)."""

    out_dir: Path
    version: str
    include: tuple[str, ...]
    rows: int
    rows_by_subset: dict[str, int]
    rows_by_split: dict[str, int]
    masks: int
    shards: list[WrittenShard]
    excluded: list[Exclusion]
    skipped: dict[str, int]
    folder_bytes: int
    seconds: float
    files: list[str] = field(default_factory=list)

    @property
    def coco_paths(self) -> dict[str, Path]:
        """Split -> its COCO file written with the dataset (``coco/instances_<split>.json``)."""
        return {split: self.out_dir / coco_path(split) for split in self.rows_by_split}

    @property
    def excluded_by_reason(self) -> dict[str, int]:
        return dict(sorted(Counter(e.reason for e in self.excluded).items()))

    def __str__(self) -> str:
        lines = [
            f"MCC {self.version}: {self.rows} images ({', '.join(f'{n} {k}' for k, n in self.rows_by_subset.items())}), "
            f"{self.masks} masks, {len(self.shards)} shard(s), {self.folder_bytes / 1e6:.1f} MB in {self.out_dir} "
            f"({self.seconds:.1f} s)",
            "splits: " + ", ".join(f"{split} {n}" for split, n in self.rows_by_split.items()),
            f"admitted states: {', '.join(self.include)}",
        ]
        if self.skipped:
            lines.append(
                "not admitted (by state): " + ", ".join(f"{s} {n}" for s, n in sorted(self.skipped.items()))
            )
        lines.append(
            f"excluded: {len(self.excluded)}"
            + (
                ""
                if not self.excluded
                else " (" + ", ".join(f"{r} {n}" for r, n in self.excluded_by_reason.items()) + ")"
            )
        )
        lines.extend(f"  {e.record_id}: {e.reason}: {e.detail}" for e in self.excluded)
        return "\n".join(lines)


def _check_out_dir(out_dir: Path) -> None:
    """Refuse to write into a non-empty folder that is not the output of an earlier build.

    A folder with an MCC ``manifest.json`` is rebuilt: the entries in ``MANAGED`` are
    replaced, anything else (``.git``, files a user added) is left as it is and not pushed.
    """
    if out_dir.is_file():
        raise PublishError(f"--out {out_dir} is a file; give a folder (it is created if missing)")
    if not out_dir.exists():
        return
    hub_clone = {".git", ".gitattributes", ".cache", ".huggingface"}
    present = sorted(p.name for p in out_dir.iterdir() if p.name not in hub_clone)
    if not present:
        return
    try:
        previous = json.loads((out_dir / MANIFEST_PATH).read_text()).get("format")
    except (ValueError, OSError, AttributeError):
        previous = None
    if previous not in (MANIFEST_FORMAT, *PREVIOUS_FORMATS):
        raise PublishError(
            f"{out_dir} is not empty and is not an MCC dataset folder (it holds {present[:5]} but no MCC "
            f"{MANIFEST_PATH}); give an empty or new folder, or the folder of an earlier `mcc publish`"
        )


def _replace_managed(staging: Path, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in MANAGED:
        old = out_dir / name
        if old.is_dir():
            shutil.rmtree(old)
        elif old.exists():
            old.unlink()
        new = staging / name
        if new.exists():
            os.replace(new, old)


def _folder_bytes(folder: Path) -> int:
    return sum(
        p.stat().st_size
        for name in MANAGED
        for p in ([folder / name] if (folder / name).is_file() else (folder / name).rglob("*"))
        if p.is_file()
    )


def _review_stats(store: ManifestStore) -> dict[str, Any] | None:
    """``reviews/stats.json`` of the work dir (written by `mcc review stats`), if present and valid."""
    try:
        return json.loads(store.read_bytes(WorkDir.REVIEW_STATS))
    except (FileNotFoundError, OSError, ValueError):
        return None


def build_dataset(
    store: ManifestStore,
    out_dir: str | os.PathLike,
    *,
    include: tuple[str, ...] | list[str] = ("reviewed",),
    version: str = "0.1.0",
    shard_size: int = 200,
    repo_id: str | None = None,
    preview_rows: int = 8,
    workers: int | None = None,
    validation_fraction: float = DEFAULT_VALIDATION_FRACTION,
) -> BuildSummary:
    """Build the dataset folder from the manifest (layout in the module docstring).

    ``include``: record states admitted (``("reviewed",)`` for the benchmark; add
    ``"segmented"`` to admit machine masks, marked ``machine`` in the ``review`` column).
    ``shard_size``: at most this many rows per parquet shard. ``repo_id``: the Hub id the
    card's loading snippets name (a placeholder when None). Raises ``PublishError`` when
    the options are invalid, ``out_dir`` holds other files, or no record can be published;
    records that cannot be published are listed in the summary, never raised. ``workers``:
    threads for checking records and reading images (the output does not depend on it).
    ``validation_fraction``: share of the images in the ``validation`` split (stratified by
    group and number of concepts, ``manifests.splits``); 0 writes a ``test`` split only.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    workers = workers or default_workers()
    selection: Selection = select_publishable(store, include, workers=workers)
    if not selection.items:
        raise PublishError(
            f"no record of {store.workdir} can be published with states {list(selection.include)} "
            f"(not admitted by state: {dict(selection.skipped) or 'none'}; excluded: "
            f"{dict(selection.excluded_by_reason) or 'none'}). Review the segmented records first, "
            "or pass --include-unreviewed for an offline run."
        )
    try:
        splits = assign_splits(
            [it.id for it in selection.items],
            [(it.record.group, it.record.num_concepts) for it in selection.items],
            validation_fraction,
        )
    except ValueError as error:
        raise PublishError(str(error)) from None
    catalogue = catalogue_for(sorted(selection.items, key=lambda it: it.id))
    shards = plan_shards(selection.items, shard_size, splits)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out_dir.name}.build-", dir=out_dir.parent) as tmp:
        staging = Path(tmp)
        with ThreadPoolExecutor(max_workers=workers) as pool, ThreadPoolExecutor(max_workers=2) as writers:
            # two shards in flight: parquet encoding and file I/O release the GIL
            written = list(
                writers.map(lambda shard: write_shard(store, shard, staging, catalogue, pool=pool), shards)
            )
        ordered = [item for shard in shards for item in shard.items]
        rows_by_split = {
            split: n for split in SPLITS if (n := sum(s.rows for s in written if s.split == split))
        }
        (staging / "coco").mkdir(parents=True, exist_ok=True)
        for split in rows_by_split:
            items = [item for shard in shards if shard.split == split for item in shard.items]
            coco = coco_document(items, version=version, catalogue=catalogue)
            (staging / coco_path(split)).write_text(json.dumps(coco, separators=(",", ":")))

        preview = preview_grid(store, ordered, count=preview_rows)
        preview.save(staging / PREVIEW_PATH, format="PNG", optimize=False)

        context = CardContext(
            version=version,
            repo_id=repo_id,
            include=selection.include,
            items=ordered,
            configs=config_files(written),
            shards=written,
            features=dataset_features(catalogue.categories),
            column_docs=COLUMN_DOCS,
            excluded=selection.excluded,
            skipped=dict(selection.skipped),
            review_stats=_review_stats(store),
            preview_path=PREVIEW_PATH,
            coco_paths={split: coco_path(split) for split in rows_by_split},
            splits=rows_by_split,
            split_of=splits,
            validation_fraction=validation_fraction,
            license_path=LICENSE_PATH,
        )
        (staging / CARD_PATH).write_text(render_card(context))
        (staging / LICENSE_PATH).write_text(render_licence(context))
        manifest = build_manifest(
            selection, shards, written, version=version, validation_fraction=validation_fraction
        )
        (staging / MANIFEST_PATH).write_text(json.dumps(manifest, indent=1) + "\n")
        _replace_managed(staging, out_dir)

    per_k = Counter(item.record.num_concepts for item in ordered)
    rows_by_subset = {name: per_k[k] for k, name in SUBSETS.items() if per_k[k]}
    return BuildSummary(
        out_dir=out_dir,
        version=version,
        include=selection.include,
        rows=len(ordered),
        rows_by_subset=rows_by_subset,
        rows_by_split=rows_by_split,
        masks=sum(len(item.masks) for item in ordered),
        shards=written,
        excluded=selection.excluded,
        skipped=dict(sorted(selection.skipped.items())),
        folder_bytes=_folder_bytes(out_dir),
        seconds=time.perf_counter() - started,
        files=[
            *(s.path for s in written),
            *(coco_path(split) for split in rows_by_split),
            PREVIEW_PATH,
            CARD_PATH,
            LICENSE_PATH,
            MANIFEST_PATH,
        ],
    )


def config_files(shards: list[WrittenShard]) -> dict[str, dict[str, list[str]]]:
    """Config name -> split -> its shard files: ``default`` all, one config per subset present."""

    def by_split(chosen: list[WrittenShard]) -> dict[str, list[str]]:
        files = {split: [s.path for s in chosen if s.split == split] for split in SPLITS}
        return {split: paths for split, paths in files.items() if paths}

    configs = {"default": by_split(shards)}
    for k, name in SUBSETS.items():
        chosen = [s for s in shards if s.num_concepts == k]
        if chosen:
            configs[name] = by_split(chosen)
    return configs


def build_manifest(
    selection: Selection,
    shards: list[Shard],
    written: list[WrittenShard],
    *,
    version: str,
    validation_fraction: float = DEFAULT_VALIDATION_FRACTION,
) -> dict:
    """``manifest.json``: every row traced to its record, plus what was left out and why."""
    rows = []
    for shard in shards:
        for index, item in enumerate(shard.items):
            record = item.record
            rows.append(
                {
                    "image_id": record.id,
                    "split": shard.split,
                    "shard": shard.path,
                    "row": index,
                    "state": record.state.value,
                    "image_sha256": record.image.sha256,
                    "image_path": record.image.path,
                    "review": [c.review for c in record.concepts],
                }
            )
    return {
        "format": MANIFEST_FORMAT,
        "dataset_version": version,
        "build_time": datetime.now(UTC).isoformat(timespec="seconds"),
        "code_version": code_version(),
        "include": list(selection.include),
        "splits": {split: sum(s.rows for s in written if s.split == split) for split in SPLITS},
        "validation_fraction": validation_fraction,
        "split_rule": "stratified by (group, number of concepts); within a stratum images ranked by "
        "sha256(image_id), the first round(fraction x N) overall (largest remainder) go to validation",
        "configs": config_files(written),
        "shards": [
            {
                "path": s.path,
                "split": s.split,
                "num_concepts": s.num_concepts,
                "rows": s.rows,
                "bytes": s.file_bytes,
                "sha256": s.sha256,
            }
            for s in written
        ],
        "records": rows,
        "excluded": [
            {"record_id": e.record_id, "reason": e.reason, "detail": e.detail} for e in selection.excluded
        ],
        "not_admitted_by_state": dict(sorted(selection.skipped.items())),
    }


# -- the Hub ---------------------------------------------------------------------------
