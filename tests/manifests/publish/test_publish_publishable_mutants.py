"""Pins of ``manifests.publish.selection``: ``mask_png`` writes any 0/1 array (bool, integer or float) as
the same 1-bit PNG, which Pillow reads back as the mask; exclusions carry a detail; the default
thread count off Linux."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image
from publish_records import make_record

from manifests.publish.selection import check_record, default_workers, mask_png


def test_mask_png_reads_any_zero_one_array_as_its_bool_mask():
    """A float or uint8 0/1 mask gives the very bytes of its bool mask; Pillow decodes it (mode "1")."""
    mask = np.random.default_rng(0).random((5, 11)) > 0.5
    png = mask_png(mask)
    assert mask_png(mask.astype(np.float64)) == png
    assert mask_png(mask.astype(np.uint8)) == png
    image = Image.open(io.BytesIO(png))
    assert image.mode == "1" and np.array_equal(np.asarray(image), mask)
    # IHDR as the PNG specification (and libpng, stricter than Pillow) wants it: 11 x 5, bit depth 1,
    # greyscale, compression 0, filter 0, no interlace
    assert png[8:16] == b"\x00\x00\x00\x0dIHDR" and png[16:29] == bytes.fromhex("0000000b000000050100000000")


def test_records_without_image_or_with_undecodable_mask_are_excluded_with_detail(small_store):
    """``no_image`` and ``mask_undecodable`` exclusions say what is wrong (state, concept)."""
    no_image = make_record(small_store, 30).model_copy(update={"image": None})
    excluded = check_record(small_store, no_image)
    assert (excluded.reason, excluded.detail) == ("no_image", "state reviewed but no stored image")
    broken = make_record(small_store, 31)
    broken.concepts[0].mask = broken.concepts[0].mask.model_copy(update={"counts": "!!not-rle"})
    excluded = check_record(small_store, broken)
    assert excluded.reason == "mask_undecodable" and excluded.detail.startswith("concept 'lemon': ")


def test_default_workers_without_sched_getaffinity(monkeypatch):
    """Off Linux (no os.sched_getaffinity) the CPU count is used, at most 8 threads."""
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    assert default_workers() == 3
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert default_workers() == 1
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert default_workers() == 8


def test_a_missing_or_resized_image_is_excluded_with_its_path_and_sizes(small_store):
    """``image_missing`` names the file and the error; ``image_size_mismatch`` both sizes (W x H)."""
    record = make_record(small_store, 32)
    path = Path(small_store.path(record.image.path))
    data = path.read_bytes()
    path.unlink()
    excluded = check_record(small_store, record)
    assert excluded.reason == "image_missing"
    assert excluded.detail.startswith(f"{record.image.path}: ") and "No such file" in excluded.detail
    path.write_bytes(data)
    wrong = record.model_copy(
        update={"image": record.image.model_copy(update={"width": record.image.width + 1})}
    )
    excluded = check_record(small_store, wrong)
    assert (excluded.reason, excluded.detail) == (
        "image_size_mismatch",
        f"{record.image.path} is {record.image.width}x{record.image.height}, "
        f"record says {record.image.width + 1}x{record.image.height}",
    )
