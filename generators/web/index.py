"""Step 4 of the scrape stage: the duplicate index over every image of a store."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable

import numpy as np

from generators.perceptual_hash import from_hex, hamming_to_many, phash, to_hex
from generators.web.config import INDEX_PATH
from manifests.store import ManifestStore

logger = logging.getLogger(__name__)


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
        """Index every record of ``store`` that has an image (any state), from the record
        index's fingerprints and the hash cache: only records whose image is new are opened.

        ``cache`` is the refreshed cache (record id -> {sha256, phash}); ``cache_changed``
        says whether it differs from the file, which the scraper rewrites at the end of its run.
        """
        try:
            cache: dict[str, dict[str, str]] = json.loads(store.read_bytes(INDEX_PATH))
        except (FileNotFoundError, ValueError):
            cache = {}
        index = cls()
        fresh: dict[str, dict[str, str]] = {}
        for record_id, summary in store.summaries().items():
            if not summary.fingerprints:  # no image
                continue
            stored_sha = summary.fingerprints[0]
            entry = cache.get(record_id)
            if entry is None or entry.get("sha256") != stored_sha:
                try:
                    entry = {
                        "sha256": stored_sha,
                        "phash": to_hex(phash(store.open_image(store.get(record_id)))),
                    }
                except (OSError, ValueError, KeyError) as error:
                    logger.warning("image of %s cannot be read for deduplication: %s", record_id, error)
                    continue
            fresh[record_id] = entry
            index.add(record_id, summary.fingerprints, from_hex(entry["phash"]))
        index.cache = fresh
        index.cache_changed = fresh != cache
        return index

    def cache_entry(self, record_id: str, sha256: str, perceptual: int) -> None:
        """Add a newly stored image to ``cache``."""
        self.cache[record_id] = {"sha256": sha256, "phash": to_hex(perceptual)}
        self.cache_changed = True
