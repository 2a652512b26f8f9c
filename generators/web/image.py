"""Steps 3 and 5 of the scrape stage: decode, check and prepare the bytes to store (pure CPU work)."""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass

from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from generators.perceptual_hash import phash

logger = logging.getLogger(__name__)

# Magic numbers of the raster formats accepted, mapped to Pillow's format names.
_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)


class ImageRejected(Exception):
    """An image that cannot be kept; ``reason`` is one of ``SCRAPE_FAILURE_REASONS``.

    ``args`` are (reason, detail) so it crosses process boundaries intact."""

    def __init__(self, reason: str, detail: str):
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


@dataclass
class WebImage:
    """A decoded web image: ``image`` is RGB, upright; ``original_size`` (width, height) and
    ``original_mode`` (Pillow mode) as stored in the file."""

    image: Image.Image
    format: str
    original_size: tuple[int, int]
    exif_transposed: bool
    frames: int
    original_mode: str = "RGB"


def sniff_image_format(data: bytes) -> str | None:
    """Pillow's format name for the leading bytes of a raster image, or None."""
    for magic, name in _MAGIC:
        if data.startswith(magic):
            return name
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if len(data) >= 12 and data[4:8] == b"ftyp" and data[8:12] in (b"avif", b"avis"):
        return "AVIF"
    return None


def _describe_non_image(data: bytes) -> str:
    if not data:
        return "empty body (0 bytes)"
    head = data[:64].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html", b"<head", b"<body")):
        return "an HTML document"
    if head.startswith(b"<?xml") or b"<svg" in head:
        return "an XML/SVG document (vector images are not accepted)"
    if head[:4] == b"%pdf" or head.startswith(b"{") or head.startswith(b"["):
        return "a PDF or JSON document"
    return f"unknown content starting with {data[:8]!r}"


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB; transparent pixels composited on white (dropping alpha would leave arbitrary colours)."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_web_image(data: bytes, min_side: int = 512, max_pixels: int = 89_478_485) -> WebImage:
    """Decode downloaded bytes into an upright RGB image, or raise ``ImageRejected``.

    The size checks use the file header, before any pixel is decoded: more than
    ``max_pixels`` pixels is ``too_large`` (a decompression bomb), a shorter side below
    ``min_side`` is ``too_small``. Animated images keep their first frame.
    """
    kind = sniff_image_format(data)
    if kind is None:
        raise ImageRejected("not_an_image", _describe_non_image(data))
    try:
        image = Image.open(io.BytesIO(data), formats=[kind])
    except Image.DecompressionBombError as error:
        raise ImageRejected("too_large", f"decompression bomb: {error}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageRejected("corrupt", f"{kind} header does not parse: {error}") from None
    width, height = image.size
    if width * height > max_pixels:
        raise ImageRejected(
            "too_large",
            f"decompression bomb guard: {width}x{height} = {width * height} pixels > max_pixels {max_pixels}",
        )
    if min(width, height) < min_side:
        raise ImageRejected("too_small", f"{width}x{height}, the shorter side is below min_side {min_side}")
    frames = getattr(image, "n_frames", 1)
    try:
        image.load()
    except Image.DecompressionBombError as error:
        raise ImageRejected("too_large", f"decompression bomb: {error}") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError) as error:
        raise ImageRejected("corrupt", f"{kind} does not decode: {error}") from None
    upright = image
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
        if orientation in range(2, 9):
            upright = ImageOps.exif_transpose(image)
    except (OSError, ValueError, KeyError, TypeError, SyntaxError) as error:
        logger.debug("EXIF orientation of a %s image ignored: %s", kind, error)
    return WebImage(_to_rgb(upright), kind, (width, height), upright is not image, frames, image.mode)


KEEPABLE_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}
JPEG_KEPT_SEGMENTS = {0xE0, 0xE2, 0xEE}
"""APP0 (JFIF), APP2 (ICC colour profile) and APP14 (Adobe colour transform) change how
the pixels decode; every other APPn segment and COM (EXIF, GPS, XMP, IPTC, comments) is
metadata."""


def strip_jpeg_metadata(data: bytes) -> bytes | None:
    """The JPEG ``data`` without its metadata segments, pixels untouched; None if it cannot be parsed.

    Walks the marker segments from SOI to SOS, drops APPn segments other than
    ``JPEG_KEPT_SEGMENTS`` and comments, and copies the entropy-coded data from SOS on
    byte for byte. Returns ``data`` itself when nothing had to go.
    """
    if data[:2] != b"\xff\xd8":
        return None
    kept = [data[:2]]
    dropped = False
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker == 0xDA:  # start of scan: the rest is image data
            kept.append(data[position:])
            return b"".join(kept) if dropped else data
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        end = position + 2 + length
        if length < 2 or end > len(data):
            return None
        if (0xE0 <= marker <= 0xEF and marker not in JPEG_KEPT_SEGMENTS) or marker == 0xFE:
            dropped = True
        else:
            kept.append(data[position:end])
        position = end
    return None


@dataclass(frozen=True)
class PreparedImage:
    """What ``prepare_image`` hands back: the file to store and the facts to record.

    ``stored`` is the file for ``images/<id>.<extension>``: the upright RGB image as PNG,
    or the downloaded bytes themselves when they may be kept (see ``prepare_image``);
    ``width`` x ``height`` are its pixels. ``content_sha256`` hashes the downloaded
    bytes, ``stored_sha256`` the stored file; ``phash`` is the 64-bit pHash;
    ``original_size`` is (width, height) in the downloaded file.
    """

    stored: bytes
    extension: str
    stored_sha256: str
    width: int
    height: int
    content_sha256: str
    phash: int
    format: str
    original_size: tuple[int, int]
    exif_transposed: bool
    frames: int


def prepare_image(
    data: bytes, min_side: int, max_pixels: int, png_compress_level: int = 1, keep_original: bool = False
) -> PreparedImage:
    """Check, decode, hash and encode downloaded bytes (``ImageRejected`` if unusable).

    With ``keep_original``, a single-frame RGB JPEG, PNG or WebP that needs no EXIF
    rotation is stored as downloaded (its pixels are exactly what the checks saw, and
    nothing is re-encoded), JPEGs without their EXIF / XMP / IPTC / comment segments
    (camera, GPS and editing metadata are not redistributed); anything else is stored as PNG. A plain function of bytes so
    that it can run in a worker process: all the CPU work of an image happens here.
    """
    web_image = load_web_image(data, min_side, max_pixels)
    content_sha = hashlib.sha256(data).hexdigest()
    keep = (
        keep_original
        and web_image.format in KEEPABLE_FORMATS
        and web_image.original_mode == "RGB"
        and web_image.frames == 1
        and not web_image.exif_transposed
    )
    stored = (strip_jpeg_metadata(data) if web_image.format == "JPEG" else data) if keep else None
    if stored is not None:
        extension = KEEPABLE_FORMATS[web_image.format]
        stored_sha = content_sha if stored is data else hashlib.sha256(stored).hexdigest()
    else:
        buffer = io.BytesIO()
        icc = web_image.image.info.get("icc_profile")  # keep the colour space of wide-gamut photos
        web_image.image.save(buffer, format="PNG", compress_level=png_compress_level, icc_profile=icc)
        stored, extension = buffer.getvalue(), "png"
        stored_sha = hashlib.sha256(stored).hexdigest()
    return PreparedImage(
        stored=stored,
        extension=extension,
        stored_sha256=stored_sha,
        width=web_image.image.width,
        height=web_image.image.height,
        content_sha256=content_sha,
        phash=phash(web_image.image),
        format=web_image.format,
        original_size=web_image.original_size,
        exif_transposed=web_image.exif_transposed,
        frames=web_image.frames,
    )
