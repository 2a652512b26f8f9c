"""Perceptual image hashes (pHash) and their Hamming distances, in numpy.

pHash (Zauner 2010): the image in grey levels resized to 32 x 32, its 2-D DCT-II, the
8 x 8 lowest frequencies compared with their median (the DC term excluded from the
median) give 64 bits. Resizing, re-compression, small colour changes and mild blur move
a few bits; unrelated images differ in about 32. Hashes are Python ints in [0, 2**64)
and ``numpy.uint64`` arrays for search.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image

HASH_BITS = 64
_SIDE = 32  # resized side before the DCT
_LOW = 8  # low-frequency block kept: 8 x 8 = 64 bits


@functools.cache
def _dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix C, (n, n) float64, so that ``C @ x`` is the DCT of a column x."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    matrix = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    matrix[0] /= np.sqrt(2.0)
    return matrix


def phash(image: Image.Image) -> int:
    """The 64-bit pHash of an image (any mode and size)."""
    grey = image.convert("L").resize(
        (_SIDE, _SIDE), Image.Resampling.BOX if min(image.size) >= _SIDE else Image.Resampling.BILINEAR
    )
    pixels = np.asarray(grey, dtype=np.float64)  # (32, 32), 0..255
    dct = _dct_matrix(_SIDE) @ pixels @ _dct_matrix(_SIDE).T  # (32, 32), [0, 0] is the DC term
    low = dct[:_LOW, :_LOW].reshape(-1)  # (64,)
    bits = low > np.median(low[1:])
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def hamming(a: int, b: int) -> int:
    """Number of differing bits of two hashes."""
    return (a ^ b).bit_count()


def hamming_to_many(hashes: np.ndarray, query: int) -> np.ndarray:
    """Hamming distances, (N,) uint8, from ``query`` to each of ``hashes`` ((N,) uint64)."""
    return np.bitwise_count(hashes ^ np.uint64(query)).astype(np.uint8)


def to_hex(value: int) -> str:
    """16 hex digits, as stored in records' history."""
    return f"{value:016x}"


def from_hex(text: str) -> int:
    value = int(text, 16)
    if not 0 <= value < 2**HASH_BITS:
        raise ValueError(f"{text!r} is not a 64-bit hash")
    return value
