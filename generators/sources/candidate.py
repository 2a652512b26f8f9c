"""A web image found by a source adapter, before it is downloaded."""

from __future__ import annotations

from dataclasses import dataclass

from manifests.groups import ConceptGroup
from manifests.record import Concept, Record, State, WebSource, web_record_id


@dataclass(frozen=True)
class Candidate:
    """One image URL with what its source says about it.

    ``group`` is a concept-group id of the groups file; ``licence`` is the source's text
    (normalised later; ``None`` = unknown); ``query`` the search text that found it (API
    sources); ``provider`` the source (``urls``, ``openverse``, ``wikimedia``) and, for
    aggregators, the original site (``openverse:flickr``).
    """

    url: str
    group: str
    licence: str | None = None
    attribution: str | None = None
    page_url: str | None = None
    query: str | None = None
    provider: str | None = None
    title: str | None = None

    @property
    def record_id(self) -> str:
        """``web-`` + a hash of the canonical URL (ValueError if the URL is not http(s))."""
        return web_record_id(self.url)

    def to_record(self, group: ConceptGroup) -> Record:
        """A ``planned`` web record for this candidate, with the concepts of ``group``."""
        if group.id != self.group:
            raise ValueError(f"candidate {self.url} belongs to group {self.group!r}, not {group.id!r}")
        record = Record(
            id=self.record_id,
            group=group.id,
            concepts=[Concept(name=c) for c in group.concepts],
            source=WebSource(
                url=self.url,
                page_url=self.page_url or None,
                licence=self.licence or None,
                attribution=self.attribution or None,
                query=self.query,
                provider=self.provider,
            ),
            state=State.planned,
        )
        return record.log(
            "scrape", "planned from a web candidate", params={"title": self.title} if self.title else None
        )
