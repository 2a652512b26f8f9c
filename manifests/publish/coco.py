"""The published records as a COCO instance-segmentation file (for COCO tools).

- ``images``: ``id`` 1..N in the dataset's row order, ``file_name`` ``<record id>.png``
  (the image as stored in the work dir's ``images/`` and embedded in the parquet shards),
  ``width``, ``height``, and ``mcc_id`` / ``group`` / ``source`` / ``sha256`` extras.
- ``categories``: one per concept name, ``supercategory`` its concept group, ids 1..C in
  (group, concept) order (the parquet's ``objects.category_id`` ClassLabel index + 1).
- ``annotations``: one per (image, concept): ``segmentation`` the compressed RLE of the
  manifest (``counts`` as text), ``bbox`` the mask's tight box as XYWH pixels, ``area`` in
  pixels, ``iscrowd`` 0, and ``mcc_review`` (accepted / edited / machine).

``pycocotools.coco.COCO(path).annToMask(ann)`` returns exactly the manifest's mask.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from manifests.publish.selection import PublishableItem, PublishError, select_publishable
from manifests.publish.shards import Catalogue, catalogue_for
from manifests.store import ManifestStore

CITATION_URL = "https://arxiv.org/abs/2605.26460"


def coco_document(
    items: list[PublishableItem], *, version: str, catalogue: Catalogue | None = None
) -> dict[str, Any]:
    """The COCO dict of checked records, in the given order (see the module docstring).

    ``catalogue``: the build's categories (every split of a build shares them); by default
    those of ``items``. COCO ``category_id`` = the parquet ``objects.category_id`` + 1.
    """
    catalogue = catalogue or catalogue_for(items)
    ordered = list(zip(catalogue.category_groups, catalogue.categories, strict=True))
    category_id = {name: index + 1 for index, name in enumerate(catalogue.categories)}

    images, annotations = [], []
    for image_index, item in enumerate(items, start=1):
        record = item.record
        images.append(
            {
                "id": image_index,
                "file_name": f"{record.id}.png",
                "width": record.image.width,
                "height": record.image.height,
                "mcc_id": record.id,
                "group": record.group,
                "source": record.source.kind,
                "sha256": record.image.sha256,
            }
        )
        for concept, mask in zip(record.concepts, item.masks, strict=True):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_index,
                    "category_id": category_id[concept.name],
                    "segmentation": {
                        "size": [int(v) for v in concept.mask.size],
                        "counts": concept.mask.counts,
                    },
                    "area": mask.area,
                    "bbox": list(mask.bbox),
                    "iscrowd": 0,
                    "mcc_review": concept.review,
                }
            )
    return {
        "info": {
            "description": "Multi-Concept Confusion (MCC) benchmark",
            "version": version,
            "url": CITATION_URL,
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": category_id[name], "name": name, "supercategory": group} for group, name in ordered
        ],
    }


def export_coco(
    store: ManifestStore,
    path: str | os.PathLike,
    *,
    include: tuple[str, ...] | list[str] = ("reviewed",),
    version: str = "0.1.0",
) -> tuple[Path, list]:
    """Write the COCO file of the publishable records of ``store`` to ``path``.

    Same selection and category ids as ``build_dataset``, all splits in one file (rows in
    (number of concepts, id) order; a build writes one file per split). Returns
    the path and the list of excluded records (``Exclusion``), which the file leaves out.
    """
    selection = select_publishable(store, include)
    if not selection.items:
        raise PublishError(
            f"no record of {store.workdir} can be published with states {list(selection.include)}"
        )
    items = sorted(selection.items, key=lambda it: (it.record.num_concepts, it.id))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    catalogue = catalogue_for(sorted(selection.items, key=lambda it: it.id))  # as build_dataset numbers them
    path.write_text(
        json.dumps(coco_document(items, version=version, catalogue=catalogue), separators=(",", ":"))
    )
    return path, selection.excluded
