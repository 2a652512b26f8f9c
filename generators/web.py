"""The web scraper stage: planned web records -> records with a stored image, or rejected.

For each ``planned`` record whose source is a ``WebSource`` (records in other states
pass through untouched), in this order, stopping at the first failure:

1. licence: normalised (``generators.licences``) and checked against the allow-list
   before any network traffic; no licence at all is refused unless allowed;
2. download (``generators.download``): robots.txt, rate limit, address guard, retries,
   ``noai``, size limit;
3. image: format sniffed from the bytes (the Content-Type header is only recorded),
   Pillow's decompression-bomb guard (``max_pixels``, checked from the header before
   decoding), full decode, EXIF orientation applied, converted to RGB (transparency
   composited on white), the shorter side at least ``min_side``;
4. duplicates: the exact sha256 of the downloaded bytes and of stored files, and the
   64-bit pHash within ``duplicate_distance`` bits of any image already in the store
   (generated ones included) or accepted earlier in the run;
5. stored as ``images/<id>.png`` in the work dir (the store's layout; PNG at zlib level 1
   by default: about 5x faster to encode than level 6 for about 10% more bytes; with
   ``keep_original_bytes`` an RGB JPEG/PNG/WebP needing no rotation is stored as
   downloaded, ``images/<id>.jpg`` etc., which ``store.open_image`` reads the same way);
   state ``generated`` with the provenance (URL, page, licence, attribution, retrieval
   time, final URL, hashes) on the record.

Downloading and the CPU work of step 3 (``prepare_image``: decode, hash, encode) run in
fetch processes for large batches (``ScrapeConfig.processes``), each with a share of the
URLs and of the per-host rate and connection limits; the decisions of steps 1 and 4
happen in the calling process, which hands each decided record to the stage runner
(``manifests.stage.run_stage``) to be written.

A failure is ``record.reject(stage="scrape", reason=<one of SCRAPE_FAILURE_REASONS>,
detail=...)``. Every processed record, accepted or rejected, is written to the store as
soon as it is done, and kept. Records already in the store are not scraped again
(``plan_web_records`` skips them), so re-running a URL list only does the new URLs.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import multiprocessing
import os
import queue as queue_module
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, model_validator

from generators.download import (
    DownloadConfig,
    Downloader,
    DownloadFailure,
    default_user_agent,
)
from generators.licences import DEFAULT_ALLOWED_LICENCES, Licence, parse_licence
from generators.perceptual_hash import from_hex, hamming_to_many, phash, to_hex
from generators.sources.candidate import Candidate
from generators.sources.urllist import read_url_list
from manifests.groups import ConceptGroup, load_groups
from manifests.reasons import ScrapeReason
from manifests.record import ImageInfo, Record, State, WebSource
from manifests.stage import Output, run_stage
from manifests.store import IMAGES_DIR, ManifestStore

logger = logging.getLogger(__name__)

STAGE = "scrape"
SCRAPE_FAILURE_REASONS = tuple(ScrapeReason)  # manifests.reasons holds what each code means
TRANSIENT_REASONS = frozenset({"timeout", "http_error", "connection_error"})
PROCESS_POOL_MIN_IMAGES = 100  # below this, starting fetch processes (~1 s each) costs more than it saves
INDEX_PATH = "indexes/image-hashes.json"

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


class ScrapeConfig(BaseModel):
    """What the scraper keeps. Sizes in pixels unless said otherwise."""

    model_config = ConfigDict(frozen=True)

    download: DownloadConfig = Field(default_factory=DownloadConfig)
    concurrency: int = Field(32, gt=0, description="downloads in flight at once")
    allowed_licences: frozenset[str] = DEFAULT_ALLOWED_LICENCES
    allow_unknown_licence: bool = False
    min_side: int = Field(512, ge=1)
    max_pixels: int = Field(
        Image.MAX_IMAGE_PIXELS or 89_478_485, gt=0, description="decompression-bomb limit"
    )
    duplicate_distance: int = Field(6, ge=0, le=64, description="pHash bits; 0 = identical hashes only")
    processes: int | None = Field(
        None,
        ge=0,
        description="fetch processes (download, decode, hash, encode), each with a share of the URLs and "
        "of the per-host limits; 0 = this process only; None = one per CPU for at least "
        "PROCESS_POOL_MIN_IMAGES images, else 0",
    )
    png_compress_level: int = Field(
        1, ge=0, le=9, description="zlib level of the stored PNG: 1 is ~5x faster than 6 for ~10% more bytes"
    )
    keep_original_bytes: bool = Field(
        True,
        description="store RGB JPEG/PNG/WebP files as downloaded (images/<id>.jpg...; JPEG metadata such as EXIF "
        "and GPS removed) instead of re-encoding to PNG, which costs ~5x the CPU and ~10x the bytes of a JPEG",
    )


class ScrapeJob(ScrapeConfig):
    """A profile's ``scrape:`` section and ``mcc scrape``'s flags: what to scrape and how.

    What: a URL list file (``urls``) or a search API (``source``) for ``groups`` (default
    all). How: every field of ``ScrapeConfig``. ``contact`` (an e-mail or URL) is added to
    the User-Agent unless ``download.user_agent`` is given.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    urls: str | None = Field(
        None, description="URL list: CSV (url,group,licence,attribution,page_url), TSV, JSONL or Parquet."
    )
    source: Literal["openverse", "wikimedia"] | None = Field(None, description="Search an image API instead.")
    groups: list[str] | None = Field(
        None, description="Group ids to search for (default all); with urls: the group of rows without one."
    )
    per_group: int = Field(20, ge=1, description="Candidates to take per group from the API.")
    query: str | None = Field(None, description="Search text (default: the group's concept names).")
    api_url: str | None = Field(None, description="Base URL of the API (a mirror or a test server).")
    contact: str | None = Field(None, description="Contact (e-mail or URL) added to the User-Agent.")
    retry_failed: bool = Field(
        False, description="Try again URLs rejected for a timeout, HTTP or connection error."
    )

    @model_validator(mode="before")
    @classmethod
    def _contact_in_user_agent(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("contact"):
            download = data.get("download") or {}
            if isinstance(download, DownloadConfig):
                download = download.model_dump()
            if not download.get("user_agent"):
                data = {**data, "download": {**download, "user_agent": default_user_agent(data["contact"])}}
        return data


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


class ImageIndex:
    """Exact (sha256) and perceptual (pHash) fingerprints of every image in a store.

    ``sha256`` keys are both the stored files' hashes and the downloaded bytes' hashes of
    web records. Perceptual hashes of stored images are cached in ``indexes/image-hashes.json``
    of the work dir (keyed by record id and stored-file sha256), so only new images are
    opened on the next run.
    """

    def __init__(self):
        self._exact: dict[str, str] = {}
        self._ids: list[str] = []
        self._hashes = np.zeros(1024, dtype=np.uint64)
        self.cache: dict[str, dict[str, str]] = {}
        self.cache_changed = False

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, record_id: str, sha256s: Iterable[str], perceptual: int) -> None:
        for sha in sha256s:
            self._exact.setdefault(sha, record_id)
        if len(self._ids) == len(self._hashes):
            self._hashes = np.concatenate([self._hashes, np.zeros_like(self._hashes)])
        self._hashes[len(self._ids)] = np.uint64(perceptual)
        self._ids.append(record_id)

    def match(self, sha256: str, perceptual: int, max_distance: int) -> tuple[str, str] | None:
        """(record id, how) of the first image that is the same, or None."""
        if sha256 in self._exact:
            return self._exact[sha256], "identical bytes (sha256)"
        if not self._ids:
            return None
        distances = hamming_to_many(self._hashes[: len(self._ids)], perceptual)
        best = int(np.argmin(distances))
        if distances[best] <= max_distance:
            return self._ids[best], f"near-identical pixels (pHash distance {int(distances[best])})"
        return None

    @classmethod
    def from_store(cls, store: ManifestStore) -> ImageIndex:
        """Index every record of ``store`` that has an image (any state), using the hash cache.

        ``cache`` is the refreshed cache (record id -> {sha256, phash}); ``cache_changed``
        says whether it differs from the file, which the scraper rewrites at the end of its run.
        """
        try:
            cache: dict[str, dict[str, str]] = json.loads(store.read_bytes(INDEX_PATH))
        except (FileNotFoundError, ValueError):
            cache = {}
        index = cls()
        fresh: dict[str, dict[str, str]] = {}
        for record in store.iter():
            if record.image is None:
                continue
            entry = cache.get(record.id)
            if entry is None or entry.get("sha256") != record.image.sha256:
                try:
                    entry = {"sha256": record.image.sha256, "phash": to_hex(phash(store.open_image(record)))}
                except (OSError, ValueError) as error:
                    logger.warning("image of %s cannot be read for deduplication: %s", record.id, error)
                    continue
            fresh[record.id] = entry
            shas = [record.image.sha256]
            for event in record.history:
                if event.stage == STAGE and "content_sha256" in event.params:
                    shas.append(event.params["content_sha256"])
            index.add(record.id, shas, from_hex(entry["phash"]))
        index.cache = fresh
        index.cache_changed = fresh != cache
        return index

    def cache_entry(self, record_id: str, sha256: str, perceptual: int) -> None:
        """Add a newly stored image to ``cache``."""
        self.cache[record_id] = {"sha256": sha256, "phash": to_hex(perceptual)}
        self.cache_changed = True


def plan_web_records(
    candidates: Iterable[Candidate],
    groups: dict[str, ConceptGroup],
    store: ManifestStore,
    retry_transient: bool = False,
) -> tuple[list[Record], list[str]]:
    """Records to scrape for ``candidates``: (records, ids skipped because already in the store).

    A candidate whose record exists is skipped, unless the record is still ``planned``
    (an interrupted run) or, with ``retry_transient``, was rejected by the scraper for a
    transient reason (timeout, http_error, connection_error). Duplicate URLs count once.
    Raises ValueError up front for a candidate whose group is not in ``groups``.
    """
    records: list[Record] = []
    skipped: list[str] = []
    seen: set[str] = set()
    for candidate in candidates:
        group = groups.get(candidate.group)
        if group is None:
            raise ValueError(
                f"candidate {candidate.url} has group {candidate.group!r}, which is not in the "
                "groups file; use a group id of manifests/groups.yaml"
            )
        record_id = candidate.record_id
        if record_id in seen:
            continue
        seen.add(record_id)
        if not store.exists(record_id):
            records.append(candidate.to_record(group))
            continue
        existing = store.get(record_id)
        rejection = existing.rejection
        if existing.state == State.planned and isinstance(existing.source, WebSource):
            records.append(existing)
        elif (
            retry_transient
            and existing.state == State.rejected
            and rejection is not None
            and rejection.stage == STAGE
            and rejection.reason in TRANSIENT_REASONS
        ):
            records.append(existing.advance(State.planned, STAGE, note=f"retry after {rejection.reason}"))
        else:
            skipped.append(record_id)
    return records, skipped


@dataclass
class FetchOutcome:
    """What fetching one URL gave: a prepared image, or a failure ``reason`` and ``detail``.

    ``params`` holds what is recorded in either case (url, final_url, attempts and, for
    a download, redirects, status, content type, size, elapsed seconds).
    """

    record_id: str
    params: dict[str, Any]
    prepared: PreparedImage | None = None
    reason: str | None = None
    detail: str | None = None


async def fetch_and_prepare(
    record_id: str,
    url: str,
    downloader: Downloader,
    config: ScrapeConfig,
    run_cpu: Callable[..., Awaitable[PreparedImage]],
) -> FetchOutcome:
    """Download ``url`` and run ``prepare_image`` on it with ``run_cpu`` (a thread or process)."""
    params: dict[str, Any] = {"url": url}
    try:
        download = await downloader.get(url)
    except DownloadFailure as failure:
        params.update(final_url=failure.final_url, attempts=failure.attempts)
        return FetchOutcome(record_id, params, reason=failure.reason, detail=failure.detail)
    params.update(
        final_url=download.final_url,
        attempts=download.attempts,
        redirects=download.redirects,
        http_status=download.status,
        content_type=download.content_type,
        bytes=len(download.data),
        elapsed_s=round(download.elapsed, 4),
    )
    try:
        prepared = await run_cpu(
            prepare_image,
            download.data,
            config.min_side,
            config.max_pixels,
            config.png_compress_level,
            config.keep_original_bytes,
        )
    except ImageRejected as rejected:
        detail = rejected.detail
        if rejected.reason == "not_an_image" and download.content_type:
            detail += f" (served as Content-Type {download.content_type})"
        return FetchOutcome(record_id, params, reason=rejected.reason, detail=detail)
    return FetchOutcome(record_id, params, prepared=prepared)


def _shard_config(config: ScrapeConfig, processes: int) -> ScrapeConfig:
    """The share of one of ``processes`` fetch processes: rates and connections divided."""
    download = config.download.model_copy(
        update={
            "per_host_rate": config.download.per_host_rate / processes,
            "per_host_connections": max(1, -(-config.download.per_host_connections // processes)),
        }
    )
    return config.model_copy(
        update={"download": download, "concurrency": max(1, -(-config.concurrency // processes))}
    )


def _fetch_process(items: list[tuple[str, str]], config: ScrapeConfig, results) -> None:
    """Entry point of a fetch process: fetch and prepare ``items`` (record id, URL), send each outcome."""

    async def run() -> None:
        queue = iter(items)
        async with Downloader(config.download) as downloader:

            async def worker() -> None:
                for record_id, url in queue:
                    try:
                        outcome = await fetch_and_prepare(
                            record_id, url, downloader, config, asyncio.to_thread
                        )
                    except Exception as error:  # noqa: BLE001 - one URL must never stop the shard
                        outcome = FetchOutcome(
                            record_id, {"url": url}, reason="error", detail=f"{type(error).__name__}: {error}"
                        )
                    results.put(outcome)

            await asyncio.gather(*(worker() for _ in range(min(config.concurrency, len(items)))))

    try:
        asyncio.run(run())
    finally:
        results.put(None)  # this shard is done


class WebScraper:
    """The scrape stage (``manifests.stage``): downloads, checks, deduplicates planned web records.

    Fetching (download, decode, hash, encode) runs in this process's event loop, or, for
    large batches, in ``config.processes`` fetch processes that each take a share of the
    URLs and of the per-host limits; deciding (licence, duplicates) happens here, one
    record at a time, so the duplicate index has one owner. ``run`` yields each record as
    soon as it is decided, with its image bytes, and the runner writes both. Fetch
    processes are started with ``spawn``: a script that scrapes 100 URLs or more must do
    it under ``if __name__ == "__main__":`` (or set ``processes=0``).
    """

    name = STAGE
    accepts = (State.planned,)
    batch_size = 1_000_000  # one batch: downloads of the whole selection overlap
    writers = 4  # file writes (fsync) of different records overlap on this many threads

    def __init__(self, config: ScrapeConfig | None = None):
        self.config = config or ScrapeConfig()
        self._index: ImageIndex | None = None

    def takes(self, record: Record) -> bool:
        """Only web records; planned scenes belong to the generator."""
        return isinstance(record.source, WebSource)

    def run(self, batch: list[Record], store: ManifestStore) -> Iterator[Output]:
        """Each record of ``batch``, decided, as soon as it is (not in input order)."""
        if self._index is None:
            self._index = ImageIndex.from_store(store)
        fetchable: list[tuple[Record, Licence | None]] = []
        for record in batch:
            licence = parse_licence(record.source.licence)
            refusal = self._licence_refusal(licence)
            if refusal is None:
                fetchable.append((record, licence))
            else:  # refused before any network traffic
                params = {"url": record.source.url, "licence_raw": record.source.licence}
                yield Output(record.reject(STAGE, "licence", refusal, params=params))
        processes = self.config.processes
        if processes is None:
            processes = (os.cpu_count() or 1) if len(fetchable) >= PROCESS_POOL_MIN_IMAGES else 0
        if not fetchable:
            return
        fetched = self._fetch_in_processes(fetchable, processes) if processes else self._fetch_here(fetchable)
        for record, licence, outcome in fetched:
            yield self._finish(record, licence, outcome, self._index)

    def finish(self, store: ManifestStore) -> dict[str, bytes]:
        """The refreshed perceptual-hash cache (``indexes/image-hashes.json``), when it changed."""
        index, self._index = self._index, None
        if index is None or not index.cache_changed:
            return {}
        return {INDEX_PATH: json.dumps(index.cache, sort_keys=True).encode()}

    def _fetch_here(self, fetchable) -> Iterator[tuple[Record, Licence | None, FetchOutcome]]:
        """Fetch in this process's own event loop, which runs while the caller waits for the next outcome."""
        loop = asyncio.new_event_loop()
        finished: asyncio.Queue = asyncio.Queue()
        items = iter(fetchable)  # shared by the workers: each record goes to exactly one

        async def produce() -> None:
            async with Downloader(self.config.download) as downloader:

                async def worker() -> None:
                    for record, licence in items:
                        try:
                            outcome = await fetch_and_prepare(
                                record.id, record.source.url, downloader, self.config, asyncio.to_thread
                            )
                        except Exception as error:  # noqa: BLE001 - one record must never stop the batch
                            logger.exception("fetching %s failed unexpectedly", record.source.url)
                            outcome = FetchOutcome(
                                record.id,
                                {"url": record.source.url},
                                reason="error",
                                detail=f"{type(error).__name__}: {error}",
                            )
                        await finished.put((record, licence, outcome))

                await asyncio.gather(*(worker() for _ in range(min(self.config.concurrency, len(fetchable)))))

        producer = loop.create_task(produce())
        try:
            for _ in range(len(fetchable)):
                while finished.empty():
                    if producer.done():
                        producer.result()  # raises what stopped the workers
                        raise RuntimeError("the fetch workers stopped before every record was fetched")
                    getter = loop.create_task(finished.get())
                    loop.run_until_complete(
                        asyncio.wait([getter, producer], return_when=asyncio.FIRST_COMPLETED)
                    )
                    if getter.done():
                        finished.put_nowait(getter.result())
                    else:
                        getter.cancel()
                        loop.run_until_complete(asyncio.gather(getter, return_exceptions=True))
                yield finished.get_nowait()
            loop.run_until_complete(producer)
        finally:
            if not producer.done():  # the caller stopped early: stop the downloads
                producer.cancel()
                loop.run_until_complete(asyncio.gather(producer, return_exceptions=True))
            loop.close()

    def _fetch_in_processes(
        self, fetchable, processes: int
    ) -> Iterator[tuple[Record, Licence | None, FetchOutcome]]:
        """Fetch in ``processes`` spawned processes; outcomes come back as they finish."""
        context = multiprocessing.get_context("spawn")
        results = context.Queue(maxsize=1024)
        shard_config = _shard_config(self.config, processes)
        shards = [fetchable[i::processes] for i in range(processes)]
        workers = [
            context.Process(
                target=_fetch_process,
                args=([(r.id, r.source.url) for r, _ in shard], shard_config, results),
                daemon=True,
            )
            for shard in shards
            if shard
        ]
        pending = {record.id: (record, licence) for record, licence in fetchable}
        for worker in workers:
            worker.start()
        running = len(workers)
        try:
            while running:
                try:
                    outcome = results.get(timeout=1.0)
                except queue_module.Empty:
                    if all(not w.is_alive() for w in workers) and results.empty():
                        break  # a fetch process died without saying it was done
                    continue
                if outcome is None:
                    running -= 1
                    continue
                record, licence = pending.pop(outcome.record_id)
                yield record, licence, outcome
            for worker in workers:
                worker.join(timeout=10)
            codes = [w.exitcode for w in workers]
            for record, licence in list(pending.values()):  # only when a fetch process died
                detail = f"the fetch process ended early (exit codes {codes})"
                yield (
                    record,
                    licence,
                    FetchOutcome(record.id, {"url": record.source.url}, reason="error", detail=detail),
                )
        finally:
            for worker in workers:  # the caller stopped early: no process fetches on for nothing
                if worker.is_alive():
                    worker.terminate()

    def _finish(self, record, licence, outcome, index) -> Output:
        """Decide on one fetched record (duplicate or not); its output. Never raises for it."""
        try:
            return self._decide(record, licence, outcome, index)
        except Exception as error:  # noqa: BLE001 - one record must never stop the batch
            logger.exception("deciding on %s failed unexpectedly", record.source.url)
            record.image = None
            return Output(
                record.reject(STAGE, "error", f"{type(error).__name__}: {error}", params=outcome.params)
            )

    def _decide(
        self, record: Record, licence: Licence | None, outcome: FetchOutcome, index: ImageIndex
    ) -> Output:
        params = outcome.params
        if outcome.prepared is None:
            return Output(record.reject(STAGE, outcome.reason or "error", outcome.detail, params=params))
        prepared = outcome.prepared
        params.update(content_sha256=prepared.content_sha256, phash=to_hex(prepared.phash))
        same = index.match(prepared.content_sha256, prepared.phash, self.config.duplicate_distance)
        if same is not None:
            other, how = same
            detail = f"{how} of record {other}"
            return Output(record.reject(STAGE, "duplicate", detail, params={**params, "duplicate_of": other}))
        index.add(record.id, [prepared.content_sha256, prepared.stored_sha256], prepared.phash)
        index.cache_entry(record.id, prepared.stored_sha256, prepared.phash)
        path = f"{IMAGES_DIR}/{record.id}.{prepared.extension}"
        record.image = ImageInfo(
            path=path, sha256=prepared.stored_sha256, width=prepared.width, height=prepared.height
        )
        source = record.source
        source.retrieved_at = datetime.now(UTC)
        if licence is not None:
            source.licence = licence.name
        record.source = source  # re-validate the assignment
        record.advance(
            State.generated,
            STAGE,
            params={
                **params,
                "format": prepared.format,
                "original_width": prepared.original_size[0],
                "original_height": prepared.original_size[1],
                "exif_transposed": prepared.exif_transposed,
                "frames": prepared.frames,
                "licence_code": licence.code if licence else None,
                "licence_raw": None if licence is None else licence.raw,
                "user_agent": self.config.download.user_agent,
            },
        )
        return Output(record, {path: prepared.stored})

    def _licence_refusal(self, licence: Licence | None) -> str | None:
        """Why the licence is refused, or None when it is allowed."""
        if licence is None:
            if self.config.allow_unknown_licence:
                return None
            return "no licence given (unknown); give one in the URL list or allow unknown licences explicitly"
        if licence.code in self.config.allowed_licences:
            return None
        if licence.code == "unrecognised":
            return (
                f"licence {licence.raw!r} is not recognised; normalise it (e.g. 'CC BY-SA 4.0') in the source"
            )
        return (
            f"{licence.name} ({licence.code}) is not on the allow-list {sorted(self.config.allowed_licences)}"
        )


def find_candidates(
    job: ScrapeJob,
    groups: dict[str, ConceptGroup],
    log: Callable[[str], None] = logger.info,
    openverse_token: str | None = None,
) -> tuple[list[Candidate], int]:
    """The candidates of ``job``: the rows of its URL list, or a search API's answers per group.

    Returns (candidates, rows of the URL list skipped as unusable, each logged). Raises
    ValueError for a job that names neither or both, or unknown group ids; ``UrlListError``
    / ``SourceError`` for a file or an API that cannot be used.
    """
    from generators.sources import OpenverseSource, WikimediaCommonsSource

    if (job.urls is None) == (job.source is None):
        raise ValueError(
            "give exactly one of scrape.urls (--urls FILE) or scrape.source (--source openverse|wikimedia)"
        )
    unknown = [g for g in job.groups or [] if g not in groups]
    if unknown:
        raise ValueError(f"unknown group id(s) {unknown}; see the groups file (manifests/groups.yaml)")
    if job.urls is not None:
        if job.groups and len(job.groups) > 1:
            raise ValueError(
                "with a URL list, scrape.groups (--group) gives the one group of rows without one"
            )
        url_list = read_url_list(job.urls, set(groups), default_group=job.groups[0] if job.groups else None)
        for line, why in url_list.skipped:
            log(f"skipped {job.urls}:{line} {why}")
        return list(url_list.candidates), len(url_list.skipped)
    user_agent = job.download.user_agent
    if job.source == "openverse":
        searcher = OpenverseSource(
            base_url=job.api_url or "https://api.openverse.org",
            token=openverse_token,
            licences=job.allowed_licences,
            user_agent=user_agent,
            min_side=job.min_side,
        )
    else:
        if not job.contact:
            log(
                "Wikimedia asks API clients for contact details in the User-Agent: set scrape.contact (--contact)"
            )
        searcher = WikimediaCommonsSource(
            api_url=job.api_url or "https://commons.wikimedia.org/w/api.php",
            user_agent=user_agent,
            min_side=job.min_side,
        )
    candidates: list[Candidate] = []
    for group_id in job.groups or list(groups):
        found = searcher.search(groups[group_id], job.per_group, job.query)
        log(f"{searcher.name}: {len(found)} candidates for {group_id}")
        candidates.extend(found)
    return candidates, 0


def scrape(
    job: ScrapeJob,
    store: ManifestStore,
    groups_file: str | os.PathLike | None = None,
    progress: Callable[[Record], None] | None = None,
    openverse_token: str | None = None,
) -> list[Record]:
    """The whole of ``mcc scrape`` and the flows' scrape task: find, plan and scrape ``job``'s images.

    Returns the records processed in this run (URLs already in the store are skipped,
    unless ``job.retry_failed`` and they failed for a transient reason).
    """
    groups = {g.id: g for g in load_groups(groups_file)}
    candidates, _ = find_candidates(job, groups, logger.info, openverse_token)
    records, skipped = plan_web_records(candidates, groups, store, retry_transient=job.retry_failed)
    if skipped:
        logger.info("%d URLs are already in the store; skipped", len(skipped))
    scraper = WebScraper(job)
    return run_stage(scraper, store, records, progress=progress, writers=scraper.writers).records
