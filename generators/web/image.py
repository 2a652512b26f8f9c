"""Steps 3 and 5 of the scrape stage: decode, check and prepare the bytes to store (pure CPU work)."""

from __future__ import annotations

import hashlib
import io
import logging
import re
from dataclasses import dataclass

import numpy as np
from PIL import ExifTags, Image, ImageCms, ImageOps, UnidentifiedImageError

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
    """A decoded web image: ``image`` is 8-bit sRGB, upright, without an ICC profile;
    ``original_size`` (width, height) and ``original_mode`` (Pillow mode) as stored in the
    file; ``colour_profile`` is the description of the embedded ICC profile the pixels were
    converted from (None: no profile, or already sRGB)."""

    image: Image.Image
    format: str
    original_size: tuple[int, int]
    exif_transposed: bool
    frames: int
    original_mode: str = "RGB"
    colour_profile: str | None = None


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


_SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
_HIGH_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _to_8_bit(image: Image.Image) -> Image.Image:
    """16-bit (and 32-bit integer) greyscale scaled to 8-bit ``L`` (65535 -> 255); other modes unchanged.

    Pillow's ``convert("L")`` / ``convert("RGB")`` clip such values at 255, which turns most
    16-bit pictures white. A 32-bit image whose values fit in 8 bits is taken as is.
    """
    if image.mode not in _HIGH_BIT_MODES:
        return image
    values = np.asarray(image).astype(np.int64)
    peak = int(values.max()) if values.size else 0
    if image.mode.startswith("I;16") or peak > 255:
        values = (values.clip(0, 65535) + 128) // 257
    return Image.fromarray(values.clip(0, 255).astype(np.uint8), mode="L")


def _profile(image: Image.Image) -> ImageCms.ImageCmsProfile | None:
    """The embedded ICC profile, or None when there is none, it does not parse, or it is sRGB."""
    data = image.info.get("icc_profile")
    if not data:
        return None
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(data))
        description = ImageCms.getProfileDescription(profile) or ""
    except (OSError, ImageCms.PyCMSError, TypeError, ValueError) as error:
        logger.debug("an unreadable ICC profile is ignored: %s", error)
        return None
    if "srgb" in description.lower() and profile.profile.xcolor_space.strip() == "RGB":
        return None
    return profile


def _to_srgb(image: Image.Image) -> tuple[Image.Image, str | None]:
    """``image`` in sRGB (RGB or RGBA), and the description of the profile it was converted from.

    A CMYK, greyscale or wide-gamut RGB picture with an embedded profile is converted from
    that profile (perceptual intent); one without a profile (or whose profile does not fit
    its mode) is taken as sRGB. The result carries no ICC profile.
    """
    profile = _profile(image)
    alpha = image.getchannel("A") if image.mode in ("RGBA", "LA", "PA") else None
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        alpha = image.getchannel("A") if image.mode == "RGBA" else None
    base = {"RGBA": "RGB", "LA": "L", "PA": "RGB"}.get(image.mode, image.mode)
    if base != image.mode:
        image = image.convert(base)
    description = None
    if profile is not None and base in ("RGB", "L", "CMYK"):
        try:
            image = ImageCms.profileToProfile(image, profile, _SRGB, outputMode="RGB")
            description = ImageCms.getProfileDescription(profile).strip() or "unnamed profile"
        except ImageCms.PyCMSError as error:  # e.g. a GRAY profile on a CMYK image: the profile is wrong
            logger.debug("ICC profile does not fit a %s image, taken as sRGB: %s", base, error)
    if image.mode != "RGB":
        image = image.convert("RGB")
    image.info.pop("icc_profile", None)
    if alpha is not None:
        image.putalpha(alpha)
    return image, description


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
    icc = image.info.get("icc_profile")
    picture = _to_8_bit(upright)
    if icc and "icc_profile" not in picture.info:
        picture.info["icc_profile"] = icc  # exif_transpose / the 16-bit scaling keep the pixels' profile
    srgb, profile = _to_srgb(picture)
    return WebImage(_to_rgb(srgb), kind, (width, height), upright is not image, frames, image.mode, profile)


KEEPABLE_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}
JPEG_KEPT_SEGMENTS = {0xE0, 0xE2, 0xEE}
"""APP0 (JFIF), APP2 (ICC colour profile) and APP14 (Adobe colour transform) change how
the pixels decode; every other APPn segment and COM (EXIF, GPS, XMP, IPTC, comments) is
metadata."""
PNG_KEPT_CHUNKS = {b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"gAMA", b"cHRM", b"sRGB", b"iCCP", b"sBIT"}
"""The critical chunks and the ancillary ones that change how the pixels decode; every other
chunk (eXIf, tEXt, zTXt, iTXt, tIME, pHYs, private chunks) is metadata."""
WEBP_METADATA_CHUNKS = {b"EXIF", b"XMP "}
_JPEG_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")  # a marker, not a stuffed byte or a restart


def strip_jpeg_metadata(data: bytes) -> bytes | None:
    """The JPEG ``data`` without metadata or trailing bytes, pixels untouched; None if it cannot be parsed.

    Walks every marker segment from SOI to EOI, between the scans of a progressive JPEG
    too: drops APPn segments other than ``JPEG_KEPT_SEGMENTS`` and comments, copies the
    entropy-coded data of each scan byte for byte, and drops everything after EOI (an
    appended HTML page or ZIP archive). Returns ``data`` itself when nothing had to go.
    """
    if data[:2] != b"\xff\xd8":
        return None
    kept = [data[:2]]
    dropped = False
    position = 2
    while position + 2 <= len(data):
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker == 0xD9:  # end of image: anything after it is not part of the picture
            kept.append(data[position : position + 2])
            return b"".join(kept) if dropped or position + 2 < len(data) else data
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            kept.append(data[position : position + 2])
            position += 2
            continue
        if position + 4 > len(data):
            return None
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        end = position + 2 + length
        if length < 2 or end > len(data):
            return None
        if (0xE0 <= marker <= 0xEF and marker not in JPEG_KEPT_SEGMENTS) or marker == 0xFE:
            dropped = True
        else:
            kept.append(data[position:end])
        position = end
        if marker == 0xDA:  # start of scan: entropy-coded data up to the next marker
            following = _JPEG_NEXT_MARKER.search(data, position)
            if following is None:
                return None  # no end of image
            kept.append(data[position : following.start()])
            position = following.start()
    return None


def strip_png_metadata(data: bytes) -> bytes | None:
    """The PNG ``data`` with only ``PNG_KEPT_CHUNKS`` and nothing after IEND; None if it cannot be parsed."""
    signature = b"\x89PNG\r\n\x1a\n"
    if not data.startswith(signature):
        return None
    kept = [signature]
    dropped = False
    position = len(signature)
    while position + 12 <= len(data):
        length = int.from_bytes(data[position : position + 4], "big")
        kind = data[position + 4 : position + 8]
        end = position + 12 + length
        if end > len(data):
            return None
        if kind in PNG_KEPT_CHUNKS:
            kept.append(data[position:end])
        else:
            dropped = True
        position = end
        if kind == b"IEND":
            return b"".join(kept) if dropped or end < len(data) else data
    return None


def strip_webp_metadata(data: bytes) -> bytes | None:
    """The WebP ``data`` without EXIF / XMP chunks (flags updated) and trailing bytes; None if unparseable."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return None
    size = int.from_bytes(data[4:8], "little") + 8
    if size > len(data) or size < 12:
        return None
    chunks = []
    dropped = size < len(data)
    position = 12
    while position + 8 <= size:
        kind = data[position : position + 4]
        length = int.from_bytes(data[position + 4 : position + 8], "little")
        end = position + 8 + length + (length & 1)  # chunks are padded to even sizes
        if end > size:
            return None
        if kind in WEBP_METADATA_CHUNKS:
            dropped = True
        else:
            chunks.append(bytearray(data[position:end]))
        position = end
    if position != size or not chunks:
        return None
    if not dropped:
        return data
    if chunks[0][:4] == b"VP8X":
        chunks[0][8] &= ~0x0C & 0xFF  # clear the EXIF (0x08) and XMP (0x04) flags
    body = b"WEBP" + b"".join(chunks)
    return b"RIFF" + len(body).to_bytes(4, "little") + body


_STRIPPERS = {"JPEG": strip_jpeg_metadata, "PNG": strip_png_metadata, "WEBP": strip_webp_metadata}


def strip_metadata(data: bytes, image_format: str) -> bytes | None:
    """``data`` of a JPEG, PNG or WebP without metadata and trailing bytes, pixels untouched; None
    when the file cannot be parsed that way (then it must be re-encoded)."""
    return _STRIPPERS[image_format](data)


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
    colour_profile: str | None = None


def prepare_image(
    data: bytes, min_side: int, max_pixels: int, png_compress_level: int = 1, keep_original: bool = False
) -> PreparedImage:
    """Check, decode, hash and encode downloaded bytes (``ImageRejected`` if unusable).

    With ``keep_original``, a single-frame 8-bit RGB JPEG, PNG or WebP in sRGB (no ICC
    profile, or an sRGB one) that needs no EXIF rotation is stored as downloaded, its
    pixels exactly what the checks saw, minus its metadata (``strip_metadata``: EXIF,
    GPS, XMP, IPTC, text chunks, comments and any bytes after the end of the image; camera
    and location data are not redistributed); anything else, or a file whose structure
    does not parse, is stored as an sRGB PNG without metadata. A plain function of bytes
    so that it can run in a worker process: all the CPU work of an image happens here.
    """
    web_image = load_web_image(data, min_side, max_pixels)
    content_sha = hashlib.sha256(data).hexdigest()
    keep = (
        keep_original
        and web_image.format in KEEPABLE_FORMATS
        and web_image.original_mode == "RGB"
        and web_image.frames == 1
        and not web_image.exif_transposed
        and web_image.colour_profile is None
    )
    stored = strip_metadata(data, web_image.format) if keep else None
    if stored is not None:
        extension = KEEPABLE_FORMATS[web_image.format]
        stored_sha = content_sha if stored is data else hashlib.sha256(stored).hexdigest()
    else:
        buffer = io.BytesIO()  # sRGB, so no ICC profile; Pillow writes no other metadata
        web_image.image.save(buffer, format="PNG", compress_level=png_compress_level)
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
        colour_profile=web_image.colour_profile,
    )
