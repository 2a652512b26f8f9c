"""The parquet shards of a published dataset: the features, one row per record, shard plans, writing.

Splits, row order and shards: every record belongs to one split (``manifests.splits``:
``validation`` and ``test``, disjoint by image). Within a split rows are sorted by (number of
concepts, record id), and a shard never mixes splits or two- and three-concept rows, so the
configs ``two_concepts`` and ``three_concepts`` are lists of whole shard files and ``default``
is all of them. Images are embedded exactly as stored, masks as 1-bit PNG.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from datasets import ClassLabel, Features, Image, List, Value
from datasets import Sequence as SequenceFeature

from manifests.publish.selection import PublishableItem, PublishError, read_image_bytes
from manifests.record import GeneratedSource, WebSource
from manifests.splits import SPLITS
from manifests.store import ManifestStore

DATA_DIR = "data"
PREVIEW_PATH = "preview.png"
MANIFEST_PATH = "manifest.json"
CARD_PATH = "README.md"
LICENSE_PATH = "LICENSE.md"
MANIFEST_FORMAT = "mcc-dataset/2"
PREVIOUS_FORMATS = ("mcc-dataset/1",)
"""Formats of earlier builds whose folder a new build may replace (1: one ``test`` split, masks,
boxes and review as top-level lists)."""
MANAGED = (DATA_DIR, "coco", CARD_PATH, LICENSE_PATH, PREVIEW_PATH, MANIFEST_PATH)
"""What a build owns in ``out_dir``; anything else there (``.git``, ...) is left alone."""

SUBSETS = {2: "two_concepts", 3: "three_concepts"}
MAX_ROW_GROUP_BYTES = 100 * 1024 * 1024
MAX_ROW_GROUP_ROWS = 100
CDC_OPTIONS = {"min_chunk_size": 256 * 1024, "max_chunk_size": 1024 * 1024, "norm_level": 0}
"""Content-defined chunking as `datasets` writes it: unchanged rows deduplicate on the Hub's
storage when a new version is pushed."""


def coco_path(split: str) -> str:
    """The COCO file of one split, relative to the dataset folder."""
    return f"coco/instances_{split}.json"


def dataset_features(categories: Sequence[str]) -> Features:
    """The features of one build; ``categories`` are its concept names in category-id order
    (the ``ClassLabel`` of ``objects.category_id``; COCO ``category_id`` = index + 1).

    One row per image, in the layout of the Hub's detection / segmentation sets: ``width``,
    ``height`` and an ``objects`` sequence (a dict of equal-length lists, one entry per
    concept, aligned with ``concepts``): ``concept``, ``category_id``, ``mask`` (1-bit PNG of
    the image's size, True = the concept), ``bbox`` (the mask's tight box, COCO XYWH floats in
    image pixels), ``area`` (mask pixels), ``prompt_boxes`` (the boxes Qwen2.5-VL gave SAM2,
    XYXY floats in image pixels; several per concept possible) and ``review``.
    ``generator``/``prompt``/``seed`` are set for ``source == "generated"``,
    ``url``/``page_url``/``licence``/``attribution`` for ``"web"``.
    """
    return Features(
        {
            "image_id": Value("string"),
            "image": Image(),
            "width": Value("int32"),
            "height": Value("int32"),
            "concepts": List(Value("string")),
            "objects": SequenceFeature(
                {
                    "concept": Value("string"),
                    "category_id": ClassLabel(names=list(categories)),
                    "mask": Image(),
                    "bbox": List(Value("float64"), length=4),
                    "area": Value("int64"),
                    "prompt_boxes": List(List(Value("float64"), length=4)),
                    "review": Value("string"),
                }
            ),
            "group": Value("string"),
            "group_concepts": List(Value("string")),
            "domain": Value("string"),
            "num_concepts": Value("int32"),
            "source": Value("string"),
            "generator": Value("string"),
            "prompt": Value("string"),
            "seed": Value("int64"),
            "url": Value("string"),
            "page_url": Value("string"),
            "licence": Value("string"),
            "attribution": Value("string"),
        }
    )


COLUMN_DOCS = {
    "image_id": "the record id in the MCC manifest (`gen-...` generated, `web-...` web)",
    "image": "the image (PNG as stored by the pipeline)",
    "width": "image width in pixels",
    "height": "image height in pixels",
    "concepts": "the 2 or 3 confusable concepts present in the image, the list a method is queried with",
    "objects": "one entry per concept, aligned with `concepts`: `concept`, `category_id` (ClassLabel over "
    "every concept of the build), `mask` (1-bit PNG, image size), `bbox` (the mask's tight box, COCO XYWH "
    "pixels), `area` (mask pixels), `prompt_boxes` (the Qwen2.5-VL boxes SAM2 was prompted with, XYXY pixels) "
    "and `review` (`accepted` human-checked and unchanged, `edited` human-corrected, `machine` not reviewed)",
    "group": "the confusable concept group (e.g. `husky-wolf-malamute`)",
    "group_concepts": "every concept of the group, including those not in this image",
    "domain": "the group's domain (e.g. `animals`)",
    "num_concepts": "2 or 3",
    "source": "`generated` or `web`",
    "generator": "generated images: the model and revision (`model@revision`)",
    "prompt": "generated images: the prompt",
    "seed": "generated images: the seed",
    "url": "web images: the image URL",
    "page_url": "web images: the page the image was found on",
    "licence": "web images: the licence stated by the source",
    "attribution": "web images: the attribution the licence requires",
}


@dataclass(frozen=True)
class Catalogue:
    """What a row needs beyond its record: category ids, each group's concepts and domain."""

    categories: tuple[str, ...]
    category_groups: tuple[str, ...]
    group_concepts: Mapping[str, tuple[str, ...]]
    domains: Mapping[str, str]

    def category_id(self, concept: str) -> int:
        return self.categories.index(concept)


def catalogue_for(items: Sequence[PublishableItem]) -> Catalogue:
    """Categories in (group, concept) order, as COCO numbers them; each group's concepts and
    domain from ``manifests/groups.yaml`` when the group is there, else the concepts its
    published records hold (in order of appearance) and domain ``unknown``."""
    from manifests.groups import load_groups

    registry = {group.id: group for group in load_groups()}
    seen: dict[str, list[str]] = {}
    for item in items:
        names = seen.setdefault(item.record.group, [])
        names.extend(n for n in item.record.concept_names if n not in names)
    group_concepts, domains = {}, {}
    for group, names in seen.items():
        known = registry.get(group)
        if known is not None and set(names) <= set(known.concepts):
            group_concepts[group], domains[group] = tuple(known.concepts), known.domain
        else:
            group_concepts[group], domains[group] = tuple(names), "unknown"
    pairs: dict[str, tuple[str, str]] = {}
    for item in items:
        for name in item.record.concept_names:
            pairs.setdefault(name, (item.record.group, name))
    ordered = sorted(pairs.values())
    return Catalogue(
        tuple(name for _, name in ordered), tuple(group for group, _ in ordered), group_concepts, domains
    )


# -- rows ------------------------------------------------------------------------------
def generator_name(source: GeneratedSource) -> str | None:
    """``model@revision`` (or the model alone when no revision is recorded)."""
    if not source.model:
        return None
    return f"{source.model}@{source.revision}" if source.revision else source.model


def row_for(item: PublishableItem, image_bytes: bytes, catalogue: Catalogue) -> dict[str, Any]:
    """The dataset row of one checked record (see ``dataset_features``)."""
    record = item.record
    source = record.source
    generated = isinstance(source, GeneratedSource)
    web = isinstance(source, WebSource)
    return {
        "image_id": record.id,
        "image": {"bytes": image_bytes, "path": f"{record.id}.png"},
        "width": record.image.width,
        "height": record.image.height,
        "concepts": record.concept_names,
        "objects": {
            "concept": record.concept_names,
            "category_id": [catalogue.category_id(c.name) for c in record.concepts],
            "mask": [{"bytes": m.png, "path": None} for m in item.masks],
            "bbox": [list(map(float, m.bbox)) for m in item.masks],
            "area": [int(m.area) for m in item.masks],
            "prompt_boxes": [[list(map(float, box)) for box in c.boxes] for c in record.concepts],
            "review": [c.review for c in record.concepts],
        },
        "group": record.group,
        "group_concepts": list(catalogue.group_concepts[record.group]),
        "domain": catalogue.domains[record.group],
        "num_concepts": record.num_concepts,
        "source": source.kind,
        "generator": generator_name(source) if generated else None,
        "prompt": source.prompt if generated else None,
        "seed": source.seed if generated else None,
        "url": source.url if web else None,
        "page_url": source.page_url if web else None,
        "licence": source.licence if web else None,
        "attribution": source.attribution if web else None,
    }


# -- shards ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Shard:
    """One parquet file: its path relative to the dataset folder, its split and the rows it holds."""

    path: str
    split: str
    num_concepts: int
    items: tuple[PublishableItem, ...]


def plan_shards(items: list[PublishableItem], shard_size: int, splits: Mapping[str, str]) -> list[Shard]:
    """Per split (``SPLITS`` order; ``splits`` maps record id -> split): rows sorted by
    (num_concepts, id), each subset cut into ceil(n / shard_size) shards of near-equal size,
    numbered within the split (``data/<split>-<index>-of-<total>.parquet``), two-concept first."""
    if shard_size < 1:
        raise PublishError(f"shard_size must be at least 1 row, got {shard_size}")
    shards = []
    for split in SPLITS:
        ordered = sorted(
            (it for it in items if splits[it.id] == split), key=lambda it: (it.record.num_concepts, it.id)
        )
        pieces: list[tuple[int, list[PublishableItem]]] = []
        for k in sorted({it.record.num_concepts for it in ordered}):
            subset = [it for it in ordered if it.record.num_concepts == k]
            count = -(-len(subset) // shard_size)
            bounds = [round(i * len(subset) / count) for i in range(count + 1)]
            pieces.extend((k, subset[a:b]) for a, b in zip(bounds, bounds[1:], strict=False))
        total = len(pieces)
        shards.extend(
            Shard(f"{DATA_DIR}/{split}-{index:05d}-of-{total:05d}.parquet", split, k, tuple(rows))
            for index, (k, rows) in enumerate(pieces)
        )
    return shards


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
    split: str
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
    store: ManifestStore, shard: Shard, folder: Path, catalogue: Catalogue, *, pool: ThreadPoolExecutor
) -> WrittenShard:
    """Write one parquet shard (schema with the `huggingface` features metadata). Images are
    read and re-checked against their sha256 by ``pool``'s threads."""
    images = pool.map(lambda item: _verified_image(store, item), shard.items)
    rows = [row_for(item, data, catalogue) for item, data in zip(shard.items, images, strict=True)]
    schema = dataset_features(catalogue.categories).arrow_schema
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
        shard.split,
        shard.num_concepts,
        table.num_rows,
        table.nbytes,
        len(data),
        hashlib.sha256(data).hexdigest(),
    )
