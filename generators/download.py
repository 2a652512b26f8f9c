"""Polite, safe HTTP downloads of single files for the web scraper (httpx, asyncio).

``Downloader.get(url)`` returns a ``Download`` (the body and what the server said) or
raises ``DownloadFailure(reason, detail)`` with a reason of ``FAILURE_REASONS``. What it
does, in order, for every hop of a redirect chain:

1. robots.txt of the hop's origin, fetched once per origin (up to five redirects followed)
   and cached (RFC 9309: a 4xx robots.txt allows everything, a 5xx one, or more than five
   redirects, disallows everything); its ``Crawl-delay`` for our user agent slows that
   host down further;
2. the per-host rate limit (a minimum interval between requests to one host name);
3. the connection, through a network backend that resolves the host itself and refuses
   loopback, private, link-local, multicast and other non-global addresses (unless
   allowed), then connects to the address it checked, so DNS cannot swap it afterwards;
4. the request, retried with exponential backoff (and ``Retry-After``) on 5xx answers
   and timeouts only; redirects are followed by hand (each hop goes through 1-4);
5. ``X-Robots-Tag: noai`` / ``noimageai`` refusal, then the body streamed with the size
   limit enforced on the bytes received (not only the ``Content-Length`` header) and a
   total deadline, so a server that drips bytes cannot hold a worker. Requests ask for
   ``Accept-Encoding: identity`` and a body sent with any other ``Content-Encoding`` is
   refused before a byte is decoded (``content_encoding``): a 2 KB ``gzip, gzip`` body
   can inflate to gigabytes, and images gain nothing from compression on the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import random
import socket
import ssl
import time
import urllib.robotparser
from collections.abc import Iterable
from dataclasses import dataclass, field

import httpcore
import httpx
from pydantic import BaseModel, ConfigDict, Field

from manifests.reasons import DownloadReason
from manifests.version import code_version

FAILURE_REASONS = tuple(DownloadReason)  # manifests.reasons holds what each code means

REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
_ROBOTS_MAX_BYTES = 512 * 1024  # RFC 9309 asks crawlers to parse at least 500 KiB
_NOAI_DIRECTIVES = frozenset({"noai", "noimageai"})
# X-Robots-Tag directives that take a value ("max-image-preview: large"), not a bot name.
_VALUED_DIRECTIVES = frozenset({"unavailable_after", "max-snippet", "max-image-preview", "max-video-preview"})


def default_user_agent(contact: str | None = None) -> str:
    """``MCC-benchmark-scraper/<version> (+what it is; contact)``: what servers see."""
    about = "research image dataset (Multi-Concept Confusion benchmark); respects robots.txt and noai"
    return f"MCC-benchmark-scraper/{code_version()} (+{about}{'; ' + contact if contact else ''})"


class DownloadConfig(BaseModel):
    """How the downloader behaves. Times in seconds, sizes in bytes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    user_agent: str = Field(default_factory=default_user_agent)
    connect_timeout: float = Field(10.0, gt=0)
    read_timeout: float = Field(20.0, gt=0, description="longest silence between two received chunks")
    total_timeout: float = Field(60.0, gt=0, description="deadline of one attempt, headers and body")
    retries: int = Field(2, ge=0, description="extra attempts after a 5xx or a timeout")
    backoff: float = Field(1.0, ge=0, description="first retry delay; doubled each retry, plus jitter")
    max_retry_after: float = Field(30.0, ge=0, description="longest Retry-After honoured")
    max_bytes: int = Field(20 * 2**20, gt=0)
    max_redirects: int = Field(5, ge=0)
    per_host_rate: float = Field(5.0, ge=0, description="requests per second to one host; 0 = no limit")
    per_host_connections: int = Field(
        8, gt=0, description="requests in flight to one host (one small connection pool per host)"
    )
    respect_robots: bool = True
    respect_noai: bool = True
    allow_private_networks: bool = False
    allowed_networks: tuple[str, ...] = Field(
        (), description="CIDR blocks allowed even when private (e.g. '127.0.0.1/32' for a local test server)"
    )
    dns_cache_seconds: float = Field(300.0, ge=0)

    @property
    def robots_token(self) -> str:
        """The product token robots.txt groups are matched against (``mcc-benchmark-scraper``)."""
        return self.user_agent.split("/", 1)[0].split()[0].lower()


class DownloadFailure(Exception):
    """A download that did not give a usable body; ``reason`` is one of ``FAILURE_REASONS``."""

    def __init__(self, reason: str, detail: str, *, attempts: int = 0, final_url: str | None = None):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.attempts = attempts
        self.final_url = final_url


class PrivateAddressError(Exception):
    """Raised by the network backend when a host resolves to an address that is not allowed.

    Not an httpcore error on purpose: httpx re-raises it unchanged, so it cannot be
    mistaken for an ordinary connection failure."""


@dataclass
class Download:
    """A body received with status 2xx. ``final_url`` is after redirects; ``elapsed`` in seconds."""

    url: str
    final_url: str
    status: int
    content_type: str | None
    data: bytes
    attempts: int
    redirects: list[str] = field(default_factory=list)
    elapsed: float = 0.0


# -- addresses --------------------------------------------------------------------------
_NAT64_PREFIXES = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


def embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries: IPv4-mapped (``::ffff:a.b.c.d``), 6to4
    (``2002:AABB:CCDD::``), Teredo (server and de-obfuscated client) and NAT64 (``64:ff9b::a.b.c.d``)."""
    found = []
    if ip.ipv4_mapped is not None:
        found.append(ip.ipv4_mapped)
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.extend(ip.teredo)
    if any(ip in prefix for prefix in _NAT64_PREFIXES):
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return found


def address_blocked(address: str, allowed_networks: Iterable[str] = ()) -> bool:
    """True for loopback, private, link-local, multicast, reserved, unspecified and other
    non-global addresses, unless in ``allowed_networks``. An IPv6 address that embeds an
    IPv4 one (mapped, 6to4, Teredo, NAT64: ``embedded_ipv4``) is blocked when any embedded
    address is, so ``2002:7f00:1::`` cannot reach 127.0.0.1 through a 6to4 relay."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    networks = [ipaddress.ip_network(network, strict=False) for network in allowed_networks]
    if any(ip in network for network in networks):
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        inner = embedded_ipv4(ip)
        if any(address_blocked(str(v4), allowed_networks) for v4 in inner):
            return True
        if ip in _NAT64_PREFIXES[0]:  # the well-known NAT64 prefix reaches exactly its IPv4 address
            return False
    return not ip.is_global or ip.is_multicast or ip.is_reserved or ip.is_unspecified


class AddressGuard:
    """Resolves host names, refuses non-global addresses, caches answers for ``ttl`` seconds."""

    def __init__(self, allow_private: bool, allowed_networks: Iterable[str], ttl: float, timeout: float):
        self.allow_private = allow_private
        self.allowed_networks = tuple(allowed_networks)
        for network in self.allowed_networks:
            ipaddress.ip_network(network, strict=False)  # ValueError names a bad block up front
        self.ttl = ttl
        self.timeout = timeout
        self._cache: dict[tuple[str, int], tuple[float, list[str]]] = {}

    async def resolve(self, host: str, port: int) -> list[str]:
        """The addresses to connect to, all checked; raises PrivateAddressError or httpcore.ConnectError."""
        key = (host, port)
        cached = self._cache.get(key)
        if cached is not None and time.monotonic() - cached[0] < self.ttl:
            return cached[1]
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(
                loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP), self.timeout
            )
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"DNS lookup of {host} took more than {self.timeout} s") from None
        except OSError as error:
            raise httpcore.ConnectError(f"cannot resolve {host}: {error}") from None
        addresses = list(dict.fromkeys(info[4][0] for info in infos))
        if not self.allow_private:
            blocked = [a for a in addresses if address_blocked(a, self.allowed_networks)]
            if blocked:
                raise PrivateAddressError(
                    f"{host} resolves to {', '.join(blocked)}, a loopback/private/link-local/multicast "
                    "address; allow it with allow_private_networks=True (or allowed_networks)"
                )
        self._cache[key] = (time.monotonic(), addresses)
        return addresses


class GuardedNetworkBackend(httpcore.AsyncNetworkBackend):
    """A network backend that connects only to addresses the ``AddressGuard`` checked.

    TLS still uses the host name (SNI and certificate checks are unchanged), because
    httpcore wraps the returned stream with the request's host as server name.
    """

    def __init__(self, guard: AddressGuard, inner: httpcore.AsyncNetworkBackend | None = None):
        self.guard = guard
        self.inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        addresses = await self.guard.resolve(host, port)
        error: Exception | None = None
        for address in addresses:
            try:
                return await self.inner.connect_tcp(
                    address, port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        raise error or httpcore.ConnectError(f"no address for {host}")

    async def connect_unix_socket(self, path, timeout=None, socket_options=None):
        raise httpcore.ConnectError("unix sockets are not used by the scraper")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport over a connection pool that uses ``GuardedNetworkBackend``.

    httpx does not take a network backend as an argument, so the pool it builds (its
    private ``_pool``) is replaced by one with the same settings and the guarded backend
    (no proxies: the address check would be meaningless behind one). ``ssl_context`` is
    shared by all pools (loading the CA bundle costs ~20 ms each time). pyproject.toml pins
    httpx and httpcore to the versions this was written against (0.29.0, 1.0.9).
    """

    def __init__(self, guard: AddressGuard, limits: httpx.Limits, ssl_context: ssl.SSLContext):
        super().__init__(verify=ssl_context, limits=limits, trust_env=False)
        if not hasattr(self, "_pool"):
            raise RuntimeError(
                f"httpx {httpx.__version__} builds its transport differently; install httpx==0.29.0 "
                "(the version pyproject.toml pins)"
            )
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=GuardedNetworkBackend(guard),
        )


# -- rate limit, robots, X-Robots-Tag ----------------------------------------------------
class HostRateLimiter:
    """At most ``rate`` request starts per second per host name (0 = unlimited); a host
    may ask for a longer interval (robots.txt ``Crawl-delay``) with ``slow_down``."""

    MAX_CRAWL_DELAY = 60.0  # seconds; a larger Crawl-delay is capped (the host is still rate limited)

    def __init__(self, rate: float):
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self._next: dict[str, float] = {}
        self._host_interval: dict[str, float] = {}

    def slow_down(self, host: str, seconds: float) -> None:
        """Space requests to ``host`` at least ``seconds`` apart (capped at MAX_CRAWL_DELAY)."""
        self._host_interval[host] = max(
            self._host_interval.get(host, 0.0), min(seconds, self.MAX_CRAWL_DELAY)
        )

    async def wait(self, host: str) -> None:
        interval = max(self.interval, self._host_interval.get(host, 0.0))
        if not interval:
            return
        now = time.monotonic()
        slot = max(now, self._next.get(host, 0.0))
        self._next[host] = slot + interval  # reserved before awaiting: no two tasks get one slot
        if slot > now:
            await asyncio.sleep(slot - now)


def noai_directives(header_values: Iterable[str], robots_token: str) -> set[str]:
    """The ``noai``/``noimageai`` directives of X-Robots-Tag headers that apply to us.

    A directive applies when it has no bot name or names ``robots_token``:
    ``"noai, noimageai"``, ``"mcc-benchmark-scraper: noai"`` apply; ``"otherbot: noai"`` does not.
    """
    found: set[str] = set()
    for value in header_values:
        agent: str | None = None
        for part in value.split(","):
            part = part.strip().lower()
            if not part:
                continue
            if ":" in part:
                name, _, rest = part.partition(":")
                if name.strip() not in _VALUED_DIRECTIVES:
                    agent, part = name.strip(), rest.strip()
            if part in _NOAI_DIRECTIVES and (agent is None or agent in ("*", robots_token)):
                found.add(part)
    return found


@dataclass
class _Answer:
    status: int
    headers: httpx.Headers
    url: str
    body: bytes
    attempts: int


@dataclass
class _Pool:
    """One httpx client (connection pool) of an origin and its requests in flight."""

    client: httpx.AsyncClient
    busy: int = 0


@contextlib.asynccontextmanager
async def _least_busy(pools: list[_Pool]):
    """The client of the pool with the fewest requests in flight, counted while in use. With
    at most ``per_host_connections`` requests in flight (the host slot), that pool always has
    a free connection."""
    pool = min(pools, key=lambda p: p.busy)
    pool.busy += 1
    try:
        yield pool.client
    finally:
        pool.busy -= 1


class Downloader:
    """Downloads files politely and safely; use as ``async with Downloader(config) as d``.

    One instance holds the connection pools of each origin (several small ones:
    ``POOL_CONNECTIONS``), the robots.txt cache, the DNS cache and the rate limiter; share
    it between all concurrent downloads of a run.
    """

    def __init__(self, config: DownloadConfig | None = None):
        self.config = config or DownloadConfig()
        c = self.config
        self.guard = AddressGuard(
            c.allow_private_networks, c.allowed_networks, c.dns_cache_seconds, c.connect_timeout
        )
        self.rate = HostRateLimiter(c.per_host_rate)
        self._robots: dict[str, asyncio.Future[urllib.robotparser.RobotFileParser]] = {}
        self._clients: dict[str, list[_Pool]] = {}
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._ssl: ssl.SSLContext | None = None
        self._open = False

    async def __aenter__(self) -> Downloader:
        self._open = True
        return self

    async def __aexit__(self, *exc_info) -> None:
        self._open = False
        pools, self._clients = [p for pools in self._clients.values() for p in pools], {}
        for pool in pools:
            await pool.client.aclose()

    POOL_CONNECTIONS = 8
    """Connections per httpx pool. httpcore 1.0.9 scans every connection of a pool several
    times at each request start and end (quadratic in the pool's size, encode/httpcore#1035):
    one pool of 64 connections spent 85% of a loopback scrape's CPU there. An origin allowed
    more connections gets several pools, and each request takes the least busy one."""

    def _pools_for(self, origin: str) -> list[_Pool]:
        """The connection pools of one origin (``ceil(per_host_connections / POOL_CONNECTIONS)``
        clients), created on first use."""
        pools = self._clients.get(origin)
        if pools is None:
            c = self.config
            size = min(c.per_host_connections, self.POOL_CONNECTIONS)
            count = -(-c.per_host_connections // size)
            pools = [_Pool(self._new_client(size)) for _ in range(count)]
            self._clients[origin] = pools
        return pools

    def _ssl_context(self) -> ssl.SSLContext:
        """httpx's default context (certifi's CA bundle, no environment), made once."""
        if self._ssl is None:
            self._ssl = httpx.create_ssl_context(trust_env=False)
        return self._ssl

    def _new_client(self, connections: int) -> httpx.AsyncClient:
        c = self.config
        limits = httpx.Limits(
            max_connections=connections, max_keepalive_connections=connections, keepalive_expiry=30.0
        )
        return httpx.AsyncClient(
            transport=GuardedTransport(self.guard, limits, self._ssl_context()),
            timeout=httpx.Timeout(
                connect=c.connect_timeout, read=c.read_timeout, write=c.read_timeout, pool=None
            ),
            headers={
                "User-Agent": c.user_agent,
                "Accept": "image/*,*/*;q=0.5",
                "Accept-Encoding": "identity",
            },
            follow_redirects=False,
            trust_env=False,
        )

    # -- public --------------------------------------------------------------------------
    async def get(self, url: str) -> Download:
        """Download ``url`` (following redirects) or raise ``DownloadFailure``."""
        started = time.monotonic()
        current = self._parse_url(url)
        redirects: list[str] = []
        attempts = 0
        for _ in range(self.config.max_redirects + 1):
            try:
                if self.config.respect_robots:
                    await self._check_robots(current)
                answer = await self._request(
                    current, self.config.max_bytes, check_noai=self.config.respect_noai
                )
            except DownloadFailure as failure:
                if redirects:
                    failure.detail += f" (after a redirect from {url})"
                failure.attempts += attempts
                raise
            attempts += answer.attempts
            if answer.status in REDIRECT_CODES and "location" in answer.headers:
                try:
                    current = self._parse_url(str(current.join(answer.headers["location"])))
                except DownloadFailure as failure:
                    raise DownloadFailure(
                        failure.reason, f"redirect from {current}: {failure.detail}", attempts=attempts
                    ) from None
                redirects.append(str(current))
                continue
            if answer.status >= 300:
                raise DownloadFailure(
                    "http_error",
                    f"HTTP {answer.status} from {current}"
                    + (f" after {answer.attempts} attempts" if answer.attempts > 1 else ""),
                    attempts=attempts,
                    final_url=str(current),
                )
            return Download(
                url=url,
                final_url=str(current),
                status=answer.status,
                content_type=answer.headers.get("content-type"),
                data=answer.body,
                attempts=attempts,
                redirects=redirects,
                elapsed=time.monotonic() - started,
            )
        raise DownloadFailure(
            "http_error",
            f"more than {self.config.max_redirects} redirects",
            attempts=attempts,
            final_url=str(current),
        )

    # -- steps ---------------------------------------------------------------------------
    @staticmethod
    def _parse_url(url: str) -> httpx.URL:
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, TypeError) as error:
            raise DownloadFailure("invalid_url", f"{url!r}: {error}") from None
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise DownloadFailure("invalid_url", f"{url!r} is not an absolute http(s) URL")
        if parsed.userinfo:  # never send, log or record credentials (a redirect may add them)
            parsed = parsed.copy_with(userinfo=b"")
        return parsed

    async def _check_robots(self, url: httpx.URL) -> None:
        origin = f"{url.scheme}://{url.netloc.decode('ascii')}"
        future = self._robots.get(origin)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._robots[origin] = future
            try:
                parser = await self._fetch_robots(origin)
                delay = parser.crawl_delay(self.config.robots_token)
                if delay:
                    self.rate.slow_down(url.host, float(delay))
                future.set_result(parser)
            except asyncio.CancelledError:
                del self._robots[origin]
                future.cancel()
                raise
            except Exception as error:
                future.set_exception(error)
                future.exception()  # mark retrieved: waiters re-raise it, nobody else must
                raise
        try:
            parser = await asyncio.shield(future)
        except DownloadFailure as failure:
            raise DownloadFailure(failure.reason, failure.detail, final_url=str(url)) from None
        if not parser.can_fetch(self.config.robots_token, str(url)):
            detail = f"robots.txt of {origin} disallows {url.raw_path.decode('ascii')}"
            if parser.disallow_all:
                detail = f"robots.txt of {origin} answers 5xx (unreachable), so everything is disallowed"
            raise DownloadFailure("robots_disallowed", detail, final_url=str(url))

    async def _fetch_robots(self, origin: str) -> urllib.robotparser.RobotFileParser:
        parser = urllib.robotparser.RobotFileParser(origin + "/robots.txt")
        current = self._parse_url(origin + "/robots.txt")
        try:
            # RFC 9309 2.3.1.2: a robots.txt reached within five consecutive redirects MUST be used,
            # so up to six requests (the first one and five redirect targets).
            for _ in range(6):
                answer = await self._request(current, _ROBOTS_MAX_BYTES, check_noai=False, truncate=True)
                if answer.status in REDIRECT_CODES and "location" in answer.headers:
                    current = self._parse_url(str(current.join(answer.headers["location"])))
                    continue
                break
            else:
                answer = _Answer(500, httpx.Headers(), str(current), b"", 1)
        except DownloadFailure as failure:
            # The host itself is unreachable or refused: report that, not a robots decision.
            raise DownloadFailure(
                failure.reason,
                f"fetching {origin}/robots.txt: {failure.detail}",
                attempts=failure.attempts,
                final_url=failure.final_url,
            ) from None
        if 200 <= answer.status < 300:
            parser.parse(answer.body.decode("utf-8", errors="replace").splitlines())
        elif 400 <= answer.status < 500:
            parser.allow_all = True
        else:
            parser.disallow_all = True
        return parser

    async def _request(
        self, url: httpx.URL, max_bytes: int, *, check_noai: bool, truncate: bool = False
    ) -> _Answer:
        """One GET with retries on 5xx and timeouts; the body only for 2xx answers."""
        c = self.config
        if not self._open:
            raise RuntimeError("use the Downloader as `async with Downloader(config) as downloader:`")
        host = url.host
        origin = f"{url.scheme}://{url.netloc.decode('ascii')}"
        slot = self._slots.setdefault(origin, asyncio.Semaphore(c.per_host_connections))
        pools = self._pools_for(origin)
        for attempt in range(1, c.retries + 2):
            retry_after: float | None = None
            try:
                # The host slot is taken outside the deadline: waiting for one's turn is not a timeout.
                async with slot, _least_busy(pools) as client:
                    await self.rate.wait(host)
                    async with asyncio.timeout(c.total_timeout), client.stream("GET", url) as response:
                        status = response.status_code
                        if 200 <= status < 300:
                            if check_noai:
                                found = noai_directives(
                                    response.headers.get_list("x-robots-tag"), c.robots_token
                                )
                                if found:
                                    raise DownloadFailure(
                                        "noai",
                                        f"X-Robots-Tag: {', '.join(sorted(found))}",
                                        attempts=attempt,
                                        final_url=str(url),
                                    )
                            _refuse_content_encoding(response.headers)
                            body = await self._read_limited(response, max_bytes, truncate)
                            return _Answer(status, response.headers, str(url), body, attempt)
                        if status < 500 or attempt > c.retries:
                            return _Answer(status, response.headers, str(url), b"", attempt)
                        retry_after = _retry_after(response.headers.get("retry-after"))
            except DownloadFailure as failure:
                failure.attempts = attempt
                failure.final_url = failure.final_url or str(url)
                raise
            except PrivateAddressError as error:
                raise DownloadFailure(
                    "private_address", str(error), attempts=attempt, final_url=str(url)
                ) from None
            except (httpx.TimeoutException, TimeoutError) as error:
                if attempt > c.retries:
                    kind = type(error).__name__ if isinstance(error, httpx.TimeoutException) else "deadline"
                    limit = {
                        "ConnectTimeout": c.connect_timeout,
                        "ReadTimeout": c.read_timeout,
                        "deadline": c.total_timeout,
                    }.get(kind)
                    raise DownloadFailure(
                        "timeout",
                        f"{kind}{f' ({limit} s)' if limit else ''} on {url}, {attempt} attempts",
                        attempts=attempt,
                        final_url=str(url),
                    ) from None
            except httpx.ConnectError as error:
                raise DownloadFailure(
                    "connection_error", f"{url}: {error}", attempts=attempt, final_url=str(url)
                ) from None
            except (
                httpx.RemoteProtocolError,
                httpx.ReadError,
                httpx.WriteError,
                httpx.DecodingError,
            ) as error:
                raise DownloadFailure(
                    "http_error",
                    f"{type(error).__name__} from {url}: {error}",
                    attempts=attempt,
                    final_url=str(url),
                ) from None
            except httpx.UnsupportedProtocol as error:
                raise DownloadFailure("invalid_url", str(error), attempts=attempt) from None
            delay = c.backoff * 2 ** (attempt - 1) * random.uniform(1.0, 1.25)
            if retry_after is not None:
                delay = max(delay, min(retry_after, c.max_retry_after))
            await asyncio.sleep(delay)
        raise RuntimeError("unreachable: every attempt returns, raises or retries")

    @staticmethod
    async def _read_limited(response: httpx.Response, max_bytes: int, truncate: bool) -> bytes:
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > max_bytes and not truncate:
            raise DownloadFailure("too_large", f"Content-Length {int(declared)} > max_bytes {max_bytes}")
        chunks: list[bytes] = []
        received = 0
        async for chunk in response.aiter_raw():  # never decoded (see _refuse_content_encoding)
            received += len(chunk)
            if received > max_bytes:
                if truncate:
                    chunks.append(chunk[: len(chunk) - (received - max_bytes)])
                    break
                raise DownloadFailure("too_large", f"more than max_bytes {max_bytes} received")
            chunks.append(chunk)
        return b"".join(chunks)


def _refuse_content_encoding(headers: httpx.Headers) -> None:
    """Raise ``DownloadFailure("content_encoding")`` unless the body is sent as is (identity)."""
    codings = [c.strip().lower() for value in headers.get_list("content-encoding") for c in value.split(",")]
    refused = [c for c in codings if c and c != "identity"]
    if refused:
        raise DownloadFailure(
            "content_encoding",
            f"Content-Encoding {', '.join(refused)} refused (the request asked for identity): "
            "compressed bodies are not decoded, so a small body cannot inflate past max_bytes",
        )


def _retry_after(value: str | None) -> float | None:
    """Seconds of a numeric Retry-After header (HTTP dates are ignored)."""
    if value is None:
        return None
    try:
        return max(0.0, float(value.strip()))
    except ValueError:
        return None
