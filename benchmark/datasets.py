"""Benchmark datasets as one uniform sample type.

Three loaders, each an indexable dataset of ``Sample`` objects:

- ``MCCDataset``: the Multi-Concept Confusion benchmark through ``datasets.load_dataset``
  (a local folder in the Hub layout, or a Hub repo id), configs ``default`` /
  ``two_concepts`` / ``three_concepts``, split ``test``; scored with the fg metrics.
- ``ImageNetSegmentation``: ``gtsegs_ijcv.mat`` (MATLAB v7.3 = HDF5; ``/value/img``,
  ``/value/gt``, ``/value/id`` hold object references); scored with the standard protocol.
- ``VOCSingleClass``: PascalVOC 2012 ``val`` images whose ``SegmentationClass`` label has
  exactly one foreground class (255 = ignored); standard protocol.

``open_dataset(path_or_repo)`` picks the loader from the path. A dataset exposes
``sample_keys()`` (cheap: sample ids and concept counts, no image decoding, so a resumed run skips
finished samples for free) and ``dataset[i]`` (decodes one ``Sample``).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from PIL import Image

ScoringProtocol = Literal["fg", "binary"]
"""``fg``: the MCC metrics (``fg_scores``); ``binary``: the standard single-concept protocol."""

MCC_CONFIGS = {"default": None, "two_concepts": 2, "three_concepts": 3}
"""MCC config name -> the ``num_concepts`` it keeps (None: all), as in the dataset card."""

MCC_REQUIRED_COLUMNS = ("image_id", "image", "concepts")
"""Plus the masks: ``objects`` (format ``mcc-dataset/2``) or ``masks`` (format 1)."""
TAG_COLUMNS = ("source", "group", "domain")
"""MCC columns copied into each sample's tags (with ``num_concepts``)."""

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)  # fmt: skip
"""PascalVOC label index -> class (index 255 = boundary / ignored)."""

VOC_QUERY_NAMES = {"diningtable": "dining table", "pottedplant": "potted plant", "tvmonitor": "tv monitor"}
"""The text queried for VOC classes whose label is not a phrase; others are queried as named."""


class MissingSplitError(ValueError):
    """The dataset has no split of that name (e.g. ``validation`` in a build made before splits)."""


class InvalidSample(ValueError):
    """A dataset row that cannot be scored (e.g. a mask of the wrong size); the runner records it."""


def safe_name(sample_id: str) -> str:
    """A file name for a sample id (heat maps are saved as ``<safe_name>.npz``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", sample_id)[:120]


@dataclass(frozen=True)
class Sample:
    """One image of a benchmark with its queried concepts and ground truth.

    image: RGB PIL image as stored by the dataset.
    concepts: the concepts queried together, in order (K >= 1).
    masks: (K, H, W) bool, ``masks[k]`` the ground truth of ``concepts[k]`` in the image's
        pixels (H, W = image height, width).
    tags: subset labels, e.g. ``{"num_concepts": "2", "source": "generated", "group": ...}``.
    ignore: (H, W) bool pixels left out of scoring (VOC label 255), or None.
    """

    sample_id: str
    image: Image.Image
    concepts: tuple[str, ...]
    masks: np.ndarray
    tags: Mapping[str, str] = field(default_factory=dict)
    ignore: np.ndarray | None = None


@dataclass(frozen=True)
class SampleKey:
    """What the runner needs to know about a sample before decoding it.

    tags: the subset tags known without decoding (MCC: ``num_concepts``, ``source``,
        ``group``), used to stratify ``--limit``.
    """

    sample_id: str
    num_concepts: int
    tags: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)


class BenchmarkDataset(Protocol):
    """What ``evaluate`` needs from a dataset."""

    name: str
    protocol: ScoringProtocol

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Sample: ...

    def sample_keys(self) -> list[SampleKey]: ...

    def describe(self) -> dict[str, Any]: ...


def _mask_from_image(mask: Image.Image) -> np.ndarray:
    """A mask image (1-bit, L or P) -> (H, W) bool: ``True`` where the pixel is non-zero."""
    if mask.mode == "1":
        return np.array(mask, dtype=bool)
    if len(mask.getbands()) > 1:
        mask = mask.convert("L")
    return np.asarray(mask) != 0


class SampleList:
    """A dataset from samples already in memory (tests, or a user's own data)."""

    def __init__(self, samples: Sequence[Sample], *, name: str = "samples", protocol: ScoringProtocol = "fg"):
        self.samples = list(samples)
        self.name = name
        self.protocol = protocol

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        return self.samples[index]

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.samples)

    def sample_keys(self) -> list[SampleKey]:
        return [SampleKey(s.sample_id, len(s.concepts), dict(s.tags)) for s in self.samples]

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "protocol": self.protocol, "samples": len(self.samples)}


# --------------------------------------------------------------------------------------------
# MCC
# --------------------------------------------------------------------------------------------


class MCCDataset:
    """The MCC benchmark via ``datasets.load_dataset`` (images and masks decoded per sample).

    source: a local folder in the Hub layout (``data/test-*.parquet`` + README card) or a Hub
        repo id (read from the local Hugging Face cache when offline).
    config: ``default`` (all images), ``two_concepts`` or ``three_concepts``; the filter is
        applied here on the ``num_concepts`` column, exactly what the card's configs select.
    split: ``test`` (report) or ``validation`` (tune); MissingSplitError when absent.
    Columns used: ``image_id``, ``image``, ``concepts``, the masks aligned with ``concepts``
    (``objects["mask"]``, or the ``masks`` column of format-1 builds), the review status
    (``objects["review"]`` / ``review``), and for subsets ``num_concepts``, ``source``, ``group``.
    ``describe()`` names the dataset version, build code version and mask review counts
    (from ``manifest.json`` and the review column), which every report prints.
    """

    protocol: ScoringProtocol = "fg"

    def __init__(
        self,
        source: str | os.PathLike,
        *,
        config: str = "default",
        split: str = "test",
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
    ):
        import datasets  # imported here: the metrics never need it

        if config not in MCC_CONFIGS:
            raise ValueError(f"unknown MCC config {config!r}; choose one of {', '.join(MCC_CONFIGS)}")
        self.source = str(source)
        self.config = config
        self.split = split
        self.revision = revision
        try:
            table = datasets.load_dataset(
                self.source,
                split=split,
                revision=revision,
                cache_dir=None if cache_dir is None else str(cache_dir),
            )
        except ValueError as error:
            if "Unknown split" not in str(error):
                raise ValueError(
                    f"cannot load the MCC dataset from {self.source!r} (split {split!r}): {error}"
                ) from error
            raise MissingSplitError(f"{self.source!r} has no {split!r} split ({error})") from error
        except OSError as error:  # missing folder, unknown repo, offline without a cache
            raise ValueError(
                f"cannot load the MCC dataset from {self.source!r} (split {split!r}): {error}. Give a folder "
                "built by `mcc publish` or a Hub repo id (offline: one already in the Hugging Face cache)."
            ) from error
        missing = [c for c in MCC_REQUIRED_COLUMNS if c not in table.column_names]
        if "objects" not in table.column_names and "masks" not in table.column_names:
            missing.append("objects")
        if missing:
            raise ValueError(
                f"{self.source!r} is not an MCC dataset: columns {missing} are missing "
                f"(it has {table.column_names})"
            )
        self._objects = "objects" in table.column_names
        wanted = MCC_CONFIGS[config]
        meta = table.select_columns(
            [c for c in ("image_id", "concepts", "num_concepts", *TAG_COLUMNS) if c in table.column_names]
        )
        rows = meta.to_dict()
        counts = rows.get("num_concepts") or [len(c) for c in rows["concepts"]]
        indices = [i for i, n in enumerate(counts) if wanted is None or n == wanted]
        self._table = table.select(indices) if len(indices) != len(table) else table
        self._keys = []
        for i in indices:
            tags = {"num_concepts": str(len(rows["concepts"][i]))}
            tags.update({c: str(rows[c][i]) for c in TAG_COLUMNS if rows.get(c) and rows[c][i] is not None})
            self._keys.append(SampleKey(str(rows["image_id"][i]), len(rows["concepts"][i]), tags))
        self.name = "mcc" if config == "default" else f"mcc/{config}"
        self._fingerprint = getattr(table, "_fingerprint", None)
        self._review = _review_counts(table, indices, objects=self._objects)
        generators = table.data.column("generator").to_pylist() if "generator" in table.column_names else []
        self._generators = sorted({str(generators[i]) for i in indices if generators[i] is not None})
        self._manifest = _manifest_info(self.source, revision)

    def __len__(self) -> int:
        return len(self._keys)

    def sample_keys(self) -> list[SampleKey]:
        return list(self._keys)

    def __getitem__(self, index: int) -> Sample:
        row = self._table[index]
        sample_id = str(row["image_id"])
        image = row["image"].convert("RGB")
        concepts = tuple(str(c) for c in row["concepts"])
        mask_images = row["objects"]["mask"] if self._objects else row["masks"]
        if len(mask_images) != len(concepts):
            raise InvalidSample(f"{sample_id}: {len(concepts)} concepts but {len(mask_images)} masks")
        if not concepts:
            raise InvalidSample(f"{sample_id}: no concepts")
        masks = [_mask_from_image(m) for m in mask_images]
        for concept, mask in zip(concepts, masks, strict=True):
            if mask.shape != (image.height, image.width):
                raise InvalidSample(
                    f"{sample_id}: the mask of {concept!r} is (H, W) {mask.shape}, "
                    f"the image is ({image.height}, {image.width})"
                )
        masks = np.stack(masks)
        tags = {"num_concepts": str(row.get("num_concepts") or len(concepts))}
        for column in TAG_COLUMNS:
            if row.get(column) is not None:
                tags[column] = str(row[column])
        return Sample(sample_id=sample_id, image=image, concepts=concepts, masks=masks, tags=tags)

    def __iter__(self) -> Iterator[Sample]:
        for index in range(len(self)):
            yield self[index]

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "protocol": self.protocol,
            "source": self.source,
            "config": self.config,
            "split": self.split,
            "revision": self.revision,
            "fingerprint": self._fingerprint,
            **self._manifest,
            "review": self._review,
            "generators": self._generators,
            "samples": len(self),
            "pairs": sum(k.num_concepts for k in self._keys),
        }


def _review_counts(table: Any, indices: Sequence[int], *, objects: bool) -> dict[str, int]:
    """Review status -> masks, over the kept rows, read from arrow (no image is decoded)."""
    if objects:
        column = table.data.column("objects")
        per_row = [status for chunk in column.chunks for status in chunk.field("review").to_pylist()]
    elif "review" in table.column_names:
        per_row = table.data.column("review").to_pylist()
    else:
        return {}
    counts: dict[str, int] = {}
    for i in indices:
        for status in per_row[i] or []:
            counts[str(status)] = counts.get(str(status), 0) + 1
    return dict(sorted(counts.items()))


def _manifest_info(source: str, revision: str | None) -> dict[str, Any]:
    """``dataset_version``, ``code_version`` and ``format`` from the build's ``manifest.json``
    (the local folder's, or the Hub repo's when it can be fetched or is cached); ``unknown``
    when there is none, e.g. a folder not written by ``mcc publish``."""
    path = Path(source) / "manifest.json"
    try:
        if not path.is_file():
            if Path(source).exists():
                raise FileNotFoundError(path)
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(source, "manifest.json", repo_type="dataset", revision=revision))
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except Exception:  # no manifest: offline, not on the Hub, not an MCC build
        return {"dataset_version": "unknown", "code_version": "unknown", "format": "unknown"}
    return {
        "dataset_version": str(manifest.get("dataset_version", "unknown")),
        "code_version": str(manifest.get("code_version", "unknown")),
        "format": str(manifest.get("format", "unknown")),
    }


# --------------------------------------------------------------------------------------------
# ImageNet-Segmentation (gtsegs_ijcv.mat)
# --------------------------------------------------------------------------------------------


def _load_class_names(class_names: Mapping[str, str] | str | os.PathLike | None) -> dict[str, str] | None:
    """A ``{synset id: name}`` mapping from a dict, a JSON file, or a two-column TSV file."""
    if class_names is None or isinstance(class_names, Mapping):
        return None if class_names is None else dict(class_names)
    path = Path(class_names)
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"{path} must hold a JSON object {{synset id: class name}}")
        return {str(k): str(v) for k, v in data.items()}
    names = {}
    for line in text.splitlines():
        if line.strip():
            key, _, value = line.partition("\t")
            names[key.strip()] = value.strip()
    return names


def _wordnet_name(synset_id: str) -> str | None:
    """The first WordNet lemma of ``n01234567`` if nltk and its wordnet corpus are installed."""
    try:
        from nltk.corpus import wordnet

        synset = wordnet.synset_from_pos_and_offset(synset_id[0], int(synset_id[1:].split("_")[0]))
    except Exception:  # nltk missing, corpus not downloaded, or an unknown id
        return None
    return synset.lemmas()[0].name().replace("_", " ")


class ImageNetSegmentation:
    """ImageNet-Segmentation (Guillaumin et al., 4,276 images) from ``gtsegs_ijcv.mat``.

    The file is MATLAB v7.3 (HDF5). ``/value/img[i]`` references a (3, W, H) uint8 array
    (MATLAB column-major, transposed here to (H, W, 3)); ``/value/gt[i]`` references a cell
    whose element references the (W, H) uint8 mask (non-zero = object); ``/value/id[i]``
    references the UTF-16 characters of the synset id (``n02085620_...``).

    class_names: ``{synset id: queried name}`` (dict, JSON object file, or TSV ``id<TAB>name``);
        a synset id may be given with or without its ``_<image>`` suffix. Without it the
        names come from WordNet through nltk when its corpus is installed. One concept per
        image; the protocol is the standard binary one.
    """

    protocol: ScoringProtocol = "binary"
    name = "imagenet-segmentation"

    def __init__(
        self, path: str | os.PathLike, *, class_names: Mapping[str, str] | str | os.PathLike | None = None
    ):
        import h5py

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path} does not exist; download gtsegs_ijcv.mat and pass its path")
        self._file = h5py.File(self.path, "r")
        for key in ("/value/img", "/value/gt"):
            if key not in self._file:
                raise ValueError(f"{self.path} has no {key}: not the ImageNet-Segmentation gtsegs_ijcv.mat")
        self._images = self._file["/value/img"][()].reshape(-1)
        self._targets = self._file["/value/gt"][()].reshape(-1)
        if len(self._images) != len(self._targets):
            raise ValueError(f"{self.path}: {len(self._images)} images but {len(self._targets)} masks")
        ids = self._file["/value/id"][()].reshape(-1) if "/value/id" in self._file else None
        self._synsets = [self._read_string(ref) for ref in ids] if ids is not None else None
        names = _load_class_names(class_names)
        self._concepts = [self._resolve_name(index, names) for index in range(len(self._images))]

    def _deref(self, ref: Any) -> np.ndarray:
        """Follow object references (the gt cells add a level) down to a numeric array."""
        import h5py

        value = self._file[ref]
        while h5py.check_dtype(ref=value.dtype) is not None:
            value = self._file[value[()].reshape(-1)[0]]
        return value[()]

    def _read_string(self, ref: Any) -> str:
        return "".join(chr(int(c)) for c in self._deref(ref).reshape(-1)).strip("\x00 ")

    def _resolve_name(self, index: int, names: dict[str, str] | None) -> str:
        if self._synsets is None:
            raise ValueError(f"{self.path} has no /value/id, so the queried classes are unknown")
        synset = self._synsets[index]
        base = synset.split("_")[0]
        if names is not None:
            for key in (synset, base):
                if key in names:
                    return names[key]
            raise ValueError(f"class_names has no entry for synset {base!r} (image {index})")
        name = _wordnet_name(base)
        if name is None:
            raise ValueError(
                f"no name for synset {base!r}: pass class_names (a JSON {{synset id: name}} file, "
                "`--class-names` on the command line) or install nltk's wordnet corpus"
            )
        return name

    def __len__(self) -> int:
        return len(self._images)

    def sample_keys(self) -> list[SampleKey]:
        return [SampleKey(f"imagenet-seg-{index:05d}", 1) for index in range(len(self))]

    def __getitem__(self, index: int) -> Sample:
        pixels = self._deref(self._images[index])
        if pixels.ndim == 3:
            pixels = pixels.transpose(2, 1, 0)  # (3, W, H) -> (H, W, 3)
        elif pixels.ndim == 2:
            pixels = pixels.T  # a grayscale image, (W, H) -> (H, W)
        else:
            raise InvalidSample(f"image {index} has shape {pixels.shape}")
        image = Image.fromarray(np.ascontiguousarray(pixels.astype(np.uint8))).convert("RGB")
        mask = self._deref(self._targets[index]).T != 0
        if mask.shape != (image.height, image.width):
            raise InvalidSample(
                f"image {index}: mask is {mask.shape}, image is ({image.height}, {image.width})"
            )
        tags = {"synset": self._synsets[index].split("_")[0]} if self._synsets else {}
        return Sample(
            sample_id=f"imagenet-seg-{index:05d}",
            image=image,
            concepts=(self._concepts[index],),
            masks=mask[None],
            tags=tags,
        )

    def __iter__(self) -> Iterator[Sample]:
        for index in range(len(self)):
            yield self[index]

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "protocol": self.protocol, "source": str(self.path), "samples": len(self)}


# --------------------------------------------------------------------------------------------
# PascalVOC 2012 single-class
# --------------------------------------------------------------------------------------------


def _find_voc_root(root: Path, split: str) -> Path:
    for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (candidate / "ImageSets" / "Segmentation" / f"{split}.txt").is_file():
            return candidate
    raise FileNotFoundError(
        f"no ImageSets/Segmentation/{split}.txt under {root} (tried VOC2012/ and VOCdevkit/VOC2012/): "
        "pass the VOC2012 folder holding JPEGImages/ and SegmentationClass/"
    )


class VOCSingleClass:
    """PascalVOC 2012 single-class: ``split`` images whose label has exactly one foreground class.

    root: the ``VOC2012`` folder (or ``VOCdevkit`` / its parent) with ``JPEGImages/``,
    ``SegmentationClass/`` (palette PNGs, index = class, 255 = ignored) and
    ``ImageSets/Segmentation/<split>.txt``. Every label is read once here to select the
    images. The queried text is ``VOC_QUERY_NAMES`` (or the class name), overridable with
    ``class_names``. Pixels labelled 255 are left out of every count.
    """

    protocol: ScoringProtocol = "binary"
    name = "voc2012-single-class"

    def __init__(
        self, root: str | os.PathLike, *, split: str = "val", class_names: Mapping[str, str] | None = None
    ):
        self.root = _find_voc_root(Path(root), split)
        self.split = split
        self._names = {**VOC_QUERY_NAMES, **(class_names or {})}
        ids = [
            line.strip()
            for line in (self.root / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()
        ]
        self._items: list[tuple[str, int]] = []
        self.skipped = 0
        for image_id in ids:
            label = self._label(image_id)
            classes = [int(c) for c in np.unique(label) if c not in (0, 255)]
            if len(classes) == 1:
                self._items.append((image_id, classes[0]))
            else:
                self.skipped += 1

    def _label(self, image_id: str) -> np.ndarray:
        path = self.root / "SegmentationClass" / f"{image_id}.png"
        with Image.open(path) as label:
            if label.mode not in ("P", "L"):
                raise ValueError(
                    f"{path} is mode {label.mode}; VOC labels are palette (P) PNGs of class indices"
                )
            return np.array(label)

    def __len__(self) -> int:
        return len(self._items)

    def sample_keys(self) -> list[SampleKey]:
        return [SampleKey(image_id, 1) for image_id, _ in self._items]

    def __getitem__(self, index: int) -> Sample:
        image_id, class_index = self._items[index]
        label = self._label(image_id)
        with Image.open(self.root / "JPEGImages" / f"{image_id}.jpg") as raw:
            image = raw.convert("RGB")
        if label.shape != (image.height, image.width):
            raise InvalidSample(
                f"{image_id}: label is {label.shape}, image is ({image.height}, {image.width})"
            )
        class_name = VOC_CLASSES[class_index]
        return Sample(
            sample_id=image_id,
            image=image,
            concepts=(self._names.get(class_name, class_name),),
            masks=(label == class_index)[None],
            tags={"class": class_name},
            ignore=label == 255,
        )

    def __iter__(self) -> Iterator[Sample]:
        for index in range(len(self)):
            yield self[index]

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "protocol": self.protocol,
            "source": str(self.root),
            "split": self.split,
            "samples": len(self),
            "multi_class_images_skipped": self.skipped,
        }


# --------------------------------------------------------------------------------------------
# Choosing a loader
# --------------------------------------------------------------------------------------------

BenchmarkKind = Literal["auto", "mcc", "imagenet-seg", "voc"]


def detect_benchmark(source: str | os.PathLike) -> Literal["mcc", "imagenet-seg", "voc"]:
    """``imagenet-seg`` for a ``.mat`` file, ``voc`` for a VOC tree, else ``mcc`` (folder or repo id)."""
    path = Path(source)
    if path.suffix == ".mat":
        return "imagenet-seg"
    if path.is_dir():
        for candidate in (path, path / "VOC2012", path / "VOCdevkit" / "VOC2012"):
            if (candidate / "SegmentationClass").is_dir() and (candidate / "JPEGImages").is_dir():
                return "voc"
    return "mcc"


def open_dataset(
    source: str | os.PathLike,
    *,
    kind: BenchmarkKind = "auto",
    config: str = "default",
    split: str | None = None,
    revision: str | None = None,
    class_names: Mapping[str, str] | str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> MCCDataset | ImageNetSegmentation | VOCSingleClass:
    """Open any of the three benchmarks; ``kind="auto"`` decides from ``source`` (``detect_benchmark``)."""
    chosen = detect_benchmark(source) if kind == "auto" else kind
    if chosen == "mcc":
        return MCCDataset(
            source, config=config, split=split or "test", revision=revision, cache_dir=cache_dir
        )
    if chosen == "imagenet-seg":
        return ImageNetSegmentation(source, class_names=class_names)
    if chosen == "voc":
        names = _load_class_names(class_names)
        return VOCSingleClass(source, split=split or "val", class_names=names)
    raise ValueError(f"unknown benchmark kind {kind!r}; choose auto, mcc, imagenet-seg or voc")
