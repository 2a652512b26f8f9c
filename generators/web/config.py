"""What the scrape stage keeps (``ScrapeConfig``) and what it scrapes (``ScrapeJob``), and its constants."""

from __future__ import annotations

from typing import Any, Literal

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, model_validator

from generators.download import DownloadConfig, default_user_agent
from generators.licences import DEFAULT_ALLOWED_LICENCES
from manifests.reasons import ScrapeReason
from manifests.workdir import WorkDir

STAGE = "scrape"
SCRAPE_FAILURE_REASONS = tuple(ScrapeReason)  # manifests.reasons holds what each code means
TRANSIENT_REASONS = frozenset({"timeout", "http_error", "connection_error"})
PROCESS_POOL_MIN_IMAGES = 100  # below this, starting fetch processes (~1 s each) costs more than it saves
INDEX_PATH = WorkDir.HASH_INDEX


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
        description="store RGB JPEG/PNG/WebP files without a non-sRGB colour profile with their pixels as "
        "downloaded (images/<id>.jpg...; every metadata segment or chunk such as EXIF, GPS and XMP, and any bytes "
        "after the image, removed) instead of re-encoding to PNG, which costs ~5x the CPU and ~10x the bytes",
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
    api_rate: float = Field(1.0, ge=0, description="Search API requests per second (0 = no limit).")
    api_max_pages: int = Field(10, ge=1, description="Result pages read per group at most.")
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
