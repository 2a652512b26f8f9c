"""A threaded HTTP server on 127.0.0.1 (random port) serving scripted answers, for the scraper tests.

Not a test module (no ``test_`` prefix): test files import ``serve`` and ``Route``.
"""

from __future__ import annotations

import contextlib
import io
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from PIL import Image


@dataclass
class Route:
    """What one path answers (the exact path with its query, else the path alone).

    ``fail_first`` answers ``fail_status`` that many times first;
    ``chunked`` sends the body without Content-Length (closing the connection at the end)."""

    body: bytes = b""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str | None = "image/jpeg"
    delay: float = 0.0
    fail_first: int = 0
    fail_status: int = 500
    chunked: bool = False
    declared_length: int | None = None
    dynamic: Callable[[str], bytes] | None = None  # body computed from the full request path (with query)
    hits: int = 0


@dataclass
class Served:
    base: str
    routes: dict[str, Route]
    log: list[str]
    headers: list[dict[str, str]] = field(default_factory=list)  # each request's headers, lower-case names
    server: _Server | None = None

    @property
    def most_in_flight(self) -> int:
        """The most requests the server was answering at the same time."""
        return self.server.most_in_flight

    def url(self, path: str) -> str:
        return self.base + path

    def hits(self, path: str) -> int:
        return sum(1 for p in self.log if p == path)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = self.path
        hit = 0
        with self.server.lock:
            self.server.log.append(path)
            self.server.headers.append({k.lower(): v for k, v in self.headers.items()})
            route = self.server.routes.get(path) or self.server.routes.get(path.split("?", 1)[0])
            if route is not None:
                route.hits += 1
                hit = route.hits
        with self.server.lock:
            self.server.in_flight += 1
            self.server.most_in_flight = max(self.server.most_in_flight, self.server.in_flight)
        try:
            self._route(route, hit, path)
        finally:
            with self.server.lock:
                self.server.in_flight -= 1

    def _route(self, route: Route | None, hit: int, path: str) -> None:
        if route is None:
            self._answer(404, b"not found", {"Content-Type": "text/plain"})
            return
        if route.delay:
            time.sleep(route.delay)
        if hit <= route.fail_first:
            self._answer(route.fail_status, b"try again", {"Content-Type": "text/plain"})
            return
        headers = dict(route.headers)
        if route.content_type:
            headers["Content-Type"] = route.content_type
        if route.chunked:
            self.send_response(route.status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            with contextlib.suppress(OSError):
                for start in range(0, len(route.body), 65536):
                    self.wfile.write(route.body[start : start + 65536])
            return
        body = route.dynamic(path) if route.dynamic is not None else route.body
        self._answer(route.status, body, headers, route.declared_length)

    def _answer(self, status: int, body: bytes, headers: dict[str, str], declared: int | None = None) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(declared if declared is not None else len(body)))
        self.end_headers()
        with contextlib.suppress(OSError):
            self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the default backlog of 5 would hold back concurrent clients

    def __init__(self, routes: dict[str, Route]):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.routes = routes
        self.log: list[str] = []
        self.headers: list[dict[str, str]] = []
        self.lock = threading.Lock()
        self.in_flight = self.most_in_flight = 0


@contextlib.contextmanager
def serve(routes: dict[str, Route]) -> Iterator[Served]:
    """Serve ``routes`` (path -> Route) on 127.0.0.1 at a free port while the block runs.

    Hits are counted on copies of the routes (``Served.routes``), so a ``fail_first`` route fails again on
    the next server: module-level routes carry no state from one test or fixture to the next.
    """
    routes = {path: replace(route, hits=0) for path, route in routes.items()}
    server = _Server(routes)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield Served(
            f"http://127.0.0.1:{server.server_address[1]}", routes, server.log, server.headers, server
        )
    finally:
        server.shutdown()
        server.server_close()


def pattern_image(seed: int, size: tuple[int, int] = (640, 520)) -> Image.Image:
    """A smooth random RGB picture (distinct pHash per seed), ``size`` = (width, height)."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
    picture = coarse.resize(size, Image.Resampling.BICUBIC)
    noise = rng.integers(-12, 13, (size[1], size[0], 3))
    return Image.fromarray(np.clip(np.asarray(picture, dtype=np.int16) + noise, 0, 255).astype(np.uint8))


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def icc_profile(colour_space: str, description: str, gamma: float = 1.0, primaries=None) -> bytes:
    """A minimal ICC v2 display profile: ``colour_space`` "GRAY" (one tone curve) or "RGB "
    (``primaries``: the XYZ of red, green, blue, a matrix/TRC profile), built byte by byte.

    Pillow ships no profile files and LittleCMS only builds sRGB / Lab / XYZ, so the tests
    that need a greyscale or a wide-gamut profile build one.
    """
    import struct

    def s15(value: float) -> bytes:
        return struct.pack(">i", round(value * 65536))

    def xyz(values) -> bytes:
        return b"XYZ " + b"\0" * 4 + b"".join(s15(v) for v in values)

    def curve() -> bytes:
        return b"curv" + b"\0" * 4 + struct.pack(">I", 1) + struct.pack(">H", round(gamma * 256)) + b"\0\0"

    text = description.encode("ascii") + b"\0"
    desc = b"desc" + b"\0" * 4 + struct.pack(">I", len(text)) + text + b"\0" * 8 + b"\0" * 3 + b"\0" * 67
    tags = [(b"desc", desc), (b"wtpt", xyz((0.9642, 1.0, 0.8249)))]
    if colour_space == "GRAY":
        tags.append((b"kTRC", curve()))
    else:
        red, green, blue = primaries
        tags += [(b"rXYZ", xyz(red)), (b"gXYZ", xyz(green)), (b"bXYZ", xyz(blue))]
        tags += [(b"rTRC", curve()), (b"gTRC", curve()), (b"bTRC", curve())]
    table_size = 4 + 12 * len(tags)
    offset = 128 + table_size
    table, data = [struct.pack(">I", len(tags))], []
    for signature, body in tags:
        body += b"\0" * (-len(body) % 4)
        table.append(signature + struct.pack(">II", offset, len(body)))
        data.append(body)
        offset += len(body)
    header = bytearray(128)
    header[0:4] = struct.pack(">I", offset)
    header[8:12] = bytes([2, 0x10, 0, 0])
    header[12:16] = b"mntr"
    header[16:20] = colour_space.encode("ascii")
    header[20:24] = b"XYZ "
    header[36:40] = b"acsp"
    header[68:80] = xyz((0.9642, 1.0, 0.8249))[8:]
    return bytes(header) + b"".join(table) + b"".join(data)
