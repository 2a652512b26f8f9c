"""Which per-host limit bounds a scrape right now, for the progress bar (no I/O, no rich).

A scrape is bounded per host by the rate limit (``per_host_rate`` requests/s) or by the
connections to one host (``per_host_connections``); it shows which, per host, only when
that limit is what holds the host back:

- **rate**: the host's finished downloads over the last ``WINDOW`` seconds come to at least
  80% of the rate limit (the limiter is spacing its requests);
- **connections**: the host still has at least ``per_host_connections`` URLs to fetch and
  more than its share of the downloads in flight would go to it (its URLs are more than
  ``per_host_connections / concurrency`` of all URLs left), so downloads wait for a
  connection to that host while the total allows more.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

from generators.download import DownloadConfig
from manifests.record import Record


def host_of(record: Record) -> str:
    return urlsplit(record.source.url).hostname or "?"


class HostLimits:
    """Fed each finished record (``finished``); ``describe()`` names the binding limits."""

    WINDOW = 5.0
    SHOWN = 3  # hosts named at most

    def __init__(
        self,
        records: Iterable[Record],
        download: DownloadConfig,
        concurrency: int,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.left = Counter(host_of(r) for r in records)
        self.rate, self.connections, self.concurrency = (
            download.per_host_rate,
            download.per_host_connections,
            concurrency,
        )
        self.clock = clock
        self.started = clock()
        self.recent: dict[str, deque[float]] = {}

    def finished(self, record: Record) -> None:
        host = host_of(record)
        self.left[host] -= 1
        self.recent.setdefault(host, deque()).append(self.clock())

    def per_second(self, host: str) -> float:
        """The host's finished downloads per second over the last ``WINDOW`` seconds."""
        now = self.clock()
        times = self.recent.get(host, deque())
        while times and times[0] < now - self.WINDOW:
            times.popleft()
        return len(times) / max(min(self.WINDOW, now - self.started), 1e-9)

    def describe(self) -> str:
        """``"a.example: rate 5/s; b.org: 8 connections"``, or ``""`` when no per-host limit binds."""
        total_left = sum(n for n in self.left.values() if n > 0)
        parts = []
        for host, left in self.left.most_common():
            if left <= 0 or len(parts) == self.SHOWN:
                break
            speed = self.per_second(host)
            if self.rate and speed >= 0.8 * self.rate:
                parts.append(f"{host}: rate {self.rate:g}/s")
            elif (
                self.connections < self.concurrency
                and left >= self.connections
                and left / total_left > self.connections / self.concurrency
            ):
                parts.append(f"{host}: {self.connections} connections ({speed:.0f}/s)")
        return "; ".join(parts)
