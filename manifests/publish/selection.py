"""Which records enter a published dataset, checked before anything is written.

``select_publishable`` reads the manifest once, in record-id order, and sorts every
record into exactly one of three bins:

- ``items``: records in an admitted state whose image and masks are sound; each carries
  its masks already encoded as 1-bit PNG (the published form) and COCO box and area
  figures, so the writers (parquet shards, COCO, card) never decode a mask again;
- ``excluded``: records in an admitted state that cannot be published, each with a fixed
  reason code and a detail (a corrupt record file is excluded too, under its file name);
- ``skipped``: counts by state of records that are not in an admitted state (planned,
  rejected, still in review, ...): they are not errors, just not part of this release.

Nothing is dropped silently: ``len(items) + len(excluded) + sum(skipped.values())`` is the
number of record files in ``records/``.

Admitted states: ``reviewed`` by default; ``segmented`` (and ``in_review``) when a build
admits machine masks. Publishing never changes a record's state: which records a version
holds is its ``manifest.json``.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, UnidentifiedImageError
from pycocotools import mask as mask_utils

from manifests.masks import decode_mask
from manifests.record import Record, State
from manifests.store import ManifestStore, RecordLoadError

ADMISSIBLE_STATES = (State.segmented, State.in_review, State.reviewed)
"""States a build may admit: every concept of such a record has a mask."""

REVIEWED_ONLY = ("reviewed",)
"""What a benchmark build admits: records a person reviewed."""
WITH_UNREVIEWED = ("reviewed", "segmented", "in_review")
"""What an offline build admits (``--include-unreviewed``): machine masks too."""

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class PublishError(ValueError):
    """A build cannot proceed as asked (bad options, nothing to publish); the message says what to do."""


@dataclass(frozen=True)
class Exclusion:
    """A record that was asked for but cannot be published.

    ``reason`` is one of: ``unreadable_record``, ``no_image``, ``image_missing``,
    ``image_unreadable``, ``image_sha256_mismatch``, ``image_size_mismatch``,
    ``mask_missing``, ``mask_undecodable``, ``mask_size_mismatch``, ``mask_empty``.
    """

    record_id: str
    reason: str
    detail: str


@dataclass(frozen=True)
class PublishableMask:
    """One concept's mask in published form.

    ``png``: a 1-bit greyscale PNG of the stored image's size (white = the concept).
    ``bbox``: the mask's tight box, COCO XYWH in stored-image pixels. ``area``: pixels.
    """

    png: bytes
    bbox: tuple[float, float, float, float]
    area: int


@dataclass(frozen=True)
class PublishableItem:
    """A record that passed every check, with its masks in published form (aligned with
    ``record.concepts``)."""

    record: Record
    masks: tuple[PublishableMask, ...]

    @property
    def id(self) -> str:
        return self.record.id


@dataclass
class Selection:
    """The outcome of ``select_publishable``; see the module docstring."""

    include: tuple[str, ...]
    items: list[PublishableItem] = field(default_factory=list)
    excluded: list[Exclusion] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)

    @property
    def excluded_by_reason(self) -> Counter[str]:
        return Counter(e.reason for e in self.excluded)


def normalise_include(include: tuple[str, ...] | list[str] | str) -> tuple[str, ...]:
    """Validate the admitted states; returns them as sorted state names."""
    if isinstance(include, str):
        include = (include,)
    allowed = {s.value for s in ADMISSIBLE_STATES}
    names = []
    for state in include:
        try:
            value = State(str(state)).value
        except ValueError:
            value = str(state)
        if value not in allowed:
            raise PublishError(
                f"cannot publish records in state {state!r}: only {sorted(allowed)} have a mask for every "
                "concept. Use include=('reviewed',) for the benchmark, ('reviewed', 'segmented') for offline runs."
            )
        names.append(value)
    if not names:
        raise PublishError("include is empty: name at least one state, e.g. include=('reviewed',)")
    return tuple(sorted(set(names)))


def is_admitted(record: Record, include: tuple[str, ...]) -> bool:
    """Whether ``record``'s state is one of ``include``."""
    return record.state.value in include


def mask_png(mask: np.ndarray) -> bytes:
    """(H, W) bool -> a 1-bit greyscale PNG (white = True), written directly from the PNG
    specification: IHDR, one IDAT of zlib level 6 over rows with filter type 0, IEND.

    Byte-deterministic for a given zlib, independent of the imaging library's encoder, and
    about three times faster than Pillow's for 1024 x 1024 masks. Pillow reads it as mode "1".
    """
    height, width = mask.shape
    rows = np.packbits(np.ascontiguousarray(mask, dtype=bool), axis=1)  # (H, ceil(W / 8)), MSB first
    scanlines = np.zeros((height, rows.shape[1] + 1), dtype=np.uint8)
    scanlines[:, 1:] = rows  # column 0: filter type 0 (none) for every row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # bit depth 1, greyscale, no interlace
    return (
        PNG_SIGNATURE
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(scanlines.tobytes(), 6))
        + chunk(b"IEND", b"")
    )


def read_image_bytes(store: ManifestStore, record: Record) -> bytes:
    """The stored image file's bytes; ``record.image`` must be set."""
    return store.read_bytes(record.image.path)


def check_record(store: ManifestStore, record: Record) -> PublishableItem | Exclusion:
    """Check one admitted record: image present, intact (sha256), of the recorded size;
    every concept has a mask that decodes, matches the image size and is not empty."""

    def excluded(reason: str, detail: str) -> Exclusion:
        return Exclusion(record.id, reason, detail)

    info = record.image
    if info is None:
        return excluded("no_image", f"state {record.state.value} but no stored image")
    try:
        data = read_image_bytes(store, record)
    except (FileNotFoundError, OSError) as error:
        return excluded("image_missing", f"{info.path}: {error}")
    digest = hashlib.sha256(data).hexdigest()
    if digest != info.sha256:
        return excluded(
            "image_sha256_mismatch",
            f"{info.path} has sha256 {digest[:12]}..., record says {info.sha256[:12]}...",
        )
    try:
        with Image.open(io.BytesIO(data)) as image:
            size = image.size  # (W, H), read from the header
    except (UnidentifiedImageError, OSError) as error:
        return excluded("image_unreadable", f"{info.path}: {error}")
    if size != (info.width, info.height):
        return excluded(
            "image_size_mismatch",
            f"{info.path} is {size[0]}x{size[1]}, record says {info.width}x{info.height}",
        )

    masks = []
    for concept in record.concepts:
        if concept.mask is None:
            return excluded("mask_missing", f"concept {concept.name!r} has no mask")
        if tuple(concept.mask.size) != (info.height, info.width):
            return excluded(
                "mask_size_mismatch",
                f"mask of {concept.name!r} is (H, W) {tuple(concept.mask.size)}, "
                f"image is ({info.height}, {info.width})",
            )
        try:
            mask = decode_mask(concept.mask)
        except ValueError as error:
            return excluded("mask_undecodable", f"concept {concept.name!r}: {error}")
        if mask.shape != (info.height, info.width):
            return excluded(
                "mask_size_mismatch",
                f"mask of {concept.name!r} decodes to {mask.shape}, image is ({info.height}, {info.width})",
            )
        if not mask.any():
            return excluded("mask_empty", f"mask of {concept.name!r} is empty")
        rle = {"size": list(concept.mask.size), "counts": concept.mask.counts.encode("ascii")}
        bbox = tuple(float(v) for v in mask_utils.toBbox(rle))
        masks.append(PublishableMask(png=mask_png(mask), bbox=bbox, area=int(mask_utils.area(rle))))
    return PublishableItem(record=record, masks=tuple(masks))


def default_workers() -> int:
    """Threads for reading, hashing and encoding (these release the GIL): the usable CPUs, at most 8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus))


def select_publishable(
    store: ManifestStore, include: tuple[str, ...] | list[str] = ("reviewed",), *, workers: int | None = None
) -> Selection:
    """Read every record once and bin it (items / excluded / skipped); items in id order.

    Records are checked by ``workers`` threads (default ``default_workers()``); the result
    does not depend on their number.
    """
    selection = Selection(include=normalise_include(include))
    errors: list[RecordLoadError] = []
    admitted = []
    for record in store.iter(errors=errors):
        if is_admitted(record, selection.include):
            admitted.append(record)
        else:
            selection.skipped[record.state.value] += 1
    with ThreadPoolExecutor(max_workers=workers or default_workers()) as pool:
        for outcome in pool.map(lambda record: check_record(store, record), admitted):
            if isinstance(outcome, Exclusion):
                selection.excluded.append(outcome)
            else:
                selection.items.append(outcome)
    for error in errors:
        name = error.path.rsplit("/", 1)[-1].removesuffix(".json")
        selection.excluded.append(Exclusion(name, "unreadable_record", error.problem))
    selection.excluded.sort(key=lambda e: (e.reason, e.record_id))
    return selection
