"""Openverse (api.openverse.org) image search as a candidate source.

``GET /v1/images/?q=...&license=cc0,by&page=1&page_size=20`` answers
``{"result_count", "page_count", "page_size", "page", "results": [...]}``; each result
has ``url`` (the file), ``foreign_landing_url`` (its page), ``license`` (``by-sa``,
``cc0``, ``pdm``...), ``license_version``, ``license_url``, ``creator``, ``title``,
``attribution`` (a ready-made credit line), ``provider``/``source``, ``width``,
``height``, ``mature``. Anonymous clients get at most 20 results a page and a low
rate limit; a token (``Authorization: Bearer``) raises both.
"""

from __future__ import annotations

from collections.abc import Iterable

from generators.licences import DEFAULT_ALLOWED_LICENCES
from generators.sources.candidate import Candidate
from generators.sources.search import Pacer, as_int, get_json, group_query, make_client, page_limit
from manifests.groups import ConceptGroup

# Our licence codes -> Openverse's ``license`` filter values.
_OPENVERSE_LICENCES = {
    "cc0": "cc0",
    "public-domain": "pdm",
    "cc-by": "by",
    "cc-by-sa": "by-sa",
    "cc-by-nc": "by-nc",
    "cc-by-nd": "by-nd",
    "cc-by-nc-sa": "by-nc-sa",
    "cc-by-nc-nd": "by-nc-nd",
}


class OpenverseSource:
    """Search Openverse for images of a concept group, filtered by licence on the server."""

    name = "openverse"

    def __init__(
        self,
        base_url: str = "https://api.openverse.org",
        token: str | None = None,
        licences: Iterable[str] = DEFAULT_ALLOWED_LICENCES,
        user_agent: str | None = None,
        timeout: float = 30.0,
        page_size: int = 20,
        min_side: int = 0,
        requests_per_second: float = 1.0,
        max_pages: int = 10,
    ):
        self.base_url = base_url.rstrip("/")
        self.pacer = Pacer(requests_per_second)
        self.max_pages = page_limit("Openverse", max_pages)
        self.licence_filter = ",".join(
            sorted(_OPENVERSE_LICENCES[c] for c in licences if c in _OPENVERSE_LICENCES)
        )
        if not self.licence_filter:
            raise ValueError(f"none of the licences {sorted(licences)} can be searched on Openverse")
        self.page_size = page_size
        self.min_side = min_side
        headers = {"Authorization": f"Bearer {token}"} if token else None
        self.client = make_client(user_agent, timeout, headers)

    def search(self, group: ConceptGroup, limit: int, query: str | None = None) -> list[Candidate]:
        """Up to ``limit`` candidates, in the API's ranking order (at most ``max_pages`` pages, paced)."""
        query = query or group_query(group)
        candidates: list[Candidate] = []
        page = 1
        while len(candidates) < limit and page <= self.max_pages:
            self.pacer.wait()
            document = get_json(
                self.client,
                f"{self.base_url}/v1/images/",
                {
                    "q": query,
                    "license": self.licence_filter,
                    "page": page,
                    "page_size": self.page_size,
                    "mature": "false",
                },
                "Openverse",
            )
            results = document.get("results") or []
            if not isinstance(results, list):
                break
            for result in results:
                candidate = self._candidate(result, group, query)
                if candidate is not None:
                    candidates.append(candidate)
                if len(candidates) >= limit:
                    break
            if not results or page >= (as_int(document.get("page_count")) or page):
                break
            page += 1
        return candidates

    def _candidate(self, result: dict, group: ConceptGroup, query: str) -> Candidate | None:
        """The candidate of one search result; None for a mature, malformed or too small one."""
        url = result.get("url") if isinstance(result, dict) else None
        if not isinstance(url, str) or not url or result.get("mature"):
            return None
        raw_size = (result.get("width"), result.get("height"))
        width, height = as_int(raw_size[0]), as_int(raw_size[1])
        if (raw_size[0] is not None and width is None) or (raw_size[1] is not None and height is None):
            return None  # a size that is not a number ("big"): the result is malformed
        if self.min_side and width and height and min(width, height) < self.min_side:
            return None
        licence = result.get("license")
        if licence and result.get("license_version"):
            licence = f"{licence} {result['license_version']}"
        attribution = result.get("attribution")
        if not attribution and result.get("creator"):
            attribution = f"{result.get('title') or 'image'} by {result['creator']}"
        origin = result.get("source") or result.get("provider")
        return Candidate(
            url=url,
            group=group.id,
            licence=licence,
            attribution=attribution,
            page_url=result.get("foreign_landing_url"),
            query=query,
            provider=f"openverse:{origin}" if origin else "openverse",
            title=result.get("title"),
        )
