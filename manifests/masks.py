"""Masks as COCO run-length encodings (the record's storage format).

A mask in memory is a numpy ``bool`` array of shape (H, W), H and W the stored image's
height and width. On a record it is an ``RLE`` with ``size == (H, W)`` and ``counts``
the compressed COCO string.
"""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils

from manifests.record import RLE


def encode_mask(mask: np.ndarray) -> RLE:
    """(H, W) bool or 0/1 array -> compressed COCO RLE."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"a mask must be a 2-D (H, W) array, got shape {mask.shape}")
    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return RLE(
        size=(int(encoded["size"][0]), int(encoded["size"][1])), counts=encoded["counts"].decode("ascii")
    )


def decode_mask(rle: RLE) -> np.ndarray:
    """Compressed COCO RLE -> (H, W) bool array. Raises ValueError if it does not decode."""
    try:
        mask = mask_utils.decode({"size": list(rle.size), "counts": rle.counts.encode("ascii")})
    except Exception as error:  # pycocotools raises bare exceptions on bad strings
        raise ValueError(f"mask RLE of size {rle.size} does not decode: {error}") from error
    if mask.shape != tuple(rle.size):
        raise ValueError(f"mask RLE decodes to {mask.shape}, its size says {tuple(rle.size)}")
    return mask.astype(bool)
