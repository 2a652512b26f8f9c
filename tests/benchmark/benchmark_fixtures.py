"""Builders shared by the benchmark tests: an MCC parquet folder in the published layout, a
``gtsegs_ijcv.mat`` in its HDF5 layout, a PascalVOC tree, a stand-in AnchorDiff pipeline with
the contract's interface, and a simple colour-based grounding method."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
from PIL import Image

SIZE = 48
COLOURS = [(220, 30, 30), (30, 200, 30), (30, 30, 220)]


CATEGORIES = ("husky", "malamute", "wolf")


def make_mcc_rows(n_images: int = 5, size: int = SIZE, prefix: str = "img") -> list[dict]:
    """Rows of the published layout (format ``mcc-dataset/2``): 2- and 3-concept images,
    generated and web, one overlap.

    Concept k is a rectangle painted in ``COLOURS[k]`` on a grey background, its mask the
    rectangle; image 0's masks overlap (the second covers part of the first).
    """
    rows = []
    for index in range(n_images):
        k = 2 if index % 2 == 0 else 3
        pixels = np.full((size, size, 3), 110, dtype=np.uint8)
        masks, boxes = [], []
        for c in range(k):
            mask = np.zeros((size, size), dtype=bool)
            top = 4 + 13 * c
            mask[top : top + 11, 6 + index : 30 + index] = True
            if index == 0 and c == 1:
                mask[top - 5 : top + 11, 6:30] = True  # overlaps concept 0
            pixels[mask] = COLOURS[c]
            masks.append(mask)
            ys, xs = np.nonzero(mask)
            boxes.append(
                [
                    float(xs.min()),
                    float(ys.min()),
                    float(xs.max() - xs.min() + 1),
                    float(ys.max() - ys.min() + 1),
                ]
            )
        generated = index % 3 != 2
        concepts = ["husky", "wolf", "malamute"][:k]
        rows.append(
            {
                "image_id": f"{prefix}-{index:02d}",
                "image": Image.fromarray(pixels),
                "width": size,
                "height": size,
                "concepts": concepts,
                "objects": {
                    "concept": concepts,
                    "category_id": [CATEGORIES.index(c) for c in concepts],
                    "mask": [Image.fromarray(m).convert("1") for m in masks],
                    "bbox": boxes,
                    "area": [int(m.sum()) for m in masks],
                    "prompt_boxes": [[[0.0, 0.0, 1.0, 1.0]] for _ in range(k)],
                    "review": ["accepted"] * k,
                },
                "group": "dogs" if k == 2 else "wolves",
                "group_concepts": ["husky", "wolf", "malamute"],
                "domain": "animals",
                "num_concepts": k,
                "source": "generated" if generated else "web",
                "generator": "flux" if generated else None,
                "prompt": "a husky and a wolf" if generated else None,
                "seed": index if generated else None,
                "url": None if generated else f"https://example.org/{index}.jpg",
                "page_url": None,
                "licence": None if generated else "cc-by",
                "attribution": None if generated else "someone",
            }
        )
    return rows


def write_mcc_folder(path: Path, rows: list[dict], *, split: str = "test") -> Path:
    """Write ``rows`` as ``path/data/<split>-00000-of-00001.parquet`` with the published features
    (call again with another ``split`` for a two-split folder)."""
    from datasets import Dataset

    from manifests.publish import dataset_features

    features = dataset_features(CATEGORIES)
    columns = {name: [row[name] for row in rows] for name in features}
    (path / "data").mkdir(parents=True, exist_ok=True)
    Dataset.from_dict(columns, features=features).to_parquet(
        str(path / "data" / f"{split}-00000-of-00001.parquet")
    )
    return path


def write_format1_folder(path: Path, rows: list[dict]) -> Path:
    """The same rows in the format-1 layout (top-level masks / boxes / review, one test split)."""
    from datasets import Dataset, Features, List, Value
    from datasets import Image as ImageFeature

    features = Features(
        {
            "image_id": Value("string"), "image": ImageFeature(), "concepts": List(Value("string")),
            "masks": List(ImageFeature()), "boxes": List(List(List(Value("float64"), length=4))),
            "group": Value("string"), "num_concepts": Value("int32"), "source": Value("string"),
            "generator": Value("string"), "review": List(Value("string")),
        }
    )  # fmt: skip
    legacy = [
        {
            "image_id": r["image_id"], "image": r["image"], "concepts": r["concepts"],
            "masks": r["objects"]["mask"], "boxes": r["objects"]["prompt_boxes"], "group": r["group"],
            "num_concepts": r["num_concepts"], "source": r["source"], "generator": r["generator"],
            "review": r["objects"]["review"],
        }
        for r in rows
    ]  # fmt: skip
    (path / "data").mkdir(parents=True, exist_ok=True)
    Dataset.from_list(legacy, features=features).to_parquet(
        str(path / "data" / "test-00000-of-00001.parquet")
    )
    return path


def colour_method(image: Image.Image, concepts: list[str]) -> np.ndarray:
    """A decent method for the fixture: concept k's map is closeness to ``COLOURS[k]`` at 12x12."""
    small = np.asarray(image.convert("RGB").resize((12, 12), Image.BILINEAR), dtype=np.float64)
    maps = []
    for k in range(len(concepts)):
        distance = np.linalg.norm(small - np.array(COLOURS[k % 3], dtype=np.float64), axis=-1)
        maps.append(1.0 / (1.0 + distance / 40.0))
    return np.stack(maps)


@dataclass
class FakeOutput:
    heatmaps: np.ndarray
    masks: np.ndarray
    anchors: np.ndarray
    token_heatmaps: np.ndarray
    degenerate: np.ndarray
    timings: dict = field(default_factory=dict)
    record: None = None


@dataclass
class FakeRecord:
    a_ii: dict
    image: Image.Image
    concepts: list
    a_ci: np.ndarray  # (blocks, K, 1): only its number of blocks is read


class FakeAnchorDiff:
    """Stands in for ``anchordiff.AnchorDiff`` (same call signatures, colour-based maps)."""

    def __init__(self, blocks: int = 4, anchor_threshold: float = 0.5):
        self.blocks = blocks
        self.anchor_threshold = anchor_threshold
        self.graph_layers_recorded: list = []
        self.parent: FakeAnchorDiff | None = None
        self.config = {
            "model": "fake",
            "revision": "abc",
            "preset": "sd3",
            "dtype": "float32",
            "device": "cpu",
        }
        self.calls = 0
        self.record_calls = 0
        self.map_calls = 0

    def _output(self, image, concepts, layers, steps) -> FakeOutput:
        maps = colour_method(image, concepts)
        # settings change the maps a little, so a sweep has something to show
        offset = (0.0 if layers is None else 0.03 * sum(layers)) + 0.1 * (self.anchor_threshold - 0.5)
        maps = np.clip(maps + offset * np.sin(np.arange(144)).reshape(12, 12) + 1e-3 * steps, 0, None)
        flat = maps.reshape(len(concepts), -1).argmax(axis=1)
        anchors = np.stack([flat // 12, flat % 12], axis=1)
        low, high = maps.min(axis=(1, 2), keepdims=True), maps.max(axis=(1, 2), keepdims=True)
        token = (maps - low) / (high - low)
        return FakeOutput(
            heatmaps=token, masks=token > 0.5, anchors=anchors, token_heatmaps=token,
            degenerate=np.zeros(len(concepts), bool), timings={"total": 0.0},
        )  # fmt: skip

    def __call__(self, image, concepts, *, mode="invert", prompt=None, method="anchordiff", layers=None,
                 steps=160, gate_quantile=0.98, seed=0, return_record=False):  # fmt: skip
        self.calls += 1
        return self._output(image, concepts, layers, steps)

    def record(self, image, concepts, *, mode="invert", prompt=None, graph_layers=None, seed=0):
        self.record_calls += 1
        self.graph_layers_recorded.append(graph_layers)
        layers = range(self.blocks) if graph_layers == "all" else graph_layers or ()
        return FakeRecord(
            a_ii={layer: None for layer in layers}, image=image, concepts=list(concepts),
            a_ci=np.zeros((self.blocks, len(concepts), 1)),
        )  # fmt: skip

    def with_options(self, *, anchor_threshold: float) -> FakeAnchorDiff:
        """A copy whose maps shift with the anchor threshold (its map calls counted on this one)."""
        copy = FakeAnchorDiff(self.blocks, anchor_threshold)
        copy.parent = self
        return copy

    def heatmaps_from_record(
        self, record, *, method="anchordiff", layers=None, steps=160, gate_quantile=0.98
    ):
        counter = self.parent or self
        counter.map_calls += 1
        return self._output(record.image, record.concepts, layers, steps)


def write_gtsegs(path: Path, images: list[np.ndarray], masks: list[np.ndarray], synsets: list[str]) -> Path:
    """A ``gtsegs_ijcv.mat`` in its real MATLAB v7.3 layout: (N, 1) object references under
    /value; images stored (3, W, H) and masks (W, H) (column-major), gt cells add one
    reference level, ids are UTF-16 code units."""
    with h5py.File(path, "w") as f:
        refs = f.create_group("#refs#")
        n = len(images)
        img = f.create_dataset("value/img", (n, 1), dtype=h5py.ref_dtype)
        gt = f.create_dataset("value/gt", (n, 1), dtype=h5py.ref_dtype)
        ids = f.create_dataset("value/id", (n, 1), dtype=h5py.ref_dtype)
        for i, (image, mask, synset) in enumerate(zip(images, masks, synsets, strict=True)):
            img[i, 0] = refs.create_dataset(f"img{i}", data=image.transpose(2, 1, 0)).ref
            array = refs.create_dataset(f"gt{i}", data=mask.T.astype(np.uint8))
            cell = refs.create_dataset(f"cell{i}", (1, 1), dtype=h5py.ref_dtype)
            cell[0, 0] = array.ref
            gt[i, 0] = cell.ref
            chars = np.array([ord(c) for c in synset], dtype=np.uint16)[:, None]
            ids[i, 0] = refs.create_dataset(f"id{i}", data=chars).ref
    return path


def write_voc(root: Path) -> Path:
    """VOCdevkit/VOC2012 with three val images: one single-class (with a 255 border), one with
    two classes, one background only."""
    voc = root / "VOCdevkit" / "VOC2012"
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / folder).mkdir(parents=True)
    labels = {}
    single = np.zeros((24, 32), np.uint8)
    single[4:16, 6:20] = 11  # diningtable
    single[4, 5:21] = 255  # a boundary across the object
    labels["2007_000001"] = single
    two = np.zeros((24, 32), np.uint8)
    two[2:8, 2:8] = 12
    two[10:20, 10:20] = 15
    labels["2007_000002"] = two
    labels["2007_000003"] = np.zeros((24, 32), np.uint8)
    palette = [0] * 768
    palette[3 * 11 : 3 * 11 + 3] = [192, 128, 0]
    for image_id, label in labels.items():
        png = Image.fromarray(label)
        png.putpalette(palette)  # an L image with a palette becomes a P image of class indices
        png.save(voc / "SegmentationClass" / f"{image_id}.png")
        Image.fromarray(np.full((24, 32, 3), 90, np.uint8)).save(voc / "JPEGImages" / f"{image_id}.jpg")
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(labels) + "\n")
    return root
