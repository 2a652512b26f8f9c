"""The web scraper against a local HTTP server serving every case of the issue.

Each URL ends in the documented state and reason; the good ones are stored with full
provenance. One scrape of the whole site runs once per module (``scraped``); the
tests below read its records.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import time

import numpy as np
import pytest
from fixture_scopes import shared_unless_mutating
from generators_testserver import Route, encode, pattern_image, serve
from PIL import Image
from typer.testing import CliRunner

from flows.cli import app
from generators.download import DownloadConfig, HostRateLimiter, address_blocked, noai_directives
from generators.sources import Candidate
from generators.web import INDEX_PATH, SCRAPE_FAILURE_REASONS, ScrapeConfig, WebScraper, plan_web_records
from manifests import ManifestStore, State, load_groups, plan_scenes
from manifests.stage import run_stage

pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")

GROUPS = {g.id: g for g in load_groups()}
GROUP = "husky-wolf-malamute"
LOOPBACK = ("127.0.0.1/32",)


def _exif_rotated_jpeg() -> bytes:
    """A 700x560 JPEG whose EXIF says 'rotate 90 degrees clockwise to display' (orientation 6)."""
    image = pattern_image(21, (700, 560))
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(image, "JPEG", quality=90, exif=exif)


def _transparent_png() -> bytes:
    image = pattern_image(22, (600, 600)).convert("RGBA")
    image.paste((0, 0, 0, 0), (0, 0, 100, 100))  # a fully transparent corner
    return encode(image, "PNG")


def _bomb_png() -> bytes:
    """A valid 12000 x 12000 1-bit PNG of a few kB: 144 M pixels, above Pillow's 89 M limit."""
    return encode(Image.new("1", (12000, 12000)), "PNG", optimize=True)


SEEDED_IMAGE_SEED = 77  # an image already in the store (a generated record) before the scrape
COPY = encode(pattern_image(30), "JPEG", quality=90)

# name: (route, licence, expected state, expected reason)
CASES: dict[str, tuple[Route, str | None, State, str | None]] = {
    "/good.jpg": (Route(encode(pattern_image(1), "JPEG", quality=90)), "CC BY 4.0", State.generated, None),
    "/good.png": (Route(_transparent_png(), content_type="image/png"), "CC0", State.generated, None),
    "/good.webp": (
        Route(encode(pattern_image(3, (560, 560)), "WEBP"), content_type="image/webp"),
        "Public domain",
        State.generated,
        None,
    ),
    "/rotated.jpg": (Route(_exif_rotated_jpeg()), "CC BY-SA 4.0", State.generated, None),
    "/wrong-type.png": (
        Route(encode(pattern_image(4), "JPEG"), content_type="text/plain"),
        "CC0",
        State.generated,
        None,
    ),
    "/html.jpg": (
        Route(b"<!DOCTYPE html><html><body>not a picture</body></html>"),
        "CC0",
        State.rejected,
        "not_an_image",
    ),
    "/vector.svg": (
        Route(
            b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>', content_type="image/svg+xml"
        ),
        "CC0",
        State.rejected,
        "not_an_image",
    ),
    "/empty.jpg": (Route(b""), "CC0", State.rejected, "not_an_image"),
    "/truncated.jpg": (
        Route(encode(pattern_image(5), "JPEG", quality=95)[:6000]),
        "CC0",
        State.rejected,
        "corrupt",
    ),
    "/bomb.png": (Route(_bomb_png(), content_type="image/png"), "CC0", State.rejected, "too_large"),
    "/huge.jpg": (
        Route(b"\xff\xd8\xff" + bytes(1_500_000), chunked=True),
        "CC0",
        State.rejected,
        "too_large",
    ),
    "/huge-declared.jpg": (
        Route(b"\xff\xd8\xff", declared_length=50_000_000),
        "CC0",
        State.rejected,
        "too_large",
    ),
    "/slow.jpg": (Route(encode(pattern_image(6), "JPEG"), delay=1.5), "CC0", State.rejected, "timeout"),
    "/missing.jpg": (None, "CC0", State.rejected, "http_error"),
    "/flaky.jpg": (
        Route(encode(pattern_image(7), "JPEG"), fail_first=1, fail_status=500),
        "CC0",
        State.generated,
        None,
    ),
    "/down.jpg": (
        Route(encode(pattern_image(8), "JPEG"), fail_first=99, fail_status=503),
        "CC0",
        State.rejected,
        "http_error",
    ),
    "/redirect-good": (
        Route(status=301, headers={"Location": "/moved.jpg"}, content_type=None),
        "CC0",
        State.generated,
        None,
    ),
    "/redirect-private": (
        Route(
            status=302, headers={"Location": "http://169.254.169.254/latest/meta-data/"}, content_type=None
        ),
        "CC0",
        State.rejected,
        "private_address",
    ),
    "/private/secret.jpg": (
        Route(encode(pattern_image(9), "JPEG")),
        "CC0",
        State.rejected,
        "robots_disallowed",
    ),
    "/noai.jpg": (
        Route(encode(pattern_image(10), "JPEG"), headers={"X-Robots-Tag": "noai"}),
        "CC0",
        State.rejected,
        "noai",
    ),
    "/noimageai-for-us.jpg": (
        Route(
            encode(pattern_image(11), "JPEG"), headers={"X-Robots-Tag": "mcc-benchmark-scraper: noimageai"}
        ),
        "CC0",
        State.rejected,
        "noai",
    ),
    "/noai-for-others.jpg": (
        Route(encode(pattern_image(12), "JPEG"), headers={"X-Robots-Tag": "otherbot: noai"}),
        "CC0",
        State.generated,
        None,
    ),
    "/copy-a.jpg": (
        Route(COPY),
        "CC0",
        None,
        None,
    ),  # one of the two copies is kept, the other is a duplicate
    "/copy-b.jpg": (Route(COPY), "CC0", None, None),
    "/near-copy-of-stored.jpg": (
        Route(encode(pattern_image(SEEDED_IMAGE_SEED).resize((800, 650)), "JPEG", quality=80)),
        "CC0",
        State.rejected,
        "duplicate",
    ),
    "/small.jpg": (Route(encode(pattern_image(13, (300, 200)), "JPEG")), "CC0", State.rejected, "too_small"),
    "/non-commercial.jpg": (
        Route(encode(pattern_image(14), "JPEG")),
        "CC BY-NC 4.0",
        State.rejected,
        "licence",
    ),
    "/no-licence.jpg": (Route(encode(pattern_image(15), "JPEG")), None, State.rejected, "licence"),
    "/odd-licence.jpg": (
        Route(encode(pattern_image(16), "JPEG")),
        "free for friends",
        State.rejected,
        "licence",
    ),
}
EXTRA_ROUTES = {
    "/robots.txt": Route(b"User-agent: *\nDisallow: /private/\n", content_type="text/plain"),
    "/moved.jpg": Route(encode(pattern_image(2), "JPEG", quality=90)),
}


def _config(**download) -> ScrapeConfig:
    options = dict(
        read_timeout=0.4,
        connect_timeout=2.0,
        total_timeout=10.0,
        retries=1,
        backoff=0.05,
        max_bytes=1_000_000,
        per_host_rate=0,
        allowed_networks=LOOPBACK,
    )
    options.update(download)
    return ScrapeConfig(download=DownloadConfig(**options), concurrency=8)


def _seed_generated_record(store: ManifestStore) -> str:
    record = plan_scenes([GROUPS[GROUP]], per_group=1)[0].to_record()
    store.store_image(record, pattern_image(SEEDED_IMAGE_SEED))
    record.advance(State.generated, "generate")
    store.put(record)
    return record.id


@pytest.fixture(scope=shared_unless_mutating)
def scraped(tmp_path_factory):
    """Scrape every case once: (records by path, store, server log, seeded record id, seconds)."""
    routes = {path: route for path, (route, *_rest) in CASES.items() if route is not None} | EXTRA_ROUTES
    store = ManifestStore(tmp_path_factory.mktemp("scrape"))
    seeded = _seed_generated_record(store)
    with serve(routes) as server:
        candidates = [
            Candidate(
                server.url(path),
                GROUP,
                licence,
                attribution=f"author of {path}",
                page_url=server.url(path + ".html"),
                provider="urls",
            )
            for path, (_, licence, *_r) in CASES.items()
        ]
        records, skipped = plan_web_records(candidates, GROUPS, store)
        assert skipped == []
        started = time.monotonic()
        out = run_stage(WebScraper(_config()), store, records).records
        seconds = time.monotonic() - started
        log = list(server.log)
    by_path = {path: record for path, record in zip(CASES, out, strict=True)}
    return by_path, store, log, seeded, seconds, server.base


@pytest.mark.parametrize("path", [p for p, case in CASES.items() if case[2] is not None])
def test_each_url_ends_in_its_documented_state_and_reason(scraped, path):
    by_path, store, *_ = scraped
    _, _, state, reason = CASES[path]
    record = store.get(by_path[path].id)  # what was written, not only what was returned
    assert record.state == state, (path, record.rejection)
    if reason is None:
        assert record.rejection is None
    else:
        assert record.rejection.stage == "scrape"
        assert record.rejection.reason == reason, record.rejection
        assert record.rejection.reason in SCRAPE_FAILURE_REASONS
        assert record.rejection.detail
        assert record.image is None


def test_good_images_are_stored_with_full_provenance(scraped):
    by_path, store, _, _, _, base = scraped
    for path, (_, _, state, _) in CASES.items():
        if state != State.generated:
            continue
        record = store.get(by_path[path].id)
        source = record.source
        assert source.kind == "web" and source.url == base + path
        assert source.page_url == base + path + ".html" and source.attribution == f"author of {path}"
        assert source.retrieved_at is not None and source.provider == "urls"
        assert source.licence in ("CC BY 4.0", "CC0 1.0", "Public Domain", "CC BY-SA 4.0")
        assert record.group == GROUP and record.concept_names == list(GROUPS[GROUP].concepts)
        event = record.history[-1]
        assert event.stage == "scrape" and event.code_version
        for key in ("final_url", "content_sha256", "phash", "format", "bytes", "licence_code", "user_agent"):
            assert event.params.get(key) is not None, (path, key)
        image = store.open_image(record)
        assert image.mode == "RGB" and image.size == (record.image.width, record.image.height)
        assert min(image.size) >= 512
        stored = store.read_bytes(record.image.path)
        if record.history[-1].params["format"] in ("JPEG", "PNG", "WEBP") and not path.startswith("/rotated"):
            # RGB JPEG/PNG/WebP files are kept as downloaded (metadata aside): the same pixels
            assert record.image.path.rsplit(".", 1)[1] in ("jpg", "png", "webp")
        assert hashlib.sha256(stored).hexdigest() == record.image.sha256


def test_image_details(scraped):
    by_path, store, *_ = scraped
    rotated = store.get(by_path["/rotated.jpg"].id)
    assert (rotated.image.width, rotated.image.height) == (560, 700)  # upright: EXIF orientation applied
    assert rotated.history[-1].params["exif_transposed"] is True
    png = store.open_image(store.get(by_path["/good.png"].id))
    assert png.getpixel((10, 10)) == (255, 255, 255)  # transparency composited on white
    webp = store.get(by_path["/good.webp"].id)
    assert webp.history[-1].params["format"] == "WEBP"
    sniffed = store.get(by_path["/wrong-type.png"].id).history[-1].params
    assert (sniffed["format"], sniffed["content_type"]) == (
        "JPEG",
        "text/plain",
    )  # bytes decide, not the header
    moved = store.get(by_path["/redirect-good"].id).history[-1].params
    assert moved["final_url"].endswith("/moved.jpg") and len(moved["redirects"]) == 1
    assert store.get(by_path["/html.jpg"].id).rejection.detail.startswith("an HTML document")
    assert "max_pixels" in store.get(by_path["/bomb.png"].id).rejection.detail


def test_retries_only_on_5xx_and_timeouts(scraped):
    by_path, store, log, *_ = scraped
    assert store.get(by_path["/flaky.jpg"].id).history[-1].params["attempts"] == 2
    assert log.count("/flaky.jpg") == 2
    assert log.count("/down.jpg") == 2  # 1 retry, then http_error
    assert "503" in store.get(by_path["/down.jpg"].id).rejection.detail
    assert log.count("/missing.jpg") == 1  # a 404 is not retried
    assert log.count("/slow.jpg") == 2


def test_duplicates_exact_and_perceptual(scraped):
    by_path, store, _, seeded, *_ = scraped
    copies = [store.get(by_path[p].id) for p in ("/copy-a.jpg", "/copy-b.jpg")]
    assert sorted(r.state.value for r in copies) == ["generated", "rejected"]
    kept, dropped = sorted(copies, key=lambda r: r.state != State.generated)
    assert dropped.rejection.reason == "duplicate" and kept.id in dropped.rejection.detail
    assert "sha256" in dropped.rejection.detail
    near = store.get(by_path["/near-copy-of-stored.jpg"].id)
    assert seeded in near.rejection.detail and "pHash" in near.rejection.detail
    cache = json.loads(store.read_bytes(INDEX_PATH))
    assert seeded in cache and kept.id in cache and dropped.id not in cache


def test_no_request_for_refused_licences_or_robots_paths(scraped):
    _, _, log, *_ = scraped
    for path in ("/non-commercial.jpg", "/no-licence.jpg", "/odd-licence.jpg", "/private/secret.jpg"):
        assert path not in log
    assert log.count("/robots.txt") == 1  # cached per host


def test_every_record_is_written_and_a_rerun_skips_them(scraped):
    by_path, store, _, _, _, base = scraped
    assert all(store.exists(r.id) for r in by_path.values())
    candidates = [Candidate(base + path, GROUP, "CC0") for path in CASES]
    records, skipped = plan_web_records(candidates, GROUPS, store)
    assert records == [] and len(skipped) == len(CASES)
    retry, _ = plan_web_records(candidates, GROUPS, store, retry_transient=True)
    assert sorted(r.source.url.removeprefix(base) for r in retry) == [
        "/down.jpg",
        "/missing.jpg",
        "/slow.jpg",
    ]
    assert all(r.state == State.planned and r.rejection is None for r in retry)


def test_private_addresses_refused_unless_allowed(tmp_path):
    routes = {"/a.jpg": Route(encode(pattern_image(40), "JPEG"))}
    with serve(routes) as server:
        for name, config, state in [
            ("default", _config(allowed_networks=()), State.rejected),
            ("allowed", _config(allowed_networks=(), allow_private_networks=True), State.generated),
        ]:
            store = ManifestStore(tmp_path / name)
            records, _ = plan_web_records([Candidate(server.url("/a.jpg"), GROUP, "CC0")], GROUPS, store)
            (record,) = run_stage(WebScraper(config), store, records).records
            assert record.state == state, record.rejection
            if state == State.rejected:
                assert record.rejection.reason == "private_address" and "127.0.0.1" in record.rejection.detail
                assert server.log == []  # refused before connecting, robots.txt included
        assert server.log == ["/robots.txt", "/a.jpg"]


def test_robots_unreachable_disallows_and_missing_allows(tmp_path):
    image = encode(pattern_image(41), "JPEG")
    with (
        serve(
            {"/robots.txt": Route(b"oops", status=503, content_type="text/plain"), "/a.jpg": Route(image)}
        ) as down,
        serve({"/a.jpg": Route(image)}) as missing,
    ):
        store = ManifestStore(tmp_path)
        candidates = [
            Candidate(down.url("/a.jpg"), GROUP, "CC0"),
            Candidate(missing.url("/a.jpg"), GROUP, "CC0"),
        ]
        records, _ = plan_web_records(candidates, GROUPS, store)
        first, second = run_stage(WebScraper(_config()), store, records).records
        assert first.rejection.reason == "robots_disallowed" and "unreachable" in first.rejection.detail
        assert "/a.jpg" not in down.log
        assert second.state == State.generated  # no robots.txt (404): everything allowed


def test_noai_directives_and_address_rules():
    token = "mcc-benchmark-scraper"
    assert noai_directives(["noindex, noai"], token) == {"noai"}
    assert noai_directives(["max-image-preview: large, noimageai"], token) == {"noimageai"}
    assert noai_directives(["googlebot: noai", "none"], token) == set()
    assert noai_directives([f"{token}: noai"], token) == {"noai"}
    for address in (
        "127.0.0.1",
        "10.1.2.3",
        "192.168.0.1",
        "169.254.169.254",
        "224.0.0.1",
        "::1",
        "fe80::1",
        "::ffff:127.0.0.1",
        "0.0.0.0",
        "100.64.0.1",
    ):
        assert address_blocked(address), address
    assert not address_blocked("93.184.216.34") and not address_blocked("2606:2800:220:1::1")
    assert not address_blocked("127.0.0.1", ["127.0.0.0/8"])


def test_per_host_rate_limit_spaces_requests():
    limiter = HostRateLimiter(rate=20.0)

    async def five_requests() -> float:
        started = time.monotonic()
        await asyncio.gather(*(limiter.wait("example.org") for _ in range(5)), limiter.wait("other.org"))
        return time.monotonic() - started

    assert asyncio.run(five_requests()) >= 4 / 20.0 - 0.01


def test_mcc_scrape_cli_with_a_csv(tmp_path):
    good, small = encode(pattern_image(50), "JPEG"), encode(pattern_image(51, (200, 200)), "JPEG")
    with serve(
        {"/a.jpg": Route(good), "/b.jpg": Route(small), "/c.jpg": Route(encode(pattern_image(52), "JPEG"))}
    ) as server:
        urls = tmp_path / "urls.csv"
        urls.write_text(
            "url,group,licence,attribution,page_url\n"
            f"{server.url('/a.jpg')},lemon-lime,CC BY-SA 4.0,Someone,{server.url('/a')}\n"
            f"{server.url('/b.jpg')},lemon-lime,CC0,,\n"
            f"{server.url('/c.jpg')},lemon-lime,,,\n"
        )
        workdir = tmp_path / "work"
        runner = CliRunner()
        result = runner.invoke(
            app,
            [
                "scrape",
                "--workdir",
                str(workdir),
                "--urls",
                str(urls),
                "--allow-private-networks",
                "--rate",
                "0",
            ],
        )
        assert result.exit_code == 0, result.output
        store = ManifestStore(workdir)
        states = {
            r.source.url.rsplit("/", 1)[1]: (r.state.value, r.rejection and r.rejection.reason)
            for r in store.iter()
        }
        assert states == {
            "a.jpg": ("generated", None),
            "b.jpg": ("rejected", "too_small"),
            "c.jpg": ("rejected", "licence"),
        }
        assert "too_small" in result.output and "licence" in result.output

        again = runner.invoke(
            app, ["scrape", "--workdir", str(workdir), "--urls", str(urls), "--allow-private-networks"]
        )
        assert again.exit_code == 0 and "already in the store" in again.output
        assert server.log.count("/a.jpg") == 1

        fresh = tmp_path / "unknown-ok"
        result = runner.invoke(
            app,
            [
                "scrape",
                "--workdir",
                str(fresh),
                "--urls",
                str(urls),
                "--allow-private-networks",
                "--allow-unknown-licence",
            ],
        )
        assert result.exit_code == 0, result.output
        third = next(r for r in ManifestStore(fresh).iter() if r.source.url.endswith("/c.jpg"))
        assert third.state == State.generated and third.source.licence is None

    bad = tmp_path / "bad.csv"
    bad.write_text("url,group,licence,attribution,page_url\nhttp://127.0.0.1/x.jpg,not-a-group,CC0,,\n")
    result = CliRunner().invoke(app, ["scrape", "--workdir", str(tmp_path / "w2"), "--urls", str(bad)])
    assert result.exit_code == 2 and "not-a-group" in result.output


def test_image_bytes_helpers_are_sane():
    # guards the fixtures themselves: the bomb is small on the wire but huge in pixels
    bomb = _bomb_png()
    assert len(bomb) < 200_000
    assert Image.open(io.BytesIO(bomb)).size == (12000, 12000)


@pytest.mark.slow
def test_worker_processes_and_keeping_original_bytes(tmp_path):
    jpeg = encode(pattern_image(60), "JPEG", quality=90)
    routes = {
        "/a.jpg": Route(jpeg),
        "/b.png": Route(_transparent_png(), content_type="image/png"),
        "/c.jpg": Route(jpeg[:5000]),
    }
    config = ScrapeConfig(download=_config().download, processes=1, keep_original_bytes=True)
    with serve(routes) as server:
        store = ManifestStore(tmp_path)
        candidates = [Candidate(server.url(p), GROUP, "CC0") for p in routes]
        records, _ = plan_web_records(candidates, GROUPS, store)
        kept, converted, broken = run_stage(WebScraper(config), store, records).records
    assert kept.image.path.endswith(".jpg") and store.read_bytes(kept.image.path) == jpeg
    assert kept.image.sha256 == kept.history[-1].params["content_sha256"]
    assert store.open_image(kept).size == (640, 520)
    assert converted.image.path.endswith(".png")  # RGBA: composited on white, so re-encoded
    assert broken.rejection.reason == "corrupt"  # the rejection crossed the process boundary intact


def test_scrape_job_does_read_plan_and_scrape(tmp_path):
    from generators.web import ScrapeJob, scrape

    with serve({"/a.jpg": Route(encode(pattern_image(80), "JPEG"))}) as server:
        urls = tmp_path / "urls.csv"
        urls.write_text(f"url,group,licence,attribution,page_url\n{server.url('/a.jpg')},frog-toad,CC0,,\n")
        store = ManifestStore(tmp_path / "work")
        job = ScrapeJob(urls=str(urls), **_config().model_dump())
        first = scrape(job, store)
        (record,) = first.records
        assert (first.skipped_rows, first.already_stored) == (0, 0)
        assert record.state == State.generated and record.concept_names == ["frog", "toad"]
        assert store.get(record.id).state == State.generated
        again = scrape(job, store)
        assert again.records == [] and again.already_stored == 1  # already in the store


def test_robots_crawl_delay_slows_the_host_down(tmp_path):
    routes = {"/robots.txt": Route(b"User-agent: *\nCrawl-delay: 1\n", content_type="text/plain")}
    routes |= {f"/{n}.jpg": Route(encode(pattern_image(90 + n), "JPEG")) for n in range(3)}
    with serve(routes) as server:
        store = ManifestStore(tmp_path)
        candidates = [Candidate(server.url(f"/{n}.jpg"), GROUP, "CC0") for n in range(3)]
        records, _ = plan_web_records(candidates, GROUPS, store)
        started = time.monotonic()
        out = run_stage(WebScraper(_config(per_host_rate=0)), store, records).records
        assert time.monotonic() - started >= 2.0  # three requests 1 s apart (urllib reads whole seconds)
    assert all(r.state == State.generated for r in out)


def test_kept_jpegs_lose_their_metadata_not_their_pixels():
    from generators.web import prepare_image, strip_jpeg_metadata

    exif = Image.Exif()
    exif[0x010F] = "SecretCam"  # Make
    exif[0x8825] = {2: (48.0, 51.0, 24.0)}  # GPS latitude
    picture = pattern_image(7)
    jpeg = encode(picture, "JPEG", quality=90, exif=exif.tobytes(), comment=b"private note")
    assert b"SecretCam" in jpeg and b"private note" in jpeg
    stripped = strip_jpeg_metadata(jpeg)
    assert b"SecretCam" not in stripped and b"private note" not in stripped and b"Exif" not in stripped
    assert np.array_equal(
        np.asarray(Image.open(io.BytesIO(stripped))), np.asarray(Image.open(io.BytesIO(jpeg)))
    )
    plain = encode(picture, "JPEG", quality=90)
    assert strip_jpeg_metadata(plain) is plain  # nothing to remove: the very bytes
    assert strip_jpeg_metadata(b"not a jpeg") is None
    assert strip_jpeg_metadata(jpeg[:10]) is None
    prepared = prepare_image(jpeg, min_side=512, max_pixels=10**8, keep_original=True)
    assert prepared.extension == "jpg" and prepared.stored == stripped
    assert prepared.stored_sha256 == hashlib.sha256(stripped).hexdigest() != prepared.content_sha256
    reencoded = prepare_image(jpeg, min_side=512, max_pixels=10**8, keep_original=False)
    assert reencoded.extension == "png" and reencoded.stored[:4] == b"\x89PNG"
