"""What the API source adapters share: the query of a group, the HTTP client, errors."""

from __future__ import annotations

import html
import re
import time
from typing import Any, Protocol

import httpx

from generators.download import default_user_agent
from generators.sources.candidate import Candidate
from manifests.groups import ConceptGroup


class SourceError(RuntimeError):
    """A search API refused or failed a whole query; the message says what to do."""


class SearchSource(Protocol):
    """An image search API turned into candidates for one concept group."""

    name: str

    def search(self, group: ConceptGroup, limit: int, query: str | None = None) -> list[Candidate]: ...


def group_query(group: ConceptGroup) -> str:
    """The default search text of a group: its concept names, space-separated.

    Search engines match all words, so the results tend to show several of the concepts;
    pass an explicit query for anything else.
    """
    return " ".join(group.concepts)


def strip_html(text: str | None) -> str | None:
    """Plain text of an HTML fragment (Wikimedia's Artist field is HTML)."""
    if text is None:
        return None
    plain = html.unescape(re.sub(r"<[^>]+>", " ", text))
    plain = " ".join(plain.split())
    return plain or None


def make_client(
    user_agent: str | None, timeout: float, headers: dict[str, str] | None = None
) -> httpx.Client:
    """A synchronous client for API calls: descriptive User-Agent, timeouts, no proxies from the environment."""
    return httpx.Client(
        headers={
            "User-Agent": user_agent or default_user_agent(),
            "Accept": "application/json",
            **(headers or {}),
        },
        timeout=httpx.Timeout(timeout),
        follow_redirects=True,
        trust_env=False,
    )


class Pacer:
    """At most ``rate`` calls of ``wait`` per second (0 = no limit): one search API client's pace."""

    def __init__(self, rate: float):
        if rate < 0:
            raise ValueError(f"API rate must be >= 0 requests/s, got {rate}")
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self._next = 0.0

    def wait(self) -> None:
        now = time.monotonic()
        if now < self._next:
            time.sleep(self._next - now)
            now = self._next
        self._next = now + self.interval


def page_limit(service: str, max_pages: int) -> int:
    """``max_pages`` checked: search loops never page without end (a broken or hostile API)."""
    if max_pages < 1:
        raise ValueError(f"{service}: max_pages must be at least 1, got {max_pages}")
    return max_pages


def as_int(value: Any) -> int | None:
    """An API's integer field, or None when it is missing or not an integer (``"big"``, ``12.5``)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def get_json(client: httpx.Client, url: str, params: dict[str, Any], service: str) -> Any:
    """GET a JSON document; SourceError naming the service and the status on failure."""
    try:
        response = client.get(url, params=params)
    except httpx.HTTPError as error:
        raise SourceError(f"{service} at {url} cannot be reached: {error}") from None
    if response.status_code in (401, 403):
        raise SourceError(f"{service} refused the request (HTTP {response.status_code}); check the API token")
    if response.status_code == 429:
        raise SourceError(f"{service} rate limit reached (HTTP 429); wait, lower --per-group, or use a token")
    if response.status_code >= 400:
        raise SourceError(f"{service} answered HTTP {response.status_code} for {response.url}")
    try:
        document = response.json()
    except ValueError:
        raise SourceError(f"{service} at {response.url} did not answer JSON") from None
    if not isinstance(document, dict):
        raise SourceError(f"{service} at {response.url} answered JSON that is not an object")
    return document
