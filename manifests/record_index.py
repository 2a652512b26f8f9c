"""The record index: a summary of every record, verified against the files on each read.

``indexes/records.json`` holds, per record id, the few fields that whole-store questions
need (state, group, source kind, rejection, image fingerprints) together with the
identity of the record file they were read from: its inode, size and modification time
in nanoseconds. ``ManifestStore.summaries`` lists ``records/`` (one ``scandir``, no file
opened), keeps an entry only when the file's identity is unchanged, and reads only the
records that are new or changed. So the index cannot drift from the records: it is a
cache that is checked on every use, and deleting it only costs one full read.

Why the identity is enough: every write of a record (``ManifestStore._write_atomic``)
creates a new file and renames it over the old one, so a rewrite changes the inode, and
it stamps the new file with ``time.time_ns()`` (not the kernel's coarse clock), so even
an inode number reused within one clock tick comes with another modification time. A
record edited in place by hand changes its size or modification time. ``mcc status
--verify`` re-reads every record and says which entries, if any, were wrong.

Nothing here touches the file system; ``ManifestStore`` reads and writes the index.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from manifests.record import Record

INDEX_VERSION = 1


@dataclass(frozen=True)
class FileIdentity:
    """What ``stat`` says about one record file: (inode, size in bytes, mtime in ns)."""

    inode: int
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class RecordSummary:
    """The fields of one record that whole-store questions need, without opening it.

    ``fingerprints``: sha256 of the stored image and of the downloaded bytes (web records),
    the exact-duplicate keys of the scraper; empty for a record without an image.
    """

    state: str
    group: str
    source_kind: str
    rejection: tuple[str, str] | None
    fingerprints: tuple[str, ...]

    @classmethod
    def of(cls, record: Record) -> RecordSummary:
        fingerprints: tuple[str, ...] = ()
        if record.image is not None:
            downloaded = [e.params["content_sha256"] for e in record.history if "content_sha256" in e.params]
            fingerprints = (record.image.sha256, *downloaded)
        rejection = (record.rejection.stage, record.rejection.reason) if record.rejection else None
        return cls(record.state.value, record.group, record.source.kind, rejection, fingerprints)


def index_bytes(entries: dict[str, tuple[FileIdentity, RecordSummary]]) -> bytes:
    """The index file for ``entries`` (record id -> (file identity, summary)), ids sorted."""
    rows = {
        record_id: [
            identity.inode,
            identity.size,
            identity.mtime_ns,
            summary.state,
            summary.group,
            summary.source_kind,
            list(summary.rejection) if summary.rejection else None,
            list(summary.fingerprints),
        ]
        for record_id, (identity, summary) in sorted(entries.items())
    }
    return json.dumps({"version": INDEX_VERSION, "records": rows}, separators=(",", ":")).encode()


def parse_index(data: bytes) -> dict[str, tuple[FileIdentity, RecordSummary]]:
    """The entries of an index file; an empty dict for one of another version or unreadable
    (the index is a cache: a bad one is rebuilt from the records, never trusted)."""
    try:
        document = json.loads(data)
        if document.get("version") != INDEX_VERSION:
            return {}
        return {
            record_id: (
                FileIdentity(int(inode), int(size), int(mtime_ns)),
                RecordSummary(state, group, kind, tuple(rejection) if rejection else None, tuple(prints)),
            )
            for record_id, (inode, size, mtime_ns, state, group, kind, rejection, prints) in document[
                "records"
            ].items()
        }
    except (ValueError, TypeError, KeyError, AttributeError):
        return {}
