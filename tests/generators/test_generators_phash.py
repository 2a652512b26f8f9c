"""pHash: stable under resizing and re-compression, far apart for different pictures."""

from __future__ import annotations

import io

import numpy as np
from generators_testserver import pattern_image
from PIL import Image

from generators.perceptual_hash import from_hex, hamming, hamming_to_many, phash, to_hex


def _jpeg_roundtrip(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def test_near_copies_are_close_and_different_pictures_far():
    original = pattern_image(11)
    variants = [
        original.resize((320, 260)),
        _jpeg_roundtrip(original, 60),
        original.convert("L").convert("RGB"),
        Image.fromarray(np.clip(np.asarray(original, dtype=np.int16) + 8, 0, 255).astype(np.uint8)),
    ]
    base = phash(original)
    assert all(hamming(base, phash(v)) <= 4 for v in variants)
    others = [phash(pattern_image(seed)) for seed in range(100, 140)]
    assert min(hamming(base, h) for h in others) > 10


def test_vectorised_distances_and_hex_roundtrip():
    hashes = [phash(pattern_image(seed)) for seed in range(5)]
    array = np.array(hashes, dtype=np.uint64)
    assert hamming_to_many(array, hashes[2]).tolist() == [hamming(h, hashes[2]) for h in hashes]
    assert hamming_to_many(array, hashes[2])[2] == 0
    assert all(from_hex(to_hex(h)) == h and len(to_hex(h)) == 16 for h in hashes)
