"""Every path inside a work dir, in one place. All are relative to the work dir's root and use ``/``.

::

    records/<id>.json              one record (``ManifestStore``)
    images/<id>.<ext>              its image: .png for generated ones, the downloaded format for web ones
    indexes/image-hashes.json      perceptual hashes of stored images (the scraper's duplicate check)
    reports/quality-<time>.json    the quality gate's counts of each run
    reviews/stats.json             the review statistics (``mcc review stats``)
    labelstudio/                   the local Label Studio server's data (``mcc labelstudio start``)
    dataset/                       the default dataset folder of ``mcc publish`` / the publish flow
    reports/                       also the default folder of the score flow's reports
"""

from __future__ import annotations


class WorkDir:
    """The relative paths of a work dir (no I/O: ``ManifestStore`` reads and writes them)."""

    RECORDS = "records"
    IMAGES = "images"
    HASH_INDEX = "indexes/image-hashes.json"
    REPORTS = "reports"
    REVIEW_STATS = "reviews/stats.json"
    LABELSTUDIO = "labelstudio"
    DATASET = "dataset"

    @staticmethod
    def record(record_id: str) -> str:
        return f"{WorkDir.RECORDS}/{record_id}.json"

    @staticmethod
    def image(record_id: str, extension: str = "png") -> str:
        return f"{WorkDir.IMAGES}/{record_id}.{extension}"

    @staticmethod
    def quality_report(stamp: str) -> str:
        return f"{WorkDir.REPORTS}/quality-{stamp}.json"
