"""The manifest store: every record as one JSON document under one work dir.

The work dir is a local path or any fsspec URL such as ``s3://bucket/mcc``; every path in
it is named in ``manifests.workdir.WorkDir``: ``records/<id>.json`` (one record, written
atomically), ``images/<id>.png``, and the files of later stages.

No database is needed. Records are independent files, so two processes writing
different records never touch the same file, and a crash loses at most the record being
written: on a local file system ``put`` writes a temporary file in the same folder,
fsyncs it and renames it over the old one, so a reader sees the old version or the new
one, never a partial document. ``put_many`` does the same for many records with one
disk sync per batch (group commit). Object stores (S3, GCS) replace an object atomically
on upload, which gives the same guarantee there.

Whole-store questions (counts by state, records in one state, image fingerprints) read
``indexes/records.json``, a summary that is checked against every record file's identity
on each use (``manifests.record_index``), so they open only the records that changed.
"""

from __future__ import annotations

import ctypes
import hashlib
import io
import logging
import os
import socket
import time
import uuid
from collections import Counter
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass

import fsspec
from fsspec.implementations.local import LocalFileSystem
from PIL import Image
from pydantic import ValidationError

from manifests.record import ImageInfo, Record, State
from manifests.record_index import FileIdentity, RecordSummary, index_bytes, parse_index
from manifests.workdir import UnsafePathError, WorkDir, check_record_id, check_relative

logger = logging.getLogger(__name__)


def png_bytes(image: Image.Image) -> bytes:
    """``image`` encoded as PNG, unoptimised (the stored format of generated images)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


_HOST = "".join(c if c.isalnum() or c == "-" else "-" for c in socket.gethostname()) or "host"


def _writer_tag() -> str:
    """``<host>_<pid>`` of this process: the part of a temporary file's name that says who writes it."""
    return f"{_HOST}_{os.getpid()}"


def _process_alive(pid: int) -> bool:
    """Whether a process of this id runs on this machine (False for ids < 1)."""
    if pid < 1:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


class RecordLoadError(ValueError):
    """A file in ``records/`` that is not a valid record; the message names the file."""

    def __init__(self, path: str, problem: str):
        self.path = path
        self.problem = problem
        super().__init__(
            f"{path}: not a valid MCC record ({problem}). Move the file out of records/ "
            "or restore it from a backup; other records are unaffected."
        )


@dataclass(frozen=True)
class StoreCounts:
    """Records by state, rejections by (stage, reason), and files that could not be read."""

    by_state: dict[str, int]
    by_rejection: dict[tuple[str, str], int]
    unreadable: list[RecordLoadError]

    @property
    def total(self) -> int:
        return sum(self.by_state.values())


class ManifestStore:
    """All records and images of one work dir.

    ``workdir`` is a local path or an fsspec URL. Nothing is created until the first write.
    """

    def __init__(self, workdir: str | os.PathLike):
        self.workdir = str(workdir)
        self.fs, self.root = fsspec.core.url_to_fs(self.workdir)
        self.root = self.root.rstrip("/")
        self._local = isinstance(self.fs, LocalFileSystem)

    def __repr__(self) -> str:
        return f"ManifestStore({self.workdir!r})"

    # -- paths -----------------------------------------------------------------------
    def path(self, relative: str) -> str:
        """The full path (in ``self.fs``) of a path relative to the work dir; UnsafePathError
        (a ValueError) for one that could leave it (``manifests.workdir.check_relative``)."""
        return f"{self.root}/{check_relative(relative)}"

    def local_path(self, relative: str) -> str:
        """The path on this machine's disk; only for local work dirs (e.g. to serve files)."""
        if not self._local:
            raise ValueError(f"{self.workdir} is not a local folder; read files with store.open()")
        return self.path(relative)

    def _record_path(self, record_id: str) -> str:
        return self.path(WorkDir.record(record_id))  # checks the id

    # -- records ---------------------------------------------------------------------
    def put(self, record: Record) -> None:
        """Write one record atomically (the old version or the new one, never a mix)."""
        data = record.model_dump_json(indent=1).encode()
        self._write_atomic(self._record_path(record.id), data)

    PUT_BATCH = 2000
    """Records per disk sync (``write_group``) of ``put_many``: what a power loss can revert at most."""

    def put_many(self, records: Iterable[Record]) -> int:
        """Write many records, each atomically, with one disk sync per ``PUT_BATCH`` (group
        commit, ``write_group``); then merge them into the record index, so the next
        ``summaries`` need not read them. Returns the number written."""
        written: dict[str, tuple[FileIdentity, RecordSummary]] = {}
        batch: list[Record] = []
        for record in records:
            batch.append(record)
            if len(batch) == self.PUT_BATCH:
                written.update(self.write_group({}, batch))
                batch = []
        if batch:
            written.update(self.write_group({}, batch))
        if written:
            self.merge_index(written)
        return len(written)

    def write_group(
        self, files: dict[str, bytes], records: list[Record]
    ) -> dict[str, tuple[FileIdentity | None, RecordSummary]]:
        """Write ``files`` (relative path -> bytes) and then ``records``, each atomically, with
        one disk sync for all of them (group commit). Returns the records' index entries.

        On a local work dir every file and record goes to its own temporary file, the file
        system is synced once, the temporary files are renamed (the files before the records
        that may refer to them) and the folders are synced. A killed process leaves each
        file and record at its old version or its new one (temporary files are swept by
        ``sweep_temporary``); a power loss before the final folder sync can revert the
        group's renames (records back to their previous version, new ones absent), never
        leave a half-written file. Object stores write one object each, files first.
        """
        if not self._local:
            for relative, data in files.items():
                self.write_bytes(relative, data)
            for record in records:
                self.put(record)
            return {record.id: (None, RecordSummary.of(record)) for record in records}
        pending: list[tuple[str, str]] = []  # (temporary file, final path), in rename order
        entries: dict[str, tuple[FileIdentity | None, RecordSummary]] = {}
        try:
            for relative, data in files.items():
                path = self.path(relative)
                pending.append((self._write_temporary(path, data, sync=False)[0], path))
            for record in records:
                path = self._record_path(record.id)
                tmp, identity = self._write_temporary(
                    path, record.model_dump_json(indent=1).encode(), sync=False
                )
                pending.append((tmp, path))
                entries[record.id] = (identity, RecordSummary.of(record))
            folders = sorted({path.rsplit("/", 1)[0] for _, path in pending})
            if folders:
                _sync_file_system(folders[0])
            for tmp, path in pending:
                os.replace(tmp, path)
            for folder in folders:
                _sync_folder(folder)
        finally:
            for tmp, _ in pending:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        return entries

    def get(self, record_id: str) -> Record:
        """The record with this id. KeyError if there is none, RecordLoadError if it is corrupt."""
        return self._read(record_id)[0]

    def _read(self, record_id: str) -> tuple[Record, FileIdentity | None]:
        """The record and the identity of the file it was read from (None for object stores)."""
        path = self._record_path(record_id)
        identity = None
        try:
            if self._local:
                with open(path, "rb") as f:
                    # the identity of the very file read: records are replaced, never rewritten
                    status = os.fstat(f.fileno())
                    data = f.read()
                identity = FileIdentity(status.st_ino, status.st_size, status.st_mtime_ns)
            else:
                data = self.fs.cat_file(path)
        except FileNotFoundError:
            raise KeyError(f"no record {record_id!r} in {self.workdir}") from None
        record = self._parse(path, data)
        if record.id != record_id:
            raise RecordLoadError(path, f"the file is named {record_id!r} but holds record id {record.id!r}")
        return record, identity

    def exists(self, record_id: str) -> bool:
        return self.fs.exists(self._record_path(record_id))

    def ids(self) -> list[str]:
        """All record ids, sorted (temporary files of writes in progress are ignored)."""
        folder = self.path(WorkDir.RECORDS)
        if not self.fs.exists(folder):
            return []
        names = (p.rsplit("/", 1)[-1] for p in self.fs.ls(folder, detail=False))
        return sorted(n[: -len(".json")] for n in names if n.endswith(".json") and not n.startswith("."))

    def iter(
        self,
        state: State | str | Collection[State | str] | None = None,
        *,
        errors: list[RecordLoadError] | None = None,
    ) -> Iterator[Record]:
        """Yield records in id order, optionally only those in ``state`` (one state or several;
        the record index says which records to open, ``summaries``).

        A file that is not a valid record is skipped with a warning naming it (and
        appended to ``errors`` when a list is given); the other records are still read.
        """
        if state is None:
            wanted = None
            listed = self.ids()
        else:
            wanted = {State(state)} if isinstance(state, str) else {State(s) for s in state}
            values = {s.value for s in wanted}
            listed = [i for i, summary in self.summaries(errors=errors).items() if summary.state in values]
        for record_id in listed:
            try:
                record = self._get_listed(record_id)
            except RecordLoadError as error:
                logger.warning("%s", error)
                if errors is not None:
                    errors.append(error)
                continue
            except KeyError:  # deleted between listing and reading
                continue
            if wanted is None or record.state in wanted:  # it may have changed since it was summarised
                yield record

    def _get_listed(self, name: str) -> Record:
        """``get`` for a name listed in ``records/``; a name that is not a record id is a RecordLoadError too."""
        return self._read_listed(name)[0]

    def _read_listed(self, name: str) -> tuple[Record, FileIdentity | None]:
        try:
            check_record_id(name)
        except UnsafePathError as error:
            raise RecordLoadError(f"{self.path(WorkDir.RECORDS)}/{name}.json", str(error)) from None
        return self._read(name)

    def summaries(self, *, errors: list[RecordLoadError] | None = None) -> dict[str, RecordSummary]:
        """Every record's ``RecordSummary`` by id (sorted), opening only new or changed records.

        Local work dirs: one listing of ``records/`` with each file's identity (inode, size,
        mtime), checked against the record index; entries that match are used as they are,
        the other records are read and the index is rewritten (``manifests.record_index``
        says why it cannot drift). Object stores read every record. Files that are not valid
        records are skipped with a warning (and appended to ``errors``), as in ``iter``.
        """
        if not self._local:
            return {record.id: RecordSummary.of(record) for record in self.iter(errors=errors)}
        try:
            listing = list(os.scandir(self.path(WorkDir.RECORDS)))
        except FileNotFoundError:
            listing = []
        cached = self._read_index()
        entries: dict[str, tuple[FileIdentity, RecordSummary]] = {}
        for file in listing:
            if not file.name.endswith(".json") or file.name.startswith("."):
                continue
            record_id = file.name[: -len(".json")]
            try:
                status = file.stat()
            except FileNotFoundError:  # deleted since the listing
                continue
            identity = FileIdentity(status.st_ino, status.st_size, status.st_mtime_ns)
            known = cached.get(record_id)
            if known is not None and known[0] == identity:
                entries[record_id] = known
                continue
            try:
                record, identity = self._read_listed(record_id)
            except RecordLoadError as error:
                logger.warning("%s", error)
                if errors is not None:
                    errors.append(error)
                continue
            except KeyError:
                continue
            entries[record_id] = (identity, RecordSummary.of(record))
        if entries != cached:
            try:
                self._write_atomic(self.path(WorkDir.RECORD_INDEX), index_bytes(entries))
            except OSError as error:  # a read-only work dir still answers, from a full read
                logger.info("record index of %s not updated: %s", self.workdir, error)
        return {record_id: entries[record_id][1] for record_id in sorted(entries)}

    def verify_index(self) -> list[str]:
        """Ids whose record-index entry matched its file's identity but not its content (drift;
        expected: none), found by reading every record; the index is then rebuilt from them all."""
        cached = self._read_index()
        entries: dict[str, tuple[FileIdentity, RecordSummary]] = {}
        drifted = []
        for record_id in self.ids():
            try:
                record, identity = self._read_listed(record_id)
            except (RecordLoadError, KeyError):
                continue
            entries[record_id] = (identity, RecordSummary.of(record))
            known = cached.get(record_id)
            if known is not None and known[0] == identity and known != entries[record_id]:
                drifted.append(record_id)
        if self._local:
            self._write_atomic(self.path(WorkDir.RECORD_INDEX), index_bytes(entries))
        return drifted

    def _read_index(self) -> dict[str, tuple[FileIdentity, RecordSummary]]:
        try:
            return parse_index(self.read_bytes(WorkDir.RECORD_INDEX))
        except FileNotFoundError:
            return {}

    def merge_index(self, written: dict[str, tuple[FileIdentity, RecordSummary]]) -> None:
        """Add the entries ``write_group`` returned for records this process wrote (local work
        dirs; a concurrent rewrite of the index may drop them again: then the next
        ``summaries`` reads those records, nothing worse)."""
        if not self._local:
            return
        entries = self._read_index()
        entries.update(written)
        self._write_atomic(self.path(WorkDir.RECORD_INDEX), index_bytes(entries))

    def counts(self) -> StoreCounts:
        errors: list[RecordLoadError] = []
        by_state: Counter[str] = Counter()
        by_rejection: Counter[tuple[str, str]] = Counter()
        for summary in self.summaries(errors=errors).values():
            by_state[summary.state] += 1
            if summary.rejection is not None:
                by_rejection[summary.rejection] += 1
        return StoreCounts(dict(by_state), dict(by_rejection), errors)

    def _parse(self, path: str, data: bytes) -> Record:
        try:
            return Record.model_validate_json(data)
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ())) or "document"
            raise RecordLoadError(path, f"{where}: {first.get('msg')}") from None
        except ValueError as error:
            raise RecordLoadError(path, str(error)) from None

    # -- images ----------------------------------------------------------------------
    def put_image(self, record_id: str, image: Image.Image) -> tuple[str, str, int, int]:
        """Store ``image`` as PNG; returns (path relative to the work dir, sha256 of the file, width, height)."""
        data = png_bytes(image)
        relative = WorkDir.image(record_id)
        self._write_atomic(self.path(relative), data)
        return relative, hashlib.sha256(data).hexdigest(), image.width, image.height

    def store_image(self, record: Record, image: Image.Image) -> ImageInfo:
        """``put_image`` and set ``record.image`` (the record itself is not written)."""
        path, sha, width, height = self.put_image(record.id, image)
        record.image = ImageInfo(path=path, sha256=sha, width=width, height=height)
        return record.image

    def open_image(self, record: Record) -> Image.Image:
        """The record's stored image, loaded, in RGB."""
        if record.image is None:
            raise ValueError(f"record {record.id} has no image yet (state {record.state.value})")
        with self.fs.open(self.path(record.image.path), "rb") as f:
            image = Image.open(io.BytesIO(f.read()))
            image.load()
        return image.convert("RGB")

    # -- any file --------------------------------------------------------------------
    def write_bytes(self, relative: str, data: bytes) -> str:
        """Write any file under the work dir atomically; returns its full path."""
        path = self.path(relative)
        self._write_atomic(path, data)
        return path

    def read_bytes(self, relative: str) -> bytes:
        return self.fs.cat_file(self.path(relative))

    TEMPORARY_MAX_AGE = 3600.0
    """Seconds after which a temporary file is swept even if its writer's pid is alive (pids are reused)."""

    def sweep_temporary(self) -> list[str]:
        """Delete temporary files (``.<name>.<host>_<pid>.<random>.tmp``) that a killed writer left behind.

        A file goes when it was written on this machine by a process that no longer runs,
        or when it is older than ``TEMPORARY_MAX_AGE`` (a writer on another machine sharing
        the folder, or a reused pid); writes in progress stay. Only local work dirs have
        such files (object stores upload whole objects). Returns the paths removed.
        """
        if not self._local:
            return []
        removed = []
        for folder in WorkDir.STORE_FOLDERS:
            try:
                entries = list(os.scandir(self.path(folder)))
            except FileNotFoundError:
                continue
            for entry in entries:
                parts = entry.name.split(".")
                if not (entry.name.startswith(".") and entry.name.endswith(".tmp") and len(parts) >= 5):
                    continue
                host, _, pid = parts[-3].rpartition("_")
                dead_here = host == _HOST and not _process_alive(int(pid) if pid.isdigit() else -1)
                try:
                    stale = dead_here or time.time() - entry.stat().st_mtime > self.TEMPORARY_MAX_AGE
                    if stale:
                        os.unlink(entry.path)
                        removed.append(entry.path)
                except FileNotFoundError:  # its writer renamed or removed it meanwhile
                    continue
        if removed:
            logger.info("removed %d temporary files left by killed writers in %s", len(removed), self.workdir)
        return removed

    def _write_atomic(self, path: str, data: bytes) -> None:
        if self._local:
            tmp, _ = self._write_temporary(path, data, sync=True)
            try:
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        else:
            self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            self.fs.pipe_file(path, data)

    def _write_temporary(self, path: str, data: bytes, *, sync: bool) -> tuple[str, FileIdentity]:
        """Write ``data`` to a new temporary file beside ``path`` (local work dirs); returns
        its path and identity. Its mtime is set from ``time.time_ns()``, finer than the
        kernel's clock tick, so two writes of one record never share an identity
        (``manifests.record_index``)."""
        parent, name = path.rsplit("/", 1)
        os.makedirs(parent, exist_ok=True)
        tmp = f"{parent}/.{name}.{_writer_tag()}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                now = time.time_ns()
                os.utime(f.fileno(), ns=(now, now))
                if sync:
                    os.fsync(f.fileno())
                status = os.fstat(f.fileno())
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return tmp, FileIdentity(status.st_ino, status.st_size, status.st_mtime_ns)


def _sync_file_system(folder: str) -> None:
    """Flush every written file of the file system holding ``folder`` to disk: ``syncfs``
    where the C library has it (Linux), else ``sync``."""
    syncfs = getattr(_LIBC, "syncfs", None)
    if syncfs is None:
        os.sync()
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        if syncfs(fd) != 0:
            raise OSError(ctypes.get_errno(), f"syncfs of {folder} failed")
    finally:
        os.close(fd)


def _sync_folder(folder: str) -> None:
    """Make the renames in ``folder`` durable (fsync of the directory)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_LIBC = ctypes.CDLL(None, use_errno=True) if os.name == "posix" else None
