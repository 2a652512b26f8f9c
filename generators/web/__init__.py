"""The web scraper stage (``generators.web``, one module per concern): planned web records -> records with a stored image, or rejected.

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

Modules: ``config`` (``ScrapeConfig``, ``ScrapeJob``, the constants), ``image`` (step 3 and
the bytes to store), ``index`` (step 4), ``plan`` (candidates and planned records),
``scraper`` (``WebScraper`` and ``scrape``).

A failure is ``record.reject(stage="scrape", reason=<one of SCRAPE_FAILURE_REASONS>,
detail=...)``. Every processed record, accepted or rejected, is written to the store as
soon as it is done, and kept. Records already in the store are not scraped again
(``plan_web_records`` skips them), so re-running a URL list only does the new URLs.
"""

from generators.web.config import (
    INDEX_PATH,
    PROCESS_POOL_MIN_IMAGES,
    SCRAPE_FAILURE_REASONS,
    STAGE,
    TRANSIENT_REASONS,
    ScrapeConfig,
    ScrapeJob,
)
from generators.web.image import (
    ImageRejected,
    PreparedImage,
    WebImage,
    load_web_image,
    prepare_image,
    sniff_image_format,
    strip_jpeg_metadata,
    strip_metadata,
    strip_png_metadata,
    strip_webp_metadata,
)
from generators.web.index import ImageIndex
from generators.web.plan import find_candidates, plan_web_records
from generators.web.scraper import FetchOutcome, ScrapeRun, WebScraper, fetch_and_prepare, scrape

__all__ = [
    "INDEX_PATH",
    "PROCESS_POOL_MIN_IMAGES",
    "SCRAPE_FAILURE_REASONS",
    "STAGE",
    "TRANSIENT_REASONS",
    "FetchOutcome",
    "ImageIndex",
    "ImageRejected",
    "PreparedImage",
    "ScrapeConfig",
    "ScrapeJob",
    "ScrapeRun",
    "WebImage",
    "WebScraper",
    "fetch_and_prepare",
    "find_candidates",
    "load_web_image",
    "plan_web_records",
    "prepare_image",
    "scrape",
    "sniff_image_format",
    "strip_jpeg_metadata",
    "strip_metadata",
    "strip_png_metadata",
    "strip_webp_metadata",
]
