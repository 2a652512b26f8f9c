"""The parquet shards of a published dataset: the features, one row per record, shard plans, writing.

Row order and shards: rows are sorted by (number of concepts, record id), and a shard
never mixes two- and three-concept rows, so the configs ``two_concepts`` and
``three_concepts`` are lists of whole shard files and ``default`` is all of them.
Images are embedded exactly as stored, masks as 1-bit PNG.
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from datasets import Features, Image, List, Value

from manifests.publish.selection import PublishableItem, PublishError, read_image_bytes
from manifests.record import GeneratedSource, WebSource
from manifests.store import ManifestStore

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
