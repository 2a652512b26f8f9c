"""Every path inside a work dir, in one place. All are relative to the work dir's root and use ``/``.

::

    records/<id>.json              one record (``ManifestStore``)
    images/<id>.<ext>              its image: .png for generated ones, the downloaded format for web ones
    indexes/records.json           a summary of every record, verified on read (``manifests.record_index``)
    indexes/image-hashes.json      perceptual hashes of stored images (the scraper's duplicate check)
    reports/quality-<time>.json    the quality gate's counts of each run
    reviews/stats.json             the review statistics (``mcc review stats``)
    labelstudio/                   the local Label Studio server's data (``mcc labelstudio start``)
    dataset/                       the default dataset folder of ``mcc publish`` / the publish flow
    reports/                       also the default folder of the score flow's reports
"""

from __future__ import annotations

import re

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,199}$")
RECORD_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+)*$")
"""Record ids are file names: letters, digits, ``_`` and ``-``, single dots between them (no ``..``)."""


class UnsafePathError(ValueError):
    """A path or record id that could leave the work dir (``..``, ``/``, odd characters)."""


def check_record_id(record_id: str) -> str:
    """``record_id`` if it is a safe file name (``RECORD_ID_PATTERN``, at most 128 characters); else UnsafePathError."""
    if not isinstance(record_id, str) or len(record_id) > 128 or not RECORD_ID_PATTERN.match(record_id):
        raise UnsafePathError(
            f"invalid record id {record_id!r}: ids are file names of letters, digits, '_', '-' and single "
            "dots (at most 128 characters), such as 'web-3f2a...' or 'gen-91c0...'; a record file with "
            "another id was not written by MCC: move it out of records/"
        )
    return record_id


def check_relative(relative: str) -> str:
    """``relative`` if it is a path inside the work dir: ``/``-separated safe names, no ``.`` or ``..``
    part, not absolute; else UnsafePathError. Every path ``ManifestStore`` touches goes through here."""
    if relative == "":  # the work dir itself
        return relative
    parts = relative.split("/") if isinstance(relative, str) else [""]
    if not all(_SAFE_NAME.match(part) for part in parts) or any(".." in part for part in parts):
        raise UnsafePathError(
            f"path {relative!r} is not inside the work dir: paths are relative, '/'-separated names of "
            "letters, digits, '.', '_', '+', '-' (no '..', no leading '/'); a record pointing elsewhere "
            "was not written by MCC"
        )
    return relative


class WorkDir:
    """The relative paths of a work dir (no I/O: ``ManifestStore`` reads and writes them).

    Paths built from a record id check it (``check_record_id``), so a crafted id cannot
    name a file outside the work dir."""

    RECORDS = "records"
    IMAGES = "images"
    RECORD_INDEX = "indexes/records.json"
    HASH_INDEX = "indexes/image-hashes.json"
    REPORTS = "reports"
    REVIEW_STATS = "reviews/stats.json"
    LABELSTUDIO = "labelstudio"
    DATASET = "dataset"
    STORE_FOLDERS = (RECORDS, IMAGES, HASH_INDEX.split("/")[0], REPORTS, REVIEW_STATS.split("/")[0])
    """The folders ``ManifestStore`` writes into (atomically, through temporary files)."""

    @staticmethod
    def record(record_id: str) -> str:
        return f"{WorkDir.RECORDS}/{check_record_id(record_id)}.json"

    @staticmethod
    def image(record_id: str, extension: str = "png") -> str:
        if extension not in ("png", "jpg", "webp"):
            raise UnsafePathError(f"image extension {extension!r} is not one of png, jpg, webp")
        return f"{WorkDir.IMAGES}/{check_record_id(record_id)}.{extension}"

    @staticmethod
    def quality_report(stamp: str) -> str:
        return f"{WorkDir.REPORTS}/quality-{stamp}.json"
