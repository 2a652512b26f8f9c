"""Which web records to scrape: candidates from a URL list or a search API, planned against the store."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from generators.sources.candidate import Candidate
from generators.sources.urllist import read_url_list
from generators.web.config import STAGE, TRANSIENT_REASONS, ScrapeJob
from manifests.groups import ConceptGroup
from manifests.record import Record, State, WebSource
from manifests.store import ManifestStore

logger = logging.getLogger(__name__)


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
    present = set(store.ids())
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
        if record_id not in present:
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
            requests_per_second=job.api_rate,
            max_pages=job.api_max_pages,
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
            requests_per_second=job.api_rate,
            max_pages=job.api_max_pages,
        )
    candidates: list[Candidate] = []
    for group_id in job.groups or list(groups):
        found = searcher.search(groups[group_id], job.per_group, job.query)
        log(f"{searcher.name}: {len(found)} candidates for {group_id}")
        candidates.extend(found)
    return candidates, 0
