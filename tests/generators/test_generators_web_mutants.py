"""Web scraper details pinned where the mutation pass found gaps (no network, no real processes).

Pins: the non-image description of a rejected body; ``ImageIndex.remove`` forgets exactly the
one record; ``fetch_and_prepare`` records ``elapsed_s`` and the served Content-Type of a
non-image; a fetch process's share of the per-host connections is a whole number (rounded
up); a fetch process reports an unexpected error per URL (with the URL and the error type)
and keeps going; records of a fetch process that died are rejected, and a process that
does not exit is waited for a bounded time only; ``scrape`` refuses unknown group
ids with ``UrlListError``.
"""

from __future__ import annotations

import asyncio
import queue
import types

import pytest

import generators.web.scraper as web
from generators.download import Download, DownloadConfig, Downloader
from generators.sources import Candidate
from generators.sources.urllist import UrlListError
from generators.web import (
    FetchOutcome,
    ImageIndex,
    ImageRejected,
    ScrapeConfig,
    WebScraper,
    fetch_and_prepare,
    load_web_image,
    plan_web_records,
)
from manifests import ManifestStore, State, load_groups
from manifests.stage import run_stage

GROUPS = {g.id: g for g in load_groups()}
GROUP = "husky-wolf-malamute"


def _rejection(data: bytes) -> ImageRejected:
    with pytest.raises(ImageRejected) as rejected:
        load_web_image(data)
    return rejected.value


def test_non_image_bodies_are_described_by_what_they_are():
    """An empty body says so; a non-empty HTML body is called HTML, not empty."""
    empty = _rejection(b"")
    assert empty.reason == "not_an_image" and empty.detail == "empty body (0 bytes)"
    html = _rejection(b"<!DOCTYPE html><html><body>gone</body></html>")
    assert html.reason == "not_an_image" and "HTML" in html.detail and "empty" not in html.detail
    other = _rejection(b"\x00\x01binary")
    assert "empty" not in other.detail and "x00" in other.detail


class _FakeDownloader:
    def __init__(self, answer: Download):
        self.answer = answer

    async def get(self, url: str) -> Download:
        return self.answer


def test_fetch_and_prepare_records_elapsed_seconds_and_the_served_type():
    """``params['elapsed_s']`` is the download time rounded to 0.1 ms; a non-image names its Content-Type."""
    answer = Download(
        url="http://example.test/a.jpg",
        final_url="http://example.test/a.jpg",
        status=200,
        content_type="text/html",
        data=b"<html><body>not a picture</body></html>",
        attempts=1,
        elapsed=1.234567,
    )
    outcome = asyncio.run(
        fetch_and_prepare("rid", answer.url, _FakeDownloader(answer), ScrapeConfig(), asyncio.to_thread)
    )
    assert outcome.record_id == "rid" and outcome.prepared is None
    assert outcome.params["elapsed_s"] == 1.2346 and outcome.params["http_status"] == 200
    assert outcome.reason == "not_an_image"
    assert outcome.detail == "an HTML document (served as Content-Type text/html)"


def test_shard_config_rounds_per_host_connections_up_to_a_whole_number():
    """8 connections over 3 processes is 3 each (an int), never a fraction; the rate is divided."""
    config = ScrapeConfig(download=DownloadConfig(per_host_connections=8, per_host_rate=6.0), concurrency=10)
    shard = web._shard_config(config, 3)
    assert shard.download.per_host_connections == 3 and type(shard.download.per_host_connections) is int
    assert shard.download.per_host_rate == 2.0 and shard.concurrency == 4
    assert web._shard_config(config, 16).download.per_host_connections == 1


def test_a_fetch_process_reports_an_unexpected_error_per_url_and_goes_on(monkeypatch):
    """An exception while fetching one URL becomes its ``error`` outcome (URL, error type and text);
    the other URLs are still fetched and the shard ends with None."""

    async def flaky(record_id, url, downloader, config, run_cpu):
        assert isinstance(downloader, Downloader)
        if url.endswith("bad"):
            raise KeyError("boom")
        return FetchOutcome(record_id, {"url": url}, reason="http_error", detail="fine")

    monkeypatch.setattr(web, "fetch_and_prepare", flaky)
    watched = []
    monkeypatch.setattr(web, "exit_with_parent", watched.append)  # the real one would watch pytest's parent
    results: queue.Queue = queue.Queue()
    items = [("r1", "http://example.test/bad"), ("r2", "http://example.test/good")]
    web._fetch_process(items, ScrapeConfig(concurrency=4), results, 4242)
    assert watched == [4242]
    sent = []
    while not results.empty():
        sent.append(results.get_nowait())
    assert sent[-1] is None and len(sent) == 3
    by_id = {outcome.record_id: outcome for outcome in sent[:-1]}
    assert by_id["r1"].params == {"url": "http://example.test/bad"} and by_id["r1"].reason == "error"
    assert by_id["r1"].detail == "KeyError: 'boom'"
    assert by_id["r2"].detail == "fine"


class _DeadProcess:
    """A fetch process that dies at once without sending anything (exit code -9)."""

    joins: list[float | None] = []

    def __init__(self, target, args, daemon):
        self.exitcode = None

    def start(self) -> None:
        self.exitcode = -9

    def is_alive(self) -> bool:
        return False

    def join(self, timeout=None) -> None:
        _DeadProcess.joins.append(timeout)


def test_records_of_a_dead_fetch_process_are_rejected_and_joins_are_bounded(tmp_path, monkeypatch):
    """A fetch process that ends early leaves its records rejected as ``error`` (with the exit codes);
    the scraper waits a bounded time for each process to exit, never forever."""
    context = types.SimpleNamespace(Queue=lambda maxsize=0: queue.Queue(maxsize), Process=_DeadProcess)
    monkeypatch.setattr(web, "multiprocessing", types.SimpleNamespace(get_context=lambda method: context))
    _DeadProcess.joins = []
    store = ManifestStore(tmp_path)
    candidates = [Candidate(f"http://example.test/{n}.jpg", GROUP, "CC0") for n in range(2)]
    records, _ = plan_web_records(candidates, GROUPS, store)
    out = run_stage(WebScraper(ScrapeConfig(processes=1)), store, records).records
    for record in out:
        assert record.state == State.rejected and record.rejection.reason == "error"
        assert "the fetch process ended early (exit codes [-9])" in record.rejection.detail
        assert store.get(record.id).state == State.rejected
    assert _DeadProcess.joins and all(t is not None and t > 0 for t in _DeadProcess.joins)


def test_scrape_refuses_unknown_group_ids_as_a_url_list_error(tmp_path):
    """Unknown group ids are a ``UrlListError`` naming the file, raised before anything is planned."""
    urls = tmp_path / "urls.csv"
    urls.write_text("url,group,licence\nhttp://example.test/a.jpg,no-such-group,CC0\n")
    with pytest.raises(UrlListError, match="unknown group"):
        web.scrape(web.ScrapeJob(urls=str(urls)), ManifestStore(tmp_path / "work"))
    assert not (tmp_path / "work" / "records").exists()


# -- survivors of the second look (13:55) ---------------------------------------------------------
def test_sniffing_webp_needs_both_riff_and_webp():
    """WEBP is ``RIFF`` + size + ``WEBP``: a real WebP sniffs as WEBP, ``WEBP`` alone at offset 8 does not."""
    from generators_testserver import encode, pattern_image

    from generators.web import sniff_image_format

    assert sniff_image_format(encode(pattern_image(3, (64, 64)), "WEBP")) == "WEBP"
    assert sniff_image_format(b"XXXX\x00\x00\x00\x00WEBPVP8 ") is None


def test_to_rgb_composites_alpha_on_white_and_converts_other_modes():
    """RGBA: transparent pixels become white; L and CMYK images come out as RGB."""
    from PIL import Image

    from generators.web.image import _to_rgb

    rgba = Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    assert _to_rgb(rgba).mode == "RGB" and _to_rgb(rgba).getpixel((0, 0)) == (255, 255, 255)
    grey = _to_rgb(Image.new("L", (4, 4), 100))
    assert grey.mode == "RGB" and grey.getpixel((1, 1)) == (100, 100, 100)
    assert _to_rgb(Image.new("CMYK", (2, 2))).mode == "RGB"


def test_exif_orientation_is_applied():
    """A JPEG with EXIF orientation 6 comes out upright (width and height swapped), flagged transposed."""
    from generators_testserver import encode, pattern_image
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(pattern_image(21, (200, 160)), "JPEG", quality=90, exif=exif)
    loaded = load_web_image(data, min_side=64)
    assert loaded.exif_transposed and loaded.original_size == (200, 160) and loaded.image.size == (160, 200)


def test_strip_jpeg_metadata_removes_exactly_the_metadata_segments():
    """The result is the input minus its comment segment, byte for byte (no extra or lost bytes)."""
    from generators_testserver import encode, pattern_image

    from generators.web import strip_jpeg_metadata

    base = encode(pattern_image(5, (64, 64)), "JPEG", quality=80)
    note = b"private note"
    with_comment = base[:2] + b"\xff\xfe" + (len(note) + 2).to_bytes(2, "big") + note + base[2:]
    assert strip_jpeg_metadata(with_comment) == base
    assert strip_jpeg_metadata(base) is base


def test_finish_writes_the_refreshed_cache_only_when_it_changed(tmp_path):
    """The scraper's ``finish`` writes the hash cache with the new entries, and nothing when nothing changed."""
    import json

    from generators.web import INDEX_PATH

    store = ManifestStore(tmp_path)
    scraper = WebScraper(ScrapeConfig())
    scraper._index = ImageIndex.from_store(store)
    assert scraper.finish(store) == {}  # an empty store and an empty cache: nothing to write
    scraper._index = ImageIndex.from_store(store)
    scraper._index.cache_entry("b", "2", 0xFF)
    ((path, data),) = scraper.finish(store).items()
    assert path == INDEX_PATH and json.loads(data) == {"b": {"sha256": "2", "phash": "00000000000000ff"}}


def test_a_transient_rejection_retried_says_why(tmp_path):
    """With ``retry_transient``, the record is planned again with the note ``retry after <reason>``."""
    store = ManifestStore(tmp_path)
    (record,), _ = plan_web_records([Candidate("http://example.test/t.jpg", GROUP, "CC0")], GROUPS, store)
    record.reject("scrape", "timeout", "slow")
    store.put(record)
    (again,), skipped = plan_web_records(
        [Candidate("http://example.test/t.jpg", GROUP, "CC0")], GROUPS, store, retry_transient=True
    )
    assert skipped == [] and again.state == State.planned and again.history[-1].note == "retry after timeout"


def test_fetch_processes_start_at_exactly_process_pool_min_images(tmp_path, monkeypatch):
    """``processes=None``: PROCESS_POOL_MIN_IMAGES fetchable records already go to fetch processes."""
    calls: list[str] = []
    monkeypatch.setattr(WebScraper, "_fetch_in_processes", lambda self, *a: calls.append("processes") or [])
    monkeypatch.setattr(WebScraper, "_fetch_here", lambda self, *a: calls.append("here") or [])
    store = ManifestStore(tmp_path)
    count = web.PROCESS_POOL_MIN_IMAGES
    candidates = [Candidate(f"http://example.test/{n}.jpg", GROUP, "CC0") for n in range(count)]
    records, _ = plan_web_records(candidates, GROUPS, store)
    list(WebScraper(ScrapeConfig(processes=None)).run(records, store))
    list(WebScraper(ScrapeConfig(processes=None)).run(records[:-1], store))
    assert calls == ["processes", "here"]


def _prepared():
    from generators_testserver import encode, pattern_image

    from generators.web import prepare_image

    return prepare_image(encode(pattern_image(11, (96, 96)), "JPEG"), 64, 10**8)


def test_decide_rejects_duplicates_and_records_the_licence_code(tmp_path):
    """An image already indexed is rejected as ``duplicate``; a new one is stored with ``licence_code``."""
    from generators.licences import parse_licence

    store = ManifestStore(tmp_path)
    candidates = [Candidate(f"http://example.test/{n}.jpg", GROUP, "CC0") for n in range(2)]
    (first, second), _ = plan_web_records(candidates, GROUPS, store)
    prepared, index, scraper = _prepared(), ImageIndex(), WebScraper(ScrapeConfig())
    licence = parse_licence("CC0")
    output = scraper._decide(first, licence, FetchOutcome(first.id, {"url": "u1"}, prepared=prepared), index)
    assert first.state == State.generated and first.history[-1].params["licence_code"] == licence.code
    assert output.files == {first.image.path: prepared.stored}  # the runner writes them before the record
    output = scraper._decide(
        second, licence, FetchOutcome(second.id, {"url": "u2"}, prepared=prepared), index
    )
    assert second.state == State.rejected and second.rejection.reason == "duplicate" and output.files == {}


def test_finish_rejects_at_the_scrape_stage_when_deciding_fails(tmp_path, monkeypatch):
    """An unexpected error while deciding rejects the record at stage ``scrape`` with reason ``error``."""

    def broken(self, *args):
        raise RuntimeError("boom")

    monkeypatch.setattr(WebScraper, "_decide", broken)
    store = ManifestStore(tmp_path)
    (record,), _ = plan_web_records([Candidate("http://example.test/f.jpg", GROUP, "CC0")], GROUPS, store)
    outcome = FetchOutcome(record.id, {"url": "u"})
    output = WebScraper(ScrapeConfig())._finish(record, None, outcome, ImageIndex())
    assert output.record is record and output.files == {}
    assert record.rejection.stage == "scrape" and record.rejection.reason == "error"
    assert record.rejection.detail == "RuntimeError: boom" and record.image is None


def test_licence_refusals_say_what_is_wrong():
    """An unrecognised licence is asked to be normalised; a recognised one off the list names the list."""
    from generators.licences import parse_licence

    scraper = WebScraper(ScrapeConfig())
    unknown = parse_licence("some odd words")
    assert unknown.code == "unrecognised" and "not recognised" in scraper._licence_refusal(unknown)
    non_commercial = parse_licence("CC BY-NC 4.0")
    refusal = scraper._licence_refusal(non_commercial)
    assert "allow-list" in refusal and "not recognised" not in refusal


def test_fetch_and_prepare_records_what_the_download_was_and_why_it_failed():
    """Every outcome's params start with the URL; a failed download adds its final URL and attempts; a
    fetched one the redirects, status, type and byte count of the body."""
    from generators.download import DownloadFailure

    class Failing:
        async def get(self, url):
            raise DownloadFailure("http_error", "HTTP 404", attempts=2, final_url="http://example.test/b.jpg")

    failed = asyncio.run(fetch_and_prepare("rid", "http://example.test/a.jpg", Failing(), ScrapeConfig(),
                                           asyncio.to_thread))  # fmt: skip
    assert failed.params == {"url": "http://example.test/a.jpg", "final_url": "http://example.test/b.jpg",
                             "attempts": 2}  # fmt: skip
    assert (failed.reason, failed.detail, failed.prepared) == ("http_error", "HTTP 404", None)
    body = b"not an image at all"
    answer = Download(url="http://example.test/a.jpg", final_url="http://example.test/c.jpg", status=200,
                      content_type=None, data=body, attempts=3, elapsed=0.5,
                      redirects=["http://example.test/c.jpg"])  # fmt: skip
    fetched = asyncio.run(fetch_and_prepare("rid", answer.url, _FakeDownloader(answer), ScrapeConfig(),
                                            asyncio.to_thread))  # fmt: skip
    assert fetched.params == {
        "url": "http://example.test/a.jpg", "final_url": "http://example.test/c.jpg", "attempts": 3,
        "redirects": ["http://example.test/c.jpg"], "http_status": 200, "content_type": None, "bytes": len(body),
        "elapsed_s": 0.5,
    }  # fmt: skip
    assert fetched.reason == "not_an_image" and "served as" not in fetched.detail  # no type was served


def test_a_search_without_groups_searches_every_group_with_the_jobs_settings(monkeypatch):
    """No ``groups``: every group of the file is searched, each with a log line of its count; the
    source gets the job's min_side, rate and page cap."""
    import generators.sources as sources
    from generators.web.plan import ScrapeJob, find_candidates

    made, searched = [], []

    class Source:
        name = "openverse"

        def __init__(self, **options):
            made.append(options)

        def search(self, group, per_group, query):
            searched.append((group.id, per_group, query))
            return [f"{group.id}-candidate"] * 2

    monkeypatch.setattr(sources, "OpenverseSource", Source)
    lines = []
    job = ScrapeJob(source="openverse", api_url="http://127.0.0.1:9", per_group=2, min_side=333, api_rate=0.5,
                    api_max_pages=4)  # fmt: skip
    candidates, skipped = find_candidates(job, GROUPS, log=lines.append)
    assert [g for g, _, _ in searched] == list(GROUPS) and skipped == 0
    assert len(candidates) == 2 * len(GROUPS) and all(n == 2 for _, n, _ in searched)
    assert lines == [f"openverse: 2 candidates for {g}" for g in GROUPS]
    (options,) = made
    assert (options["min_side"], options["requests_per_second"], options["max_pages"]) == (333, 0.5, 4)
    assert options["licences"] == job.allowed_licences and options["base_url"] == "http://127.0.0.1:9"


@pytest.mark.parametrize("contact", [None, "ops@example.org"])
def test_a_wikimedia_search_gets_the_jobs_settings_and_asks_for_a_contact_when_none(monkeypatch, contact):
    """Wikimedia gets the job's rate, page cap and User-Agent (with the contact when given); without a
    contact, one line tells the operator to set ``scrape.contact``, which Wikimedia's API policy asks for."""
    import generators.sources as sources
    from generators.web.plan import ScrapeJob, find_candidates

    made = []

    class Source:
        name = "wikimedia"

        def __init__(self, **options):
            made.append(options)

        def search(self, group, per_group, query):
            return []

    monkeypatch.setattr(sources, "WikimediaCommonsSource", Source)
    lines = []
    job = ScrapeJob(source="wikimedia", groups=[GROUP], api_rate=0.25, api_max_pages=3, min_side=200,
                    contact=contact)  # fmt: skip
    find_candidates(job, GROUPS, log=lines.append)
    (options,) = made
    assert (options["requests_per_second"], options["max_pages"], options["min_side"]) == (0.25, 3, 200)
    assert options["user_agent"] == job.download.user_agent
    assert options["api_url"] == "https://commons.wikimedia.org/w/api.php"
    ask = "Wikimedia asks API clients for contact details in the User-Agent: set scrape.contact (--contact)"
    assert lines == ([ask] if contact is None else []) + [f"wikimedia: 0 candidates for {GROUP}"]
    if contact:
        assert contact in options["user_agent"]


def test_the_rate_limit_line_names_the_busiest_host_and_its_least_duration():
    urls = [
        "http://a.example/1.jpg",
        "http://a.example/2.jpg",
        "http://b.example/1.jpg",
        "http://a.example/3.jpg",
    ]
    records = [Candidate(url, GROUP, "CC0").to_record(GROUPS[GROUP]) for url in urls]
    assert web.rate_limit_line(records, 0.5) == (
        "4 URLs on 2 hosts; at most 0.5 requests/s per host, so the busiest (a.example, 3 URLs) takes at "
        "least 6 s (--rate sets the limit, e.g. for your own server)"
    )
    assert web.rate_limit_line(records, 0) == "4 URLs; no rate limit"


def test_the_in_process_fetch_names_each_record_and_ends_cleanly(tmp_path, monkeypatch):
    """``processes=0``: every record's own id and URL reach ``fetch_and_prepare``, a crash in it is that
    record's ``error`` only, and the stage's generator read to the end outside ``run_stage`` (which would
    only log a late error) raises nothing: the download loop is awaited to its end, not abandoned."""
    seen = []

    async def fake_fetch(record_id, url, downloader, config, run_cpu):
        seen.append((record_id, url))
        if url.endswith("/2.jpg"):
            raise ValueError("planted crash")
        return FetchOutcome(record_id, {"url": url}, reason="not_an_image", detail="planted")

    monkeypatch.setattr(web, "fetch_and_prepare", fake_fetch)
    store = ManifestStore(tmp_path)
    candidates = [Candidate(f"http://example.test/{n}.jpg", GROUP, "CC0") for n in range(3)]
    records, _ = plan_web_records(candidates, GROUPS, store)
    outputs = list(WebScraper(ScrapeConfig(processes=0)).run(records, store))
    assert sorted(seen) == sorted((r.id, r.source.url) for r in records)
    assert sorted(o.record.id for o in outputs) == sorted(r.id for r in records)
    reasons = {o.record.source.url.rsplit("/", 1)[1]: o.record.rejection.reason for o in outputs}
    assert reasons == {"0.jpg": "not_an_image", "1.jpg": "not_an_image", "2.jpg": "error"}
    # The outcome of a crashed fetch names its record too (the process path matches outcomes by that id).
    fetched = WebScraper(ScrapeConfig(processes=0))._fetch_here([(r, None) for r in records])
    assert sorted((record.id, outcome.record_id) for record, _, outcome in fetched) == sorted(
        (r.id, r.id) for r in records
    )


def test_decide_keeps_the_fetch_params_and_records_the_profile_licence_and_size(tmp_path):
    """A failed fetch is rejected with the outcome's params as its history's params; a stored image's event
    names the colour profile it was converted from, the licence as written and the original size."""
    from generators_testserver import encode, icc_profile, pattern_image

    from generators.licences import parse_licence
    from generators.web import prepare_image

    store = ManifestStore(tmp_path)
    candidates = [Candidate(f"http://example.test/{n}.jpg", GROUP, "CC0") for n in range(2)]
    (failed, stored), _ = plan_web_records(candidates, GROUPS, store)
    scraper = WebScraper(ScrapeConfig())
    params = {"url": "u1", "final_url": "u1b", "attempts": 3}
    scraper._decide(failed, None, FetchOutcome(failed.id, dict(params), reason="http_error", detail="404"),
                    ImageIndex())  # fmt: skip
    assert failed.rejection.reason == "http_error" and failed.history[-1].params == params

    wide = icc_profile("RGB ", "Wide Test RGB", gamma=2.2,
                       primaries=((0.2, 0.1, 0.0), (0.5, 0.8, 0.1), (0.27, 0.1, 0.7)))  # fmt: skip
    prepared = prepare_image(encode(pattern_image(5, (96, 80)), "JPEG", icc_profile=wide), 64, 10**8)
    licence = parse_licence("cc-by 4.0")
    scraper._decide(stored, licence, FetchOutcome(stored.id, {"url": "u2"}, prepared=prepared), ImageIndex())
    event = stored.history[-1].params
    assert event["colour_profile"] == "Wide Test RGB" and event["licence_raw"] == "cc-by 4.0"
    assert (event["original_width"], event["original_height"]) == (96, 80)


def test_an_unknown_licence_is_refused_unless_allowed_and_the_refusal_says_how():
    assert WebScraper(ScrapeConfig())._licence_refusal(None) == (
        "no licence given (unknown); give one in the URL list or allow unknown licences explicitly"
    )
    assert WebScraper(ScrapeConfig(allow_unknown_licence=True))._licence_refusal(None) is None


def test_without_a_cpu_count_one_fetch_process_is_started(tmp_path, monkeypatch):
    """``processes=None`` on a machine whose CPU count is unknown: one process, not more."""
    counts: list[int] = []
    monkeypatch.setattr(WebScraper, "_fetch_in_processes", lambda self, f, n: counts.append(n) or [])
    monkeypatch.setattr(web.os, "cpu_count", lambda: None)
    store = ManifestStore(tmp_path)
    candidates = [
        Candidate(f"http://example.test/{n}.jpg", GROUP, "CC0") for n in range(web.PROCESS_POOL_MIN_IMAGES)
    ]
    records, _ = plan_web_records(candidates, GROUPS, store)
    list(WebScraper(ScrapeConfig(processes=None)).run(records, store))
    assert counts == [1]


def test_planning_again_returns_a_stored_planned_record_itself(tmp_path):
    """A URL whose record is stored and still planned is planned again as that stored record."""
    store = ManifestStore(tmp_path)
    candidates = [Candidate(f"http://example.test/{n}.jpg", GROUP, "CC0") for n in range(2)]
    records, _ = plan_web_records(candidates, GROUPS, store)
    store.put_many(records)
    again, skipped = plan_web_records(candidates, GROUPS, store)
    assert [r.id for r in again] == [r.id for r in records] and skipped == []
    assert all(r == store.get(r.id) for r in again)


def test_an_image_index_grows_past_its_first_block_and_starts_unchanged():
    """A new index has changed nothing; past 1,024 images its hash array grows and every image is found."""
    index = ImageIndex()
    assert not index.cache_changed and len(index) == 0
    for n in range(1030):
        index.add(f"r{n}", [f"sha{n}"], perceptual=n)
    assert len(index) == 1030
    assert index.match("other", 1029, 0) == ("r1029", "near-identical pixels (pHash distance 0)")
    assert index.match("sha1025", 0, -1) == ("r1025", "identical bytes (sha256)")
