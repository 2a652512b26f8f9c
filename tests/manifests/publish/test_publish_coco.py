"""COCO export: pycocotools loads it and every annotation's mask is the manifest's mask."""

from __future__ import annotations

import json

import numpy as np
from pycocotools.coco import COCO

from manifests import State, decode_mask
from manifests.publish import build_dataset, coco_path
from manifests.publish.coco import export_coco


def test_coco_round_trips_every_mask(small_store, tmp_path):
    path, excluded = export_coco(small_store, tmp_path / "coco.json")
    assert excluded == []
    coco = COCO(str(path))
    reviewed = {r.id: r for r in small_store.iter(State.reviewed)}
    assert len(coco.getImgIds()) == len(reviewed) == 8
    assert len(coco.getAnnIds()) == sum(r.num_concepts for r in reviewed.values())

    categories = {c["name"]: c for c in coco.loadCats(coco.getCatIds())}
    assert categories["gray wolf"]["supercategory"] == "husky-wolf-malamute"
    assert categories["lime"]["supercategory"] == "lemon-lime"
    assert len(categories) == 5  # one per concept

    for image in coco.loadImgs(coco.getImgIds()):
        record = reviewed[image["mcc_id"]]
        assert image["file_name"] == f"{record.id}.png"
        assert (image["width"], image["height"]) == (record.image.width, record.image.height)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image["id"]))
        assert [coco.cats[a["category_id"]]["name"] for a in anns] == record.concept_names
        for ann, concept in zip(anns, record.concepts, strict=True):
            expected = decode_mask(concept.mask)
            assert np.array_equal(coco.annToMask(ann).astype(bool), expected)
            assert isinstance(ann["segmentation"]["counts"], str) and ann["iscrowd"] == 0
            assert ann["area"] == int(expected.sum())
            ys, xs = np.nonzero(expected)
            assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert ann["mcc_review"] == concept.review


def test_dataset_folder_carries_the_same_coco(small_store, tmp_path):
    build_dataset(small_store, tmp_path / "dataset", version="0.3.0", validation_fraction=0)
    path, _ = export_coco(small_store, tmp_path / "coco.json", version="0.3.0")
    assert (tmp_path / "dataset" / coco_path("test")).read_bytes() == path.read_bytes()
    document = json.loads(path.read_text())
    assert document["info"]["version"] == "0.3.0"
    # rows in the dataset's order: two-concept images first, then three-concept ones
    assert [i["mcc_id"] for i in document["images"]] == [
        r.id for r in sorted(small_store.iter(State.reviewed), key=lambda r: (r.num_concepts, r.id))
    ]
