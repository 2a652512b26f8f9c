"""Publish the benchmark: a folder in the Hugging Face Hub's dataset layout, and its upload.

``build_dataset(store, out_dir, version=...)`` writes::

    out_dir/
      README.md                              dataset card (YAML front matter: configs, features, splits)
      LICENSE.md                             the terms of each source (the card's license_link)
      data/validation-00000-of-0000N.parquet shards of the validation split (images, masks embedded)
      data/test-00000-of-0000N.parquet       shards of the test split
      coco/instances_validation.json         each split as COCO (compressed RLE masks)
      coco/instances_test.json
      preview.png                            a grid of rows with their masks drawn over the image
      manifest.json                          version, build time, code version, record ids and splits

``datasets.load_dataset(out_dir, split="test")`` (or ``load_dataset("<org>/<name>")`` once
pushed) reads it with no loading script and restores the features (``dataset_features``).

The package, one module per concern:

- ``selection``: which records are publishable, and why the others are not;
- ``shards``: the features, one row per record, the parquet shards (``manifests.splits``
  decides each record's split);
- ``card``: the dataset card (README.md) and the preview grid;
- ``coco``: the same rows as a COCO instances file;
- ``build``: the folder (``build_dataset``), written atomically, and ``manifest.json``;
- ``hub``: the upload (``push_dataset``).

Determinism: the parquet shards, the card, the COCO file and the preview are functions of
the manifest (and the library versions) only: building twice from the same manifest gives
byte-identical files. The build time lives only in ``manifest.json``. Images are embedded
exactly as stored (their sha256 in ``manifest.json`` is the record's), masks as 1-bit PNG.

Record states are left alone: a build only reads the manifest, and ``manifest.json`` is
what says which records a version holds (there is no ``published`` state).
"""

from manifests.publish.build import BuildSummary, build_dataset, build_manifest, config_files
from manifests.publish.coco import coco_document, export_coco
from manifests.publish.hub import PushResult, hub_api, hub_token, push_dataset
from manifests.publish.selection import (
    REVIEWED_ONLY,
    WITH_UNREVIEWED,
    Exclusion,
    PublishableItem,
    PublishError,
    Selection,
    select_publishable,
)
from manifests.publish.shards import (
    CARD_PATH,
    LICENSE_PATH,
    MANIFEST_FORMAT,
    MANIFEST_PATH,
    SUBSETS,
    Catalogue,
    WrittenShard,
    catalogue_for,
    coco_path,
    dataset_features,
    plan_shards,
    row_for,
    write_shard,
)
from manifests.splits import DEFAULT_VALIDATION_FRACTION, SPLITS, assign_splits

__all__ = [
    "CARD_PATH",
    "DEFAULT_VALIDATION_FRACTION",
    "LICENSE_PATH",
    "MANIFEST_FORMAT",
    "MANIFEST_PATH",
    "REVIEWED_ONLY",
    "SPLITS",
    "SUBSETS",
    "Catalogue",
    "WrittenShard",
    "WITH_UNREVIEWED",
    "BuildSummary",
    "Exclusion",
    "PublishError",
    "PublishableItem",
    "PushResult",
    "Selection",
    "build_dataset",
    "assign_splits",
    "build_manifest",
    "catalogue_for",
    "coco_document",
    "coco_path",
    "config_files",
    "dataset_features",
    "export_coco",
    "hub_api",
    "hub_token",
    "plan_shards",
    "push_dataset",
    "row_for",
    "select_publishable",
    "write_shard",
]
