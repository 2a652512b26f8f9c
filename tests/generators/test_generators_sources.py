"""Candidate sources: URL list files, and the Openverse and Wikimedia Commons adapters
against documents in each API's documented format served from a local HTTP server."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from generators_testserver import Route, serve

from generators.licences import parse_licence
from generators.sources import (
    OpenverseSource,
    SourceError,
    UrlListError,
    WikimediaCommonsSource,
    read_url_list,
)
from manifests import State, load_groups, web_record_id

GROUPS = {g.id: g for g in load_groups()}


# -- URL lists ---------------------------------------------------------------------------
def test_csv_url_list_with_empty_optional_columns(tmp_path):
    path = tmp_path / "urls.csv"
    path.write_text(
        "url,group,licence,attribution,page_url\n"
        "https://example.org/a.jpg,lemon-lime,CC BY 4.0,Ann,https://example.org/a\n"
        "https://example.org/b.jpg,lemon-lime,,,\n"
        ",lemon-lime,,,\n"
        "ftp://example.org/c.jpg,lemon-lime,,,\n"
        "HTTPS://EXAMPLE.org/a.jpg#frag,lemon-lime,,,\n"
    )
    urls = read_url_list(path, set(GROUPS))
    assert [c.url for c in urls.candidates] == ["https://example.org/a.jpg", "https://example.org/b.jpg"]
    first, second = urls.candidates
    assert (first.licence, first.attribution, first.page_url, first.provider) == (
        "CC BY 4.0",
        "Ann",
        "https://example.org/a",
        "urls",
    )
    assert (second.licence, second.attribution, second.page_url) == (None, None, None)
    assert [line for line, _ in urls.skipped] == [4, 5, 6]
    record = first.to_record(GROUPS["lemon-lime"])
    assert record.id == web_record_id("https://example.org/a.jpg")
    assert record.state == State.planned and record.concept_names == ["lemon", "lime"]


def test_jsonl_and_parquet_url_lists(tmp_path):
    rows = [
        {"url": "https://example.org/x.png", "group": "frog-toad", "license": "cc0"},
        {"url": "https://example.org/y.png", "group": "frog-toad", "page_url": "https://example.org/y"},
    ]
    jsonl = tmp_path / "urls.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    parquet = tmp_path / "urls.parquet"
    columns = ["url", "group", "license", "page_url"]
    pq.write_table(pa.Table.from_pylist([{c: r.get(c) for c in columns} for r in rows]), parquet)
    for path in (jsonl, parquet):
        candidates = read_url_list(path, set(GROUPS)).candidates
        assert [c.url for c in candidates] == [r["url"] for r in rows]
        assert candidates[0].licence == "cc0" and candidates[1].page_url == "https://example.org/y"


def test_url_list_errors_name_the_fix(tmp_path):
    bad_group = tmp_path / "bad.csv"
    bad_group.write_text("url,group\nhttps://example.org/a.jpg,no-such-group\n")
    with pytest.raises(UrlListError, match="unknown group id.*no-such-group"):
        read_url_list(bad_group, set(GROUPS))
    no_url = tmp_path / "nourl.csv"
    no_url.write_text("link,group\nhttps://example.org/a.jpg,lemon-lime\n")
    with pytest.raises(UrlListError, match="no 'url' column"):
        read_url_list(no_url, set(GROUPS))
    no_group = tmp_path / "nogroup.csv"
    no_group.write_text("url\nhttps://example.org/a.jpg\n")
    with pytest.raises(UrlListError, match="no group"):
        read_url_list(no_group, set(GROUPS))
    assert (
        read_url_list(no_group, set(GROUPS), default_group="lemon-lime").candidates[0].group == "lemon-lime"
    )
    with pytest.raises(UrlListError, match="unsupported"):
        (tmp_path / "urls.txt").write_text("x")
        read_url_list(tmp_path / "urls.txt")


# -- Openverse ---------------------------------------------------------------------------
def _openverse_result(n: int, **overrides) -> dict:
    result = {
        "id": f"id-{n}",
        "title": f"Husky and wolf {n}",
        "indexed_on": "2024-01-01T00:00:00Z",
        "foreign_landing_url": f"https://www.flickr.com/photos/someone/{n}",
        "url": f"https://live.staticflickr.com/{n}.jpg",
        "creator": f"photographer {n}",
        "creator_url": None,
        "license": "by-sa",
        "license_version": "2.0",
        "license_url": "https://creativecommons.org/licenses/by-sa/2.0/",
        "provider": "flickr",
        "source": "flickr",
        "category": "photograph",
        "filesize": None,
        "filetype": "jpg",
        "tags": [],
        "attribution": f'"Husky and wolf {n}" by photographer {n} is licensed under CC BY-SA 2.0.',
        "fields_matched": ["title"],
        "mature": False,
        "height": 768,
        "width": 1024,
        "thumbnail": f"https://api.openverse.org/v1/images/id-{n}/thumb/",
        "detail_url": f"https://api.openverse.org/v1/images/id-{n}/",
        "related_url": "",
    }
    result.update(overrides)
    return result


def _openverse_page(path: str) -> bytes:
    page = int(parse_qs(urlsplit(path).query)["page"][0])
    results = {
        1: [
            _openverse_result(1),
            _openverse_result(2, mature=True),
            _openverse_result(3, width=300, height=200),
        ],
        2: [
            _openverse_result(4, license="cc0", license_version="1.0", attribution=None, creator=None),
            _openverse_result(5, license="pdm", license_version="1.0", source="wikimedia"),
        ],
    }[page]
    return json.dumps(
        {"result_count": 5, "page_count": 2, "page_size": 3, "page": page, "results": results}
    ).encode()


def test_openverse_adapter_pages_filters_and_normalises():
    routes = {"/v1/images/": Route(content_type="application/json", dynamic=_openverse_page)}
    with serve(routes) as server:
        source = OpenverseSource(base_url=server.base, token="secret", page_size=3, min_side=512)
        candidates = source.search(GROUPS["husky-wolf-malamute"], limit=10)
    assert [c.url for c in candidates] == [f"https://live.staticflickr.com/{n}.jpg" for n in (1, 4, 5)]
    first = candidates[0]
    assert first.group == "husky-wolf-malamute"
    assert first.page_url == "https://www.flickr.com/photos/someone/1"
    assert parse_licence(first.licence).name == "CC BY-SA 2.0"
    assert "photographer 1" in first.attribution
    assert first.provider == "openverse:flickr" and first.query == "siberian husky gray wolf alaskan malamute"
    assert parse_licence(candidates[1].licence).code == "cc0" and candidates[1].attribution is None
    assert parse_licence(candidates[2].licence).code == "public-domain"
    query = parse_qs(urlsplit(server.log[0]).query)
    assert query["q"] == ["siberian husky gray wolf alaskan malamute"]
    assert set(query["license"][0].split(",")) == {"cc0", "pdm", "by", "by-sa"}
    assert len(server.log) == 2  # two pages, then page_count reached


def test_openverse_limit_stops_paging_and_errors_are_clear():
    routes = {"/v1/images/": Route(content_type="application/json", dynamic=_openverse_page)}
    with serve(routes) as server:
        assert (
            len(OpenverseSource(base_url=server.base, page_size=3).search(GROUPS["lemon-lime"], limit=1)) == 1
        )
        assert len(server.log) == 1
    limited = {"/v1/images/": Route(b"{}", status=429, content_type="application/json")}
    with serve(limited) as server, pytest.raises(SourceError, match="rate limit"):
        OpenverseSource(base_url=server.base).search(GROUPS["lemon-lime"], limit=5)


# -- Wikimedia Commons -------------------------------------------------------------------
def _commons_page(n: int, mime: str = "image/jpeg", **metadata) -> dict:
    ext = {
        "LicenseShortName": {"value": "CC BY-SA 4.0", "source": "commons-desc-page"},
        "LicenseUrl": {
            "value": "https://creativecommons.org/licenses/by-sa/4.0",
            "source": "commons-desc-page",
        },
        "License": {"value": "cc-by-sa-4.0", "source": "commons-templates"},
        "Artist": {
            "value": f'<a href="//commons.wikimedia.org/wiki/User:P{n}" title="User:P{n}">Photographer &amp; {n}</a>'
        },
        "AttributionRequired": {"value": "true"},
    }
    ext.update({k: {"value": v} for k, v in metadata.items()})
    return {
        "pageid": 1000 + n,
        "ns": 6,
        "title": f"File:Lemon and lime {n}.jpg",
        "index": n,
        "imagerepository": "local",
        "imageinfo": [
            {
                "size": 123456,
                "width": 1600,
                "height": 1200,
                "url": f"https://upload.wikimedia.org/wikipedia/commons/a/ab/Lemon_and_lime_{n}.jpg",
                "descriptionurl": f"https://commons.wikimedia.org/wiki/File:Lemon_and_lime_{n}.jpg",
                "descriptionshorturl": f"https://commons.wikimedia.org/w/index.php?curid={1000 + n}",
                "mime": mime,
                "extmetadata": ext,
            }
        ],
    }


def _commons_answer(path: str) -> bytes:
    query = parse_qs(urlsplit(path).query)
    if "gsroffset" not in query:
        pages = [_commons_page(2), _commons_page(1), _commons_page(3, mime="image/svg+xml")]
        return json.dumps(
            {
                "batchcomplete": True,
                "continue": {"gsroffset": 3, "continue": "gsroffset||"},
                "query": {"pages": pages},
            }
        ).encode()
    pages = [_commons_page(4, LicenseUrl="", LicenseShortName="Public domain", License="pd")]
    return json.dumps({"batchcomplete": True, "query": {"pages": pages}}).encode()


def test_wikimedia_adapter_follows_continue_and_reads_extmetadata():
    with serve({"/w/api.php": Route(content_type="application/json", dynamic=_commons_answer)}) as server:
        source = WikimediaCommonsSource(api_url=server.url("/w/api.php"), batch=3)
        candidates = source.search(GROUPS["lemon-lime"], limit=10, query="lemon lime")
    assert [c.url.rsplit("/", 1)[1] for c in candidates] == [
        "Lemon_and_lime_1.jpg",
        "Lemon_and_lime_2.jpg",
        "Lemon_and_lime_4.jpg",
    ]
    first = candidates[0]
    assert parse_licence(first.licence).name == "CC BY-SA 4.0"
    assert first.attribution == "Photographer & 1, CC BY-SA 4.0, via Wikimedia Commons"
    assert first.page_url == "https://commons.wikimedia.org/wiki/File:Lemon_and_lime_1.jpg"
    assert first.provider == "wikimedia" and first.title == "Lemon and lime 1.jpg"
    assert parse_licence(candidates[2].licence).code == "public-domain"
    first_query = parse_qs(urlsplit(server.log[0]).query)
    assert first_query["gsrsearch"] == ["lemon lime filetype:bitmap"] and first_query["gsrnamespace"] == ["6"]
    assert "extmetadata" in first_query["iiprop"][0]
    assert parse_qs(urlsplit(server.log[1]).query)["gsroffset"] == ["3"]


def test_wikimedia_api_error_is_a_source_error():
    error = json.dumps({"error": {"code": "badvalue", "info": "Unrecognized value"}}).encode()
    routes = {"/w/api.php": Route(error, content_type="application/json")}
    with serve(routes) as server, pytest.raises(SourceError, match="badvalue"):
        WikimediaCommonsSource(api_url=server.url("/w/api.php")).search(GROUPS["lemon-lime"], limit=5)


def test_mcc_scrape_from_openverse_end_to_end(tmp_path):
    from generators_testserver import encode, pattern_image
    from typer.testing import CliRunner

    from flows.cli import app
    from manifests import ManifestStore

    def answer(path: str) -> bytes:
        results = [
            _openverse_result(1, url=f"{base}/one.jpg", foreign_landing_url=f"{base}/one"),
            _openverse_result(2, url=f"{base}/two.jpg", license="by-nc", license_version="4.0"),
        ]
        return json.dumps(
            {"result_count": 2, "page_count": 1, "page_size": 20, "page": 1, "results": results}
        ).encode()

    routes = {
        "/v1/images/": Route(content_type="application/json", dynamic=answer),
        "/one.jpg": Route(encode(pattern_image(70), "JPEG")),
        "/two.jpg": Route(encode(pattern_image(71), "JPEG")),
    }
    with serve(routes) as server:
        base = server.base
        result = CliRunner().invoke(
            app,
            [
                "scrape",
                "--workdir",
                str(tmp_path),
                "--source",
                "openverse",
                "--api-url",
                base,
                "--group",
                "lemon-lime",
                "--per-group",
                "5",
                "--allow-private-networks",
                "--rate",
                "0",
            ],
        )
        assert result.exit_code == 0, result.output
    records = {r.source.url.rsplit("/", 1)[1]: r for r in ManifestStore(tmp_path).iter()}
    one, two = records["one.jpg"], records["two.jpg"]
    assert one.state == State.generated and one.group == "lemon-lime"
    assert (one.source.provider, one.source.licence, one.source.page_url) == (
        "openverse:flickr",
        "CC BY-SA 2.0",
        f"{base}/one",
    )
    assert one.source.query == "lemon lime" and "photographer 1" in one.source.attribution
    # the API was asked for allowed licences only; a result that still carries another one is refused
    assert two.state == State.rejected and two.rejection.reason == "licence"
