"""The scrape stage itself: fetching (here or in processes), deciding, and ``scrape`` for a whole job."""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import os
import queue as queue_module
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from generators.download import Downloader, DownloadFailure
from generators.licences import Licence, parse_licence
from generators.perceptual_hash import to_hex
from generators.web.config import INDEX_PATH, PROCESS_POOL_MIN_IMAGES, STAGE, ScrapeConfig, ScrapeJob
from generators.web.image import ImageRejected, PreparedImage, prepare_image
from generators.web.index import ImageIndex
from generators.web.limits import HostLimits
from generators.web.plan import find_candidates, plan_web_records
from manifests.groups import load_groups
from manifests.lifetime import exit_with_parent
from manifests.record import ImageInfo, Record, State, WebSource
from manifests.stage import Output, run_stage
from manifests.store import ManifestStore
from manifests.workdir import WorkDir

logger = logging.getLogger(__name__)


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
        redirects=download.redirects,  # the downloader drops userinfo from every hop
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


def _fetch_process(items: list[tuple[str, str]], config: ScrapeConfig, results, parent_pid: int) -> None:
    """Entry point of a fetch process: fetch and prepare ``items`` (record id, URL), send each outcome.

    Ends itself within ``manifests.lifetime.POLL_SECONDS`` when the scraping process dies."""
    exit_with_parent(parent_pid)

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
                args=([(r.id, r.source.url) for r, _ in shard], shard_config, results, os.getpid()),
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
        path = WorkDir.image(record.id, prepared.extension)
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
                "colour_profile": prepared.colour_profile,
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


@dataclass
class ScrapeRun:
    """What ``scrape`` did: the records processed (stored or rejected), rows of the URL list that
    could not be used, and candidates already in the store (skipped)."""

    records: list[Record]
    skipped_rows: int
    already_stored: int


class _FeedingLimits:
    """A progress callback that first tells ``limits`` of each stored record."""

    def __init__(self, progress: Callable[[Record], None], limits: HostLimits):
        self.progress, self.limits = progress, limits

    def start(self, total: int) -> None:
        if hasattr(self.progress, "start"):
            self.progress.start(total)

    def __call__(self, record: Record) -> None:
        self.limits.finished(record)
        self.progress(record)


def rate_limit_line(records: list[Record], rate: float) -> str:
    """What the per-host rate limit means for this run: the busiest host bounds its duration."""
    if not rate:
        return f"{len(records)} URLs; no rate limit"
    hosts = Counter(urlsplit(r.source.url).hostname or "?" for r in records)
    host, count = hosts.most_common(1)[0]
    return (
        f"{len(records)} URLs on {len(hosts)} hosts; at most {rate:g} requests/s per host, so the busiest "
        f"({host}, {count} URLs) takes at least {count / rate:.0f} s (--rate sets the limit, e.g. for your own server)"
    )


def scrape(
    job: ScrapeJob,
    store: ManifestStore,
    groups_file: str | os.PathLike | None = None,
    progress: Callable[[Record], None] | None = None,
    openverse_token: str | None = None,
    log: Callable[[str], None] = logger.info,
) -> ScrapeRun:
    """The whole of ``mcc scrape`` and the flows' scrape task: find, plan and scrape ``job``'s images.

    URLs already in the store are skipped, unless ``job.retry_failed`` and they failed for
    a transient reason. ``log`` gets the human-readable lines (skipped rows, search counts,
    the rate limit). Raises ``GroupsFileError``, ``UrlListError``, ``SourceError`` or
    ValueError for a job that cannot run.
    """
    groups = {g.id: g for g in load_groups(groups_file)}
    candidates, skipped_rows = find_candidates(job, groups, log, openverse_token)
    records, skipped = plan_web_records(candidates, groups, store, retry_transient=job.retry_failed)
    if not records:
        return ScrapeRun([], skipped_rows, len(skipped))
    log(rate_limit_line(records, job.download.per_host_rate))
    if progress is not None:
        limits = HostLimits(records, job.download, job.concurrency)
        if hasattr(progress, "show_detail"):  # a progress bar that can say which limit binds
            progress.show_detail(limits.describe)
        progress = _FeedingLimits(progress, limits)
    processed = run_stage(WebScraper(job), store, records, progress=progress).records
    return ScrapeRun(processed, skipped_rows, len(skipped))
