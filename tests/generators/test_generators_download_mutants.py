"""Downloader details pinned where the mutation pass found gaps (loopback HTTP server, no network).

Pins: reserved IPv6 addresses are refused although ``ipaddress`` calls them global; the DNS
cache lives exactly ``ttl`` seconds; the guarded backend passes ``sleep`` delays through; the
TCP connect gets ``connect_timeout``; ``Download.attempts`` / ``final_url`` / redirects; a 3xx
answer that is not a redirect is an ``http_error``; robots.txt redirects are followed (RFC
9309 2.3.1.2: a robots.txt reached within five consecutive redirects is used).
"""

from __future__ import annotations

import asyncio
import types

import pytest
from generators_testserver import Route, serve

from generators import download
from generators.download import (
    AddressGuard,
    DownloadConfig,
    Downloader,
    DownloadFailure,
    GuardedNetworkBackend,
    address_blocked,
)

LOOPBACK = ("127.0.0.1/32",)


def _config(**options) -> DownloadConfig:
    settings = dict(
        connect_timeout=2.0,
        read_timeout=2.0,
        total_timeout=5.0,
        retries=0,
        backoff=0.01,
        per_host_rate=0,
        allowed_networks=LOOPBACK,
    )
    settings.update(options)
    return DownloadConfig(**settings)


async def _get(config: DownloadConfig, url: str):
    async with Downloader(config) as downloader:
        return await downloader.get(url)


def _redirect(location: str) -> Route:
    return Route(status=302, headers={"Location": location}, content_type="text/plain")


def test_reserved_ipv6_addresses_are_blocked_although_global():
    """4000::/3, e000::/4 ... are reserved, and ``ipaddress`` calls them global: still blocked."""
    for address in ("4000::1", "e000::1", "f000::1", "200::1"):
        assert address_blocked(address)
    assert not address_blocked("2a00:1450:4001::1")  # an ordinary global unicast address
    assert address_blocked("fe80::1%eth0") and not address_blocked("8.8.8.8")
    assert not address_blocked("4000::1", ["4000::/3"])  # unless allowed explicitly
    # an allowed network written with host bits set (10.1.2.3/8, as a config often says) is 10.0.0.0/8
    assert not address_blocked("10.200.0.1", ["10.1.2.3/8"]) and address_blocked("10.200.0.1")


def test_dns_answers_are_cached_for_exactly_ttl_seconds(monkeypatch):
    """An answer is reused while younger than ``ttl``, looked up again at ``ttl`` old (0: never reused)."""
    clock = [100.0]
    monkeypatch.setattr(download, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))

    async def lookups(ttl: float, ages: list[float]) -> int:
        guard = AddressGuard(False, LOOPBACK, ttl=ttl, timeout=2.0)
        loop = asyncio.get_running_loop()
        real, calls = loop.getaddrinfo, []

        async def counting(*args, **kwargs):
            calls.append(args)
            return await real(*args, **kwargs)

        loop.getaddrinfo = counting
        clock[0] = 100.0
        assert await guard.resolve("127.0.0.1", 80) == ["127.0.0.1"]
        for age in ages:
            clock[0] = 100.0 + age
            assert await guard.resolve("127.0.0.1", 80) == ["127.0.0.1"]
        return len(calls)

    assert asyncio.run(lookups(0.0, [0.0])) == 2
    assert asyncio.run(lookups(5.0, [4.5])) == 1
    assert asyncio.run(lookups(5.0, [5.0])) == 2


def test_guarded_backend_sleep_passes_the_delay_on():
    """``GuardedNetworkBackend.sleep(s)`` sleeps ``s`` seconds in the inner backend."""

    class Inner:
        def __init__(self):
            self.slept: list[float] = []

        async def sleep(self, seconds: float) -> None:
            self.slept.append(seconds)

    guard = AddressGuard(False, (), ttl=1.0, timeout=1.0)
    inner = Inner()
    asyncio.run(GuardedNetworkBackend(guard, inner).sleep(0.25))
    assert inner.slept == [0.25]
    asyncio.run(GuardedNetworkBackend(guard).sleep(0.001))  # the default anyio backend takes it too


def test_the_tcp_connect_gets_connect_timeout(monkeypatch):
    """Connections are opened with ``connect_timeout`` (reads and writes with ``read_timeout``)."""
    timeouts: list[float | None] = []
    real = GuardedNetworkBackend.connect_tcp

    async def recording(self, host, port, timeout=None, local_address=None, socket_options=None):
        timeouts.append(timeout)
        return await real(self, host, port, timeout, local_address, socket_options)

    monkeypatch.setattr(GuardedNetworkBackend, "connect_tcp", recording)
    with serve({"/a.jpg": Route(b"image bytes")}) as server:
        got = asyncio.run(_get(_config(connect_timeout=1.5), server.url("/a.jpg")))
    assert got.data == b"image bytes"
    assert timeouts and all(t == 1.5 for t in timeouts)


def test_a_plain_download_reports_its_url_and_one_attempt():
    """No redirect: ``final_url`` is the URL asked for, one attempt, no redirects."""
    with serve({"/a.jpg": Route(b"abc")}) as server:
        got = asyncio.run(_get(_config(), server.url("/a.jpg")))
    assert got.final_url == server.url("/a.jpg") and got.url == server.url("/a.jpg")
    assert got.attempts == 1 and got.redirects == [] and got.status == 200 and got.data == b"abc"


def test_redirects_are_followed_and_counted():
    """A 302 with Location is followed: the body of the target, its URL, every hop's attempt counted."""
    routes = {"/old.jpg": _redirect("/new.jpg"), "/new.jpg": Route(b"new")}
    with serve(routes) as server:
        got = asyncio.run(_get(_config(), server.url("/old.jpg")))
    assert got.data == b"new" and got.url == server.url("/old.jpg")
    assert got.final_url == server.url("/new.jpg") and got.redirects == [server.url("/new.jpg")]
    assert got.attempts == 2


def test_a_300_answer_is_an_http_error():
    """300 Multiple Choices is not a redirect the downloader follows, and not a body: ``http_error``."""
    choices = {"/choices": Route(b"pick one", status=300, content_type="text/html")}
    with serve(choices) as server, pytest.raises(DownloadFailure) as failure:
        asyncio.run(_get(_config(), server.url("/choices")))
    assert failure.value.reason == "http_error" and "HTTP 300" in failure.value.detail
    assert failure.value.final_url == server.url("/choices")


def test_a_redirected_robots_txt_is_used():
    """robots.txt answering 302 is followed: its rules apply (not 'unreachable, disallow all')."""
    routes = {
        "/robots.txt": _redirect("/real-robots.txt"),
        "/real-robots.txt": Route(b"User-agent: *\nDisallow: /private/\n", content_type="text/plain"),
        "/ok.jpg": Route(b"ok"),
        "/private/x.jpg": Route(b"secret"),
    }
    with serve(routes) as server:
        assert asyncio.run(_get(_config(), server.url("/ok.jpg"))).data == b"ok"
        with pytest.raises(DownloadFailure) as failure:
            asyncio.run(_get(_config(), server.url("/private/x.jpg")))
        assert server.hits("/private/x.jpg") == 0
    assert failure.value.reason == "robots_disallowed" and "disallows /private/x.jpg" in failure.value.detail


def _robots_chain(redirects: int) -> dict[str, Route]:
    hops = ["/robots.txt", *(f"/r{n}.txt" for n in range(1, redirects + 1))]
    routes = {hop: _redirect(target) for hop, target in zip(hops, hops[1:], strict=False)}
    routes[hops[-1]] = Route(b"User-agent: *\nDisallow: /private/\n", content_type="text/plain")
    return routes | {"/ok.jpg": Route(b"ok")}


def test_robots_txt_within_five_redirects_is_used_and_beyond_is_not():
    """RFC 9309 2.3.1.2: five consecutive redirects are followed; a sixth one is not (robots unreachable)."""
    with serve(_robots_chain(5)) as server:
        assert asyncio.run(_get(_config(), server.url("/ok.jpg"))).data == b"ok"
        assert server.hits("/r5.txt") == 1
    with serve(_robots_chain(6)) as server:
        with pytest.raises(DownloadFailure) as failure:
            asyncio.run(_get(_config(), server.url("/ok.jpg")))
        assert server.hits("/r6.txt") == 0 and server.hits("/ok.jpg") == 0
    assert failure.value.reason == "robots_disallowed" and "5xx" in failure.value.detail


# -- survivors of the second look (13:55) ---------------------------------------------------------
def test_default_user_agent_ends_with_the_contact_or_nothing():
    """Without a contact the parenthesis closes right after the description; with one, ``; <contact>)``."""
    from generators.download import default_user_agent

    assert default_user_agent().endswith("respects robots.txt and noai)")
    assert default_user_agent("ops@example.org").endswith("and noai; ops@example.org)")


def test_noai_directives_skip_empty_parts():
    """An empty part (``", noai"``, ``"noindex,,noimageai"``) is skipped, not the end of the header."""
    from generators.download import noai_directives

    assert noai_directives([", noai"], "mcc-benchmark-scraper") == {"noai"}
    assert noai_directives(["noindex,,noimageai"], "mcc-benchmark-scraper") == {"noimageai"}


def test_clients_and_host_slots_are_per_origin():
    """Each origin gets its own connection pool and its own per-host slot."""

    async def run(base: str) -> tuple[set, set]:
        async with Downloader(_config()) as downloader:
            await downloader.get(base + "/a.jpg")
            return set(downloader._clients), set(downloader._slots)

    with serve({"/a.jpg": Route(b"a")}) as server:
        clients, slots = asyncio.run(run(server.base))
    assert clients == {server.base} and slots == {server.base}


@pytest.mark.parametrize(("connections", "pools"), [(3, 1), (8, 1), (20, 3)])
def test_every_allowed_connection_is_used_and_never_more(connections, pools):
    """An origin allowed more connections than one pool holds gets several pools
    (httpcore's pool is quadratic in its size); all ``per_host_connections`` downloads run
    at once, never more."""

    async def run(base: str) -> int:
        async with Downloader(_config(per_host_connections=connections)) as downloader:
            await asyncio.gather(*(downloader.get(f"{base}/slow.jpg?{n}") for n in range(2 * connections)))
            return len(downloader._clients[base])

    with serve({"/slow.jpg": Route(b"x", delay=0.3)}) as server:
        assert asyncio.run(run(server.base)) == pools
        assert server.hits("/slow.jpg") == 0 and len(server.log) == 2 * connections + 1  # + robots.txt
        assert server.most_in_flight == connections


def test_retries_zero_means_exactly_one_attempt():
    """``retries=0``: one request, whose answer is used (a 503 is an http_error after 1 attempt)."""
    with serve({"/busy": Route(b"", status=503, content_type="text/plain")}) as server:
        with pytest.raises(DownloadFailure) as failure:
            asyncio.run(_get(_config(retries=0), server.url("/busy")))
        assert server.hits("/busy") == 1
    assert failure.value.reason == "http_error" and failure.value.attempts == 1


def test_a_long_robots_txt_is_truncated_not_refused():
    """robots.txt beyond 512 KiB (declared so by Content-Length) is read up to the limit and used."""
    robots = b"User-agent: *\nDisallow: /private/\n" + b"# padding line\n" * 40_000
    assert len(robots) > 512 * 1024
    routes = {"/robots.txt": Route(robots, content_type="text/plain"), "/ok.jpg": Route(b"ok")}
    with serve(routes) as server:
        assert asyncio.run(_get(_config(), server.url("/ok.jpg"))).data == b"ok"
        with pytest.raises(DownloadFailure) as failure:
            asyncio.run(_get(_config(), server.url("/private/a.jpg")))
    assert failure.value.reason == "robots_disallowed"


def test_a_body_of_exactly_max_bytes_is_accepted():
    """``max_bytes`` bytes are allowed; one more is ``too_large``."""
    routes = {"/ten": Route(b"0123456789", chunked=True), "/eleven": Route(b"0123456789a", chunked=True)}
    with serve(routes) as server:
        assert asyncio.run(_get(_config(max_bytes=10), server.url("/ten"))).data == b"0123456789"
        with pytest.raises(DownloadFailure) as failure:
            asyncio.run(_get(_config(max_bytes=10), server.url("/eleven")))
    assert failure.value.reason == "too_large"


def test_retry_delay_is_at_least_the_backoff(monkeypatch):
    """The first retry waits ``backoff`` times a jitter of 1.0-1.25, never less than ``backoff``."""
    import time

    monkeypatch.setattr(download, "random", types.SimpleNamespace(uniform=lambda low, high: high))
    with serve({"/flaky.jpg": Route(b"ok", fail_first=1)}) as server:
        started = time.monotonic()
        got = asyncio.run(_get(_config(retries=1, backoff=0.4), server.url("/flaky.jpg")))
        waited = time.monotonic() - started
    assert got.data == b"ok" and got.attempts == 2 and waited >= 0.49


def test_retry_after_is_capped_by_max_retry_after():
    """A ``Retry-After: 100`` answer is retried after at most ``max_retry_after`` seconds."""
    import time

    busy = Route(b"", status=503, headers={"Retry-After": "100"}, content_type="text/plain")
    with serve({"/busy": busy}) as server:
        started = time.monotonic()
        with pytest.raises(DownloadFailure) as failure:
            asyncio.run(_get(_config(retries=1, backoff=0.01, max_retry_after=0.05), server.url("/busy")))
        assert time.monotonic() - started < 5 and server.hits("/busy") == 2
    assert failure.value.reason == "http_error" and failure.value.attempts == 2


# -- survivors of the third look (2026-12-03) -----------------------------------------------------
class _Body:
    """A response stand-in for ``Downloader._read_limited``: headers and raw chunks (never decoded)."""

    def __init__(self, chunks, headers=None):
        self.headers = {k.lower(): v for k, v in (headers or {}).items()}
        self._chunks = chunks

    async def aiter_raw(self):
        for chunk in self._chunks:
            if isinstance(chunk, Exception):
                raise chunk
            yield chunk


def test_the_body_limit_counts_every_chunk_and_a_declared_length_refuses_before_reading():
    read = Downloader._read_limited
    assert asyncio.run(read(_Body([b"12345", b"67890"]), 10, False)) == b"1234567890"
    with pytest.raises(DownloadFailure, match="more than max_bytes 10 received"):
        asyncio.run(read(_Body([b"12345", b"67890", b"a"]), 10, False))  # 11 bytes over three chunks
    assert asyncio.run(read(_Body([b"12345", b"67890", b"abc"]), 12, True)) == b"1234567890ab"
    never = _Body([RuntimeError("the body was read")], {"Content-Length": "11"})
    with pytest.raises(DownloadFailure, match="Content-Length 11 > max_bytes 10"):
        asyncio.run(read(never, 10, False))


def test_content_encodings_are_split_on_commas():
    from httpx import Headers

    from generators.download import _refuse_content_encoding

    _refuse_content_encoding(Headers({"content-encoding": "identity, identity"}))  # both identity: accepted
    with pytest.raises(DownloadFailure) as failure:
        _refuse_content_encoding(Headers({"content-encoding": "identity, GZIP"}))
    assert failure.value.reason == "content_encoding" and failure.value.detail.startswith(
        "Content-Encoding gzip refused"
    )


def test_a_300_robots_txt_disallows_and_an_undecodable_one_is_still_read():
    """A robots.txt answering 300 (not a redirect: no Location) is not a robots.txt: everything is
    disallowed, as for 5xx; one with invalid UTF-8 is decoded with replacements and its rules apply."""
    routes = {"/robots.txt": Route(b"User-agent: *\nAllow: /\n", status=300, content_type="text/plain"),
              "/ok.jpg": Route(b"ok")}  # fmt: skip
    with serve(routes) as server, pytest.raises(DownloadFailure) as failure:
        asyncio.run(_get(_config(), server.url("/ok.jpg")))
    assert failure.value.reason == "robots_disallowed" and "5xx" in failure.value.detail
    robots = b"# caf\xe9 \xff\xfe\nUser-agent: *\nDisallow: /private/\n"
    routes = {"/robots.txt": Route(robots, content_type="text/plain"), "/ok.jpg": Route(b"ok")}
    with serve(routes) as server:
        assert asyncio.run(_get(_config(), server.url("/ok.jpg"))).data == b"ok"
        with pytest.raises(DownloadFailure) as failure:
            asyncio.run(_get(_config(), server.url("/private/a.jpg")))
    assert failure.value.reason == "robots_disallowed" and "disallows /private/a.jpg" in failure.value.detail


def test_a_failure_after_a_redirect_keeps_its_own_detail_and_names_the_first_url():
    """A hop refused by robots.txt says why, then which URL redirected there."""
    routes = {
        "/robots.txt": Route(b"User-agent: *\nDisallow: /private/\n", content_type="text/plain"),
        "/old.jpg": _redirect("/private/x.jpg"),
        "/private/x.jpg": Route(b"secret"),
    }
    with serve(routes) as server, pytest.raises(DownloadFailure) as failure:
        asyncio.run(_get(_config(respect_robots=True), server.url("/old.jpg")))
    assert failure.value.reason == "robots_disallowed"
    assert failure.value.detail == (
        f"robots.txt of {server.base} disallows /private/x.jpg (after a redirect from {server.url('/old.jpg')})"
    )


def test_proxy_settings_of_the_environment_are_never_used(monkeypatch):
    """A proxy would bypass the address guard (it connects, not us): HTTP_PROXY / ALL_PROXY pointing at a
    closed port change nothing."""
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    with serve({"/a.jpg": Route(b"direct")}) as server:
        assert asyncio.run(_get(_config(), server.url("/a.jpg"))).data == b"direct"


def test_an_origin_keeps_its_pools_and_idle_connections_stay_open_30_seconds():
    """The pools of an origin are made once and reused; their idle connections are kept 30 s (httpx's
    default is 5 s), so a host paced by a crawl delay keeps its connection between images."""

    async def pools():
        async with Downloader(_config(per_host_connections=2)) as downloader:
            first = downloader._pools_for("http://127.0.0.1:1")
            assert downloader._pools_for("http://127.0.0.1:1") is first
            assert downloader._pools_for("http://127.0.0.1:2") is not first
            return [pool.client._transport._pool._keepalive_expiry for pool in first]  # httpcore's setting

    assert asyncio.run(pools()) == [30.0]


def test_an_attempt_past_its_total_deadline_says_deadline_and_the_limit():
    """A server slower than ``total_timeout`` but within the read timeout: the attempt's deadline fires."""
    with serve({"/slow.jpg": Route(b"late", delay=0.6)}) as server, pytest.raises(DownloadFailure) as failure:
        asyncio.run(_get(_config(total_timeout=0.2, read_timeout=2.0), server.url("/slow.jpg")))
    assert failure.value.reason == "timeout"
    assert failure.value.detail == f"deadline (0.2 s) on {server.url('/slow.jpg')}, 1 attempts"


def test_a_300_answer_is_an_http_error_even_when_it_says_noai():
    """Only 2xx bodies are read and checked for X-Robots-Tag: a 300 is an ``http_error``, not ``noai``."""
    routes = {
        "/choices": Route(b"pick", status=300, headers={"X-Robots-Tag": "noai"}, content_type="text/html")
    }
    with serve(routes) as server, pytest.raises(DownloadFailure) as failure:
        asyncio.run(_get(_config(respect_noai=True), server.url("/choices")))
    assert failure.value.reason == "http_error"


def test_a_dns_lookup_slower_than_the_connect_timeout_is_a_connect_timeout(monkeypatch):
    import httpcore

    async def slow_lookup(self, *args, **kwargs):
        await asyncio.sleep(5)

    monkeypatch.setattr(asyncio.BaseEventLoop, "getaddrinfo", slow_lookup)
    guard = AddressGuard(allow_private=False, allowed_networks=(), ttl=60, timeout=0.05)
    with pytest.raises(httpcore.ConnectTimeout, match="DNS lookup of slow.example took more than 0.05 s"):
        asyncio.run(guard.resolve("slow.example", 80))
