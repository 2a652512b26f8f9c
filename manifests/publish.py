"""Publish the benchmark: a folder in the Hugging Face Hub's dataset layout, and its upload.

``build_dataset(store, out_dir, version=...)`` writes::

    out_dir/
      README.md                        dataset card (YAML front matter: configs, features, splits)
      data/test-00000-of-0000N.parquet shards, images and masks embedded
      coco/instances_test.json         the same rows as COCO (compressed RLE masks)
      preview.png                      a grid of rows with their masks drawn over the image
      manifest.json                    version, build time, code version, record ids, image sha256

``datasets.load_dataset(out_dir, split="test")`` (or ``load_dataset("<org>/<name>")`` once
pushed) reads it with no loading script and restores the features (``FEATURES``).

Row order and shards: rows are sorted by (number of concepts, record id), and a shard
never mixes two- and three-concept rows, so the configs ``two_concepts`` and
``three_concepts`` are lists of whole shard files and ``default`` is all of them.

Determinism: the parquet shards, the card, the COCO file and the preview are functions of
the manifest (and the library versions) only: building twice from the same manifest gives
byte-identical files. The build time lives only in ``manifest.json``. Images are embedded
exactly as stored (their sha256 in ``manifest.json`` is the record's), masks as 1-bit PNG.

Record states are left alone: a build only reads the manifest, and ``manifest.json`` is
what says which records a version holds (see ``select_publishable`` for how a record in
state ``published``, if another tool sets it, is admitted).
"""

from __future__ import annotations

import hashlib
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
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.parquet as pq
from datasets import Features, Image, List, Value

from manifests.card import CardContext, preview_grid, render_card
from manifests.coco import coco_document
from manifests.publishable import (
    Exclusion,
    PublishableItem,
    PublishError,
    Selection,
    default_workers,
    read_image_bytes,
    select_publishable,
)
from manifests.record import GeneratedSource, WebSource
from manifests.store import ManifestStore
from manifests.version import code_version

SPLIT = "test"
DATA_DIR = "data"
COCO_PATH = "coco/instances_test.json"
PREVIEW_PATH = "preview.png"
MANIFEST_PATH = "manifest.json"
CARD_PATH = "README.md"
MANIFEST_FORMAT = "mcc-dataset/1"
MANAGED = (DATA_DIR, "coco", CARD_PATH, PREVIEW_PATH, MANIFEST_PATH)
"""What a build owns in ``out_dir``; anything else there (``.git``, ...) is left alone."""

SUBSETS = {2: "two_concepts", 3: "three_concepts"}
MAX_ROW_GROUP_BYTES = 100 * 1024 * 1024
MAX_ROW_GROUP_ROWS = 100
CDC_OPTIONS = {"min_chunk_size": 256 * 1024, "max_chunk_size": 1024 * 1024, "norm_level": 0}
"""Content-defined chunking as `datasets` writes it: unchanged rows deduplicate on the Hub's
storage when a new version is pushed."""

FEATURES = Features(
    {
        "image_id": Value("string"),
        "image": Image(),
        "concepts": List(Value("string")),
        "masks": List(Image()),
        "boxes": List(List(List(Value("float64"), length=4))),
        "group": Value("string"),
        "num_concepts": Value("int32"),
        "source": Value("string"),
        "generator": Value("string"),
        "prompt": Value("string"),
        "seed": Value("int64"),
        "url": Value("string"),
        "page_url": Value("string"),
        "licence": Value("string"),
        "attribution": Value("string"),
        "review": List(Value("string")),
    }
)
"""One row per image. ``masks[k]``, ``boxes[k]`` and ``review[k]`` belong to ``concepts[k]``.
``masks``: 1-bit PNG of the image's size (True = the concept). ``boxes[k]``: the concept's
boxes, XYXY floats in image pixels. ``generator``/``prompt``/``seed`` are set for
``source == "generated"``, ``url``/``page_url``/``licence``/``attribution`` for ``"web"``."""

COLUMN_DOCS = {
    "image_id": "the record id in the MCC manifest (`gen-...` generated, `web-...` web)",
    "image": "the image (PNG as stored by the pipeline)",
    "concepts": "the 2 or 3 confusable concepts present in the image",
    "masks": "one binary mask per concept, aligned with `concepts` (1-bit PNG, image size)",
    "boxes": "per concept, its boxes as XYXY pixel coordinates of the image",
    "group": "the confusable concept group (e.g. `husky-wolf-malamute`)",
    "num_concepts": "2 or 3",
    "source": "`generated` or `web`",
    "generator": "generated images: the model and revision (`model@revision`)",
    "prompt": "generated images: the prompt",
    "seed": "generated images: the seed",
    "url": "web images: the image URL",
    "page_url": "web images: the page the image was found on",
    "licence": "web images: the licence stated by the source",
    "attribution": "web images: the attribution the licence requires",
    "review": "per concept: `accepted` (human-checked, unchanged), `edited` (human-corrected) or `machine`",
}


# -- rows ------------------------------------------------------------------------------
def generator_name(source: GeneratedSource) -> str | None:
    """``model@revision`` (or the model alone when no revision is recorded)."""
    if not source.model:
        return None
    return f"{source.model}@{source.revision}" if source.revision else source.model


def row_for(item: PublishableItem, image_bytes: bytes) -> dict[str, Any]:
    """The dataset row of one checked record (see ``FEATURES``)."""
    record = item.record
    source = record.source
    generated = isinstance(source, GeneratedSource)
    web = isinstance(source, WebSource)
    return {
        "image_id": record.id,
        "image": {"bytes": image_bytes, "path": f"{record.id}.png"},
        "concepts": record.concept_names,
        "masks": [{"bytes": m.png, "path": None} for m in item.masks],
        "boxes": [[list(map(float, box)) for box in c.boxes] for c in record.concepts],
        "group": record.group,
        "num_concepts": record.num_concepts,
        "source": source.kind,
        "generator": generator_name(source) if generated else None,
        "prompt": source.prompt if generated else None,
        "seed": source.seed if generated else None,
        "url": source.url if web else None,
        "page_url": source.page_url if web else None,
        "licence": source.licence if web else None,
        "attribution": source.attribution if web else None,
        "review": [c.review for c in record.concepts],
    }


# -- shards ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Shard:
    """One parquet file: its path relative to the dataset folder and the rows it holds."""

    path: str
    num_concepts: int
    items: tuple[PublishableItem, ...]


def plan_shards(items: list[PublishableItem], shard_size: int) -> list[Shard]:
    """Rows sorted by (num_concepts, id); each subset cut into ceil(n / shard_size) shards
    of near-equal size; shards numbered globally, two-concept shards first."""
    if shard_size < 1:
        raise PublishError(f"shard_size must be at least 1 row, got {shard_size}")
    ordered = sorted(items, key=lambda it: (it.record.num_concepts, it.id))
    pieces: list[tuple[int, list[PublishableItem]]] = []
    for k in sorted({it.record.num_concepts for it in ordered}):
        subset = [it for it in ordered if it.record.num_concepts == k]
        count = -(-len(subset) // shard_size)
        bounds = [round(i * len(subset) / count) for i in range(count + 1)]
        pieces.extend((k, subset[a:b]) for a, b in zip(bounds, bounds[1:], strict=False))
    total = len(pieces)
    return [
        Shard(
            path=f"{DATA_DIR}/{SPLIT}-{index:05d}-of-{total:05d}.parquet", num_concepts=k, items=tuple(rows)
        )
        for index, (k, rows) in enumerate(pieces)
    ]


def _column_options(schema: pa.Schema) -> dict[str, Any]:
    """Embedded file bytes (image and mask PNGs) are stored plain and uncompressed (PNG is
    compressed already); every other leaf column gets snappy and dictionary encoding."""
    compression: dict[str, str] = {}
    encoding: dict[str, str] = {}
    dictionary: list[str] = []

    def leaves(path: str, pa_type: pa.DataType) -> list[str]:
        if pa.types.is_struct(pa_type):
            return [leaf for f in pa_type for leaf in leaves(f"{path}.{f.name}", f.type)]
        if (
            pa.types.is_list(pa_type)
            or pa.types.is_large_list(pa_type)
            or pa.types.is_fixed_size_list(pa_type)
        ):
            return leaves(f"{path}.list.element", pa_type.value_type)
        return [path]

    for schema_field in schema:
        for leaf in leaves(schema_field.name, schema_field.type):
            if leaf.endswith(".bytes"):
                compression[leaf] = "none"
                encoding[leaf] = "PLAIN"
            else:
                compression[leaf] = "snappy"
                dictionary.append(leaf)
    return {"compression": compression, "column_encoding": encoding, "use_dictionary": dictionary}


@dataclass(frozen=True)
class WrittenShard:
    path: str
    num_concepts: int
    rows: int
    num_bytes: int  # in-memory (arrow) size, as `dataset_info` reports it
    file_bytes: int
    sha256: str


def _verified_image(store: ManifestStore, item: PublishableItem) -> bytes:
    data = read_image_bytes(store, item.record)
    if hashlib.sha256(data).hexdigest() != item.record.image.sha256:
        raise PublishError(
            f"image of {item.id} changed while the dataset was being built; run the build again"
        )
    return data


def write_shard(
    store: ManifestStore, shard: Shard, folder: Path, *, pool: ThreadPoolExecutor
) -> WrittenShard:
    """Write one parquet shard (schema with the `huggingface` features metadata). Images are
    read and re-checked against their sha256 by ``pool``'s threads."""
    images = pool.map(lambda item: _verified_image(store, item), shard.items)
    rows = [row_for(item, data) for item, data in zip(shard.items, images, strict=True)]
    schema = FEATURES.arrow_schema
    table = pa.Table.from_pylist(rows, schema=schema)
    row_bytes = max(1, table.nbytes // max(1, table.num_rows))
    row_group = max(1, min(MAX_ROW_GROUP_ROWS, MAX_ROW_GROUP_BYTES // row_bytes))
    target = folder / shard.path
    target.parent.mkdir(parents=True, exist_ok=True)
    with pq.ParquetWriter(
        target,
        schema,
        use_content_defined_chunking=CDC_OPTIONS,
        write_page_index=True,
        **_column_options(schema),
    ) as writer:
        writer.add_key_value_metadata({"content_defined_chunking": json.dumps(CDC_OPTIONS)})
        writer.write_table(table, row_group_size=row_group)
    data = target.read_bytes()
    return WrittenShard(
        shard.path,
        shard.num_concepts,
        table.num_rows,
        table.nbytes,
        len(data),
        hashlib.sha256(data).hexdigest(),
    )


# -- the build -------------------------------------------------------------------------
@dataclass
class BuildSummary:
    """What a build wrote and what it left out (every record of the manifest is counted
    once: in ``rows``, in ``excluded`` with a reason, or in ``skipped`` by state)."""

    out_dir: Path
    version: str
    include: tuple[str, ...]
    rows: int
    rows_by_subset: dict[str, int]
    masks: int
    shards: list[WrittenShard]
    excluded: list[Exclusion]
    skipped: dict[str, int]
    folder_bytes: int
    seconds: float
    files: list[str] = field(default_factory=list)

    @property
    def coco_path(self) -> Path:
        """The COCO file written with the dataset (``coco/instances_test.json`` in ``out_dir``)."""
        return self.out_dir / COCO_PATH

    @property
    def excluded_by_reason(self) -> dict[str, int]:
        return dict(sorted(Counter(e.reason for e in self.excluded).items()))

    def __str__(self) -> str:
        lines = [
            f"MCC {self.version}: {self.rows} images ({', '.join(f'{n} {k}' for k, n in self.rows_by_subset.items())}), "
            f"{self.masks} masks, {len(self.shards)} shard(s), {self.folder_bytes / 1e6:.1f} MB in {self.out_dir} "
            f"({self.seconds:.1f} s)",
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
    if previous != MANIFEST_FORMAT:
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
        return json.loads(store.read_bytes("reviews/stats.json"))
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
) -> BuildSummary:
    """Build the dataset folder from the manifest (layout in the module docstring).

    ``include``: record states admitted (``("reviewed",)`` for the benchmark; add
    ``"segmented"`` to admit machine masks, marked ``machine`` in the ``review`` column).
    ``shard_size``: at most this many rows per parquet shard. ``repo_id``: the Hub id the
    card's loading snippets name (a placeholder when None). Raises ``PublishError`` when
    the options are invalid, ``out_dir`` holds other files, or no record can be published;
    records that cannot be published are listed in the summary, never raised. ``workers``:
    threads for checking records and reading images (the output does not depend on it).
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
    shards = plan_shards(selection.items, shard_size)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out_dir.name}.build-", dir=out_dir.parent) as tmp:
        staging = Path(tmp)
        with ThreadPoolExecutor(max_workers=workers) as pool, ThreadPoolExecutor(max_workers=2) as writers:
            # two shards in flight: parquet encoding and file I/O release the GIL
            written = list(writers.map(lambda shard: write_shard(store, shard, staging, pool=pool), shards))
        ordered = [item for shard in shards for item in shard.items]

        coco = coco_document(ordered, version=version)
        (staging / COCO_PATH).parent.mkdir(parents=True, exist_ok=True)
        (staging / COCO_PATH).write_text(json.dumps(coco, separators=(",", ":")))

        preview = preview_grid(store, ordered, count=preview_rows)
        preview.save(staging / PREVIEW_PATH, format="PNG", optimize=False)

        context = CardContext(
            version=version,
            repo_id=repo_id,
            include=selection.include,
            items=ordered,
            configs=config_files(written),
            shards=written,
            features=FEATURES,
            column_docs=COLUMN_DOCS,
            excluded=selection.excluded,
            skipped=dict(selection.skipped),
            review_stats=_review_stats(store),
            preview_path=PREVIEW_PATH,
            coco_path=COCO_PATH,
            split=SPLIT,
        )
        (staging / CARD_PATH).write_text(render_card(context))
        (staging / MANIFEST_PATH).write_text(
            json.dumps(build_manifest(selection, shards, written, version=version), indent=1) + "\n"
        )
        _replace_managed(staging, out_dir)

    per_k = Counter(item.record.num_concepts for item in ordered)
    rows_by_subset = {name: per_k[k] for k, name in SUBSETS.items() if per_k[k]}
    return BuildSummary(
        out_dir=out_dir,
        version=version,
        include=selection.include,
        rows=len(ordered),
        rows_by_subset=rows_by_subset,
        masks=sum(len(item.masks) for item in ordered),
        shards=written,
        excluded=selection.excluded,
        skipped=dict(sorted(selection.skipped.items())),
        folder_bytes=_folder_bytes(out_dir),
        seconds=time.perf_counter() - started,
        files=[*(s.path for s in written), COCO_PATH, PREVIEW_PATH, CARD_PATH, MANIFEST_PATH],
    )


def config_files(shards: list[WrittenShard]) -> dict[str, list[str]]:
    """Config name -> its shard files: ``default`` all, one config per subset present."""
    configs = {"default": [s.path for s in shards]}
    for k, name in SUBSETS.items():
        files = [s.path for s in shards if s.num_concepts == k]
        if files:
            configs[name] = files
    return configs


def build_manifest(
    selection: Selection, shards: list[Shard], written: list[WrittenShard], *, version: str
) -> dict:
    """``manifest.json``: every row traced to its record, plus what was left out and why."""
    rows = []
    for shard in shards:
        for index, item in enumerate(shard.items):
            record = item.record
            rows.append(
                {
                    "image_id": record.id,
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
        "split": SPLIT,
        "configs": config_files(written),
        "shards": [
            {
                "path": s.path,
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
class HubApi(Protocol):
    """The part of ``huggingface_hub.HfApi`` that ``push_dataset`` uses (tests pass a fake)."""

    def create_repo(self, repo_id: str, **kwargs: Any) -> Any: ...
    def list_repo_refs(self, repo_id: str, **kwargs: Any) -> Any: ...
    def upload_folder(self, **kwargs: Any) -> Any: ...
    def create_tag(self, repo_id: str, **kwargs: Any) -> Any: ...


@dataclass(frozen=True)
class PushResult:
    repo_id: str
    tag: str
    commit: str | None
    url: str | None


def hub_token(token: str | None = None) -> str:
    """``token`` or ``HF_TOKEN``; raises ``PublishError`` saying how to get one when neither is set."""
    token = token or os.environ.get("HF_TOKEN")
    if not token:
        raise PublishError(
            "pushing needs a Hugging Face token with write access in HF_TOKEN "
            "(create one at https://huggingface.co/settings/tokens); nothing was uploaded"
        )
    return token


def hub_api(token: str | None = None) -> HubApi:
    """A ``huggingface_hub.HfApi`` authenticated with ``hub_token(token)``."""
    from huggingface_hub import HfApi

    return HfApi(token=hub_token(token))


def push_dataset(
    out_dir: str | os.PathLike,
    repo_id: str,
    *,
    tag: str,
    private: bool = False,
    api: HubApi | None = None,
    token: str | None = None,
) -> PushResult:
    """Upload a built folder to the Hub dataset repo ``repo_id`` and tag the commit.

    Creates the repo if needed (``repo_type="dataset"``). Fails before uploading anything
    when ``tag`` already exists (bump the version instead). Shards, COCO file and card of an
    earlier version that this build does not have are deleted in the same commit (a stale
    shard would otherwise join the ``data/test-*`` glob). The token comes from ``token`` or
    the ``HF_TOKEN`` environment variable.
    """
    out_dir = Path(out_dir)
    manifest_file = out_dir / MANIFEST_PATH
    if not manifest_file.exists():
        raise PublishError(
            f"{out_dir} has no {MANIFEST_PATH}: build it first with `mcc publish --out {out_dir}`"
        )
    manifest = json.loads(manifest_file.read_text())
    if api is None:
        api = hub_api(token)
    repo = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    refs = api.list_repo_refs(repo_id, repo_type="dataset")
    if any(getattr(t, "name", None) == tag for t in getattr(refs, "tags", []) or []):
        raise PublishError(f"{repo_id} already has tag {tag!r}; publish a new version with --version/--tag")
    commit = api.upload_folder(
        repo_id=repo_id,
        repo_type="dataset",
        folder_path=str(out_dir),
        allow_patterns=[f"{DATA_DIR}/*.parquet", "coco/*", CARD_PATH, PREVIEW_PATH, MANIFEST_PATH],
        delete_patterns=[f"{DATA_DIR}/*.parquet", "coco/*"],
        commit_message=f"MCC {manifest['dataset_version']} ({len(manifest['records'])} images)",
        commit_description=f"Built by `mcc publish` with code {manifest['code_version']} at {manifest['build_time']}.",
    )
    oid = getattr(commit, "oid", None)
    api.create_tag(
        repo_id,
        tag=tag,
        repo_type="dataset",
        revision=oid,
        tag_message=f"MCC dataset version {manifest['dataset_version']}",
    )
    return PushResult(repo_id=repo_id, tag=tag, commit=oid, url=str(repo) if repo is not None else None)
