"""Wikimedia Commons (MediaWiki Action API) file search as a candidate source.

One request searches the File namespace and returns each file's URL and metadata::

    GET /w/api.php?action=query&format=json&formatversion=2&generator=search
        &gsrsearch=<query> filetype:bitmap&gsrnamespace=6&gsrlimit=50
        &prop=imageinfo&iiprop=url|size|mime|extmetadata

answering ``{"query": {"pages": [{"title", "index", "imageinfo": [{"url",
"descriptionurl", "width", "height", "mime", "extmetadata": {"LicenseShortName":
{"value": "CC BY-SA 4.0"}, "LicenseUrl": {...}, "License": {...}, "Artist": {...}}}]}]},
"continue": {"gsroffset": 50, "continue": "gsroffset||"}}``; the ``continue`` object is
sent back to get the next page. Wikimedia asks API clients for a User-Agent with contact
information (``--contact``).
"""

from __future__ import annotations

from generators.sources.candidate import Candidate
from generators.sources.search import (
    Pacer,
    SourceError,
    as_int,
    get_json,
    group_query,
    make_client,
    page_limit,
    strip_html,
)
from manifests.groups import ConceptGroup

RASTER_MIMES = frozenset({"image/jpeg", "image/png", "image/webp", "image/gif"})
_METADATA = "LicenseShortName|LicenseUrl|License|Artist|Credit|AttributionRequired|ObjectName"


def _meta(extmetadata: dict, key: str) -> str | None:
    value = (extmetadata.get(key) or {}).get("value")
    return str(value).strip() if value not in (None, "") else None


class WikimediaCommonsSource:
    """Search Wikimedia Commons for raster images of a concept group."""

    name = "wikimedia"

    def __init__(
        self,
        api_url: str = "https://commons.wikimedia.org/w/api.php",
        user_agent: str | None = None,
        timeout: float = 30.0,
        batch: int = 50,
        min_side: int = 0,
        requests_per_second: float = 1.0,
        max_pages: int = 10,
    ):
        self.api_url = api_url
        self.pacer = Pacer(requests_per_second)  # Wikimedia asks for serial, unhurried API requests
        self.max_pages = page_limit("Wikimedia Commons", max_pages)
        self.batch = batch
        self.min_side = min_side
        self.client = make_client(user_agent, timeout)

    def search(self, group: ConceptGroup, limit: int, query: str | None = None) -> list[Candidate]:
        """Up to ``limit`` candidates in search-rank order, following ``continue`` for at most ``max_pages`` pages."""
        query = query or group_query(group)
        params: dict[str, str | int] = {
            "action": "query",
            "format": "json",
            "formatversion": 2,
            "generator": "search",
            "gsrsearch": f"{query} filetype:bitmap",
            "gsrnamespace": 6,
            "gsrlimit": min(self.batch, max(limit, 1)),
            "prop": "imageinfo",
            "iiprop": "url|size|mime|extmetadata",
            "iiextmetadatafilter": _METADATA,
        }
        candidates: list[Candidate] = []
        for _ in range(self.max_pages):
            if len(candidates) >= limit:
                break
            self.pacer.wait()
            document = get_json(self.client, self.api_url, params, "Wikimedia Commons")
            if "error" in document:
                error = document["error"]
                raise SourceError(f"Wikimedia Commons API error {error.get('code')}: {error.get('info')}")
            pages = (document.get("query") or {}).get("pages") or []
            if isinstance(pages, dict):  # formatversion=1 shape
                pages = list(pages.values())
            for page in sorted(pages, key=lambda p: p.get("index", 0)):
                candidate = self._candidate(page, group, query)
                if candidate is not None:
                    candidates.append(candidate)
                if len(candidates) >= limit:
                    break
            if not isinstance(document.get("continue"), dict):
                break
            params.update(document["continue"])
        return candidates

    def _candidate(self, page: dict, group: ConceptGroup, query: str) -> Candidate | None:
        infos = page.get("imageinfo") or []
        if not infos or not infos[0].get("url"):
            return None
        info = infos[0]
        if info.get("mime") not in RASTER_MIMES:
            return None
        width, height = as_int(info.get("width")), as_int(info.get("height"))
        if self.min_side and width and height and min(width, height) < self.min_side:
            return None
        ext = info.get("extmetadata") or {}
        licence_url = _meta(ext, "LicenseUrl")
        short = _meta(ext, "LicenseShortName")
        licence = (
            licence_url
            if licence_url and "creativecommons.org" in licence_url
            else (short or _meta(ext, "License"))
        )
        artist = strip_html(_meta(ext, "Artist"))
        title = page.get("title", "")
        attribution = ", ".join(p for p in (artist or "unknown author", short, "via Wikimedia Commons") if p)
        return Candidate(
            url=info["url"],
            group=group.id,
            licence=licence,
            attribution=attribution,
            page_url=info.get("descriptionurl"),
            query=query,
            provider="wikimedia",
            title=title.removeprefix("File:") or None,
        )
