"""Hostile inputs, round 2: one test (or a few) per numbered case of the issue, each reproducing
the attack on a loopback server or a crafted file and asserting the documented outcome.

1. licences that lie; 2. stacked Content-Encoding; 3. fetch workers outliving a killed
scrape; 4. crafted record ids and image paths; 5. passwords in URLs; 6. metadata that
survives (PNG / WebP / progressive JPEG / trailing bytes); 7. 16-bit greyscale and ICC
profiles; 8. bad files and APIs (Latin-1 CSV, huge cells, corrupt Parquet, a duplicate
column, binary cells, page URLs, malformed profiles, unknown domains, Openverse sizes,
endless Wikimedia paging, 6to4 / NAT64 / Teredo, orphan temporary files).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from generators_testserver import Route, encode, icc_profile, pattern_image, serve
from PIL import Image, PngImagePlugin
from typer.testing import CliRunner

from flows.cli import app
from generators.download import DownloadConfig, address_blocked
from generators.sources import Candidate
from generators.web import (
    ScrapeConfig,
    ScrapeJob,
    WebScraper,
    find_candidates,
    plan_web_records,
    prepare_image,
)
from manifests import ManifestStore, State, load_groups
from manifests.record_index import RecordSummary
from manifests.stage import run_stage
from manifests.workdir import UnsafePathError, WorkDir

GROUPS = {g.id: g for g in load_groups()}
GROUP = "lemon-lime"
runner = CliRunner()


def _config(**scrape) -> ScrapeConfig:
    download = DownloadConfig(
        per_host_rate=0, retries=0, read_timeout=2.0, total_timeout=10.0, allowed_networks=("127.0.0.1/32",)
    )
    return ScrapeConfig(download=download, concurrency=4, processes=0, **scrape)


def _scrape(store: ManifestStore, candidates: list[Candidate], **scrape):
    records, _ = plan_web_records(candidates, GROUPS, store)
    return run_stage(WebScraper(_config(**scrape)), store, records).records


def _no_temporary_files(workdir: Path) -> list[Path]:
    return [p for p in workdir.rglob("*.tmp")]


# -- 1. licences that lie ---------------------------------------------------------------
LYING_LICENCES = [
    "CC BY Non Commercial 4.0",
    "Creative Commons Attribution Non Commercial 4.0 International",
    "CC BY No Derivatives 4.0",
    "CC BY 4.0 (non commercial use only)",
    "https://creativecommons.org/licenses/by/4.0/ (NonCommercial use only)",
    "CC BY 2.0 (not for commercial use)",
]


def test_noncommercial_and_noderivatives_images_are_refused_before_any_request(tmp_path):
    jpeg = encode(pattern_image(1), "JPEG")
    routes = {f"/{n}.jpg": Route(jpeg) for n in range(len(LYING_LICENCES))} | {"/sa.jpg": Route(jpeg)}
    with serve(routes) as server:
        store = ManifestStore(tmp_path)
        candidates = [
            Candidate(server.url(f"/{n}.jpg"), GROUP, text) for n, text in enumerate(LYING_LICENCES)
        ]
        refused = _scrape(store, candidates)
        kept = _scrape(store, [Candidate(server.url("/sa.jpg"), GROUP, "CC BY Share Alike 4.0")])
        log = list(server.log)
    assert [(r.state, r.rejection.reason) for r in refused] == [(State.rejected, "licence")] * len(
        LYING_LICENCES
    )
    assert all("is not on the allow-list" in r.rejection.detail for r in refused)
    assert [p for p in log if p != "/robots.txt"] == ["/sa.jpg"]  # refused ones were never requested
    (share_alike,) = kept
    assert share_alike.state == State.generated and share_alike.source.licence == "CC BY-SA 4.0"


# -- 2. stacked Content-Encoding ----------------------------------------------------------
def test_a_compressed_body_is_refused_undecoded_and_identity_is_asked_for(tmp_path):
    bomb = gzip.compress(gzip.compress(b"\0" * 400_000_000, 9), 9)  # ~400 MB once decoded twice
    assert len(bomb) < 5_000
    plain = encode(pattern_image(2), "JPEG")
    routes = {
        "/bomb.jpg": Route(bomb, headers={"Content-Encoding": "gzip, gzip"}),
        "/deflate.jpg": Route(plain, headers={"Content-Encoding": "deflate"}),
        "/identity.jpg": Route(plain, headers={"Content-Encoding": "identity"}),
    }
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    with serve(routes) as server:
        store = ManifestStore(tmp_path)
        records = _scrape(store, [Candidate(server.url(p), GROUP, "CC0") for p in routes])
        headers = list(server.headers)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    bomb_record, deflate, identity = records
    assert (bomb_record.rejection.reason, deflate.rejection.reason) == (
        "content_encoding",
        "content_encoding",
    )
    assert "gzip, gzip refused" in bomb_record.rejection.detail
    assert identity.state == State.generated
    assert all(h.get("accept-encoding") == "identity" for h in headers)
    assert grown_mb < 150  # nothing was inflated (decoding would need ~400 MB)


# -- 3. fetch workers die with the scrape -------------------------------------------------
def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie has exited; only its parent's bookkeeping remains


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc")
@pytest.mark.parametrize("kill_signal", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_killing_the_scrape_leaves_no_worker_and_a_rerun_loses_nothing(tmp_path, kill_signal):
    images = 40
    routes = {f"/{n}.jpg": Route(encode(pattern_image(300 + n), "JPEG"), delay=0.25) for n in range(images)}
    with serve(routes) as server:
        urls = tmp_path / "urls.csv"
        urls.write_text("url,group,licence\n" + "".join(f"{server.url(p)},{GROUP},CC0\n" for p in routes))
        workdir = tmp_path / "work"
        command = [sys.executable, "-m", "flows.cli", "scrape", "--workdir", str(workdir), "--urls", str(urls),
                   "--allow-private-networks", "--rate", "0", "--concurrency", "4", "--set", "scrape.processes=2"]  # fmt: skip
        parent = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while sum(p.endswith(".jpg") for p in server.log) < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
        workers = _children(parent.pid)
        assert len(workers) >= 2, "the scrape did not start its fetch processes"
        parent.send_signal(kill_signal)
        parent.wait(timeout=10)
        killed_at = time.monotonic()
        while any(_alive(pid) for pid in workers) and time.monotonic() - killed_at < 10:
            time.sleep(0.1)
        survivors = [pid for pid in workers if _alive(pid)]
        for pid in survivors:  # do not leak them into the rest of the test run
            os.kill(pid, signal.SIGKILL)
        assert survivors == [], f"workers {survivors} outlived their parent by 10 s"
        fetched_when_dead = len(server.log)
        time.sleep(1.0)
        assert len(server.log) == fetched_when_dead  # nobody fetches any more
        killed = ManifestStore(workdir)  # what the killed run committed is whole
        stored = [r for r in killed.iter() if r.image is not None]
        assert stored, "the scrape was killed before it committed any image"
        for record in stored:  # a stored record's image is there, byte for byte
            assert hashlib.sha256(killed.read_bytes(record.image.path)).hexdigest() == record.image.sha256
        assert killed.summaries() == {r.id: RecordSummary.of(r) for r in killed.iter()}

        rerun = subprocess.run(command[:-2] + ["--set", "scrape.processes=0"], capture_output=True, text=True)
        assert rerun.returncode == 0, rerun.stderr
    store = ManifestStore(workdir)
    records = list(store.iter())
    assert len(records) == images and len({r.source.url for r in records}) == images
    assert all(r.state == State.generated for r in records), [r.rejection for r in records if r.rejection]
    assert sorted(p.name for p in (workdir / "images").iterdir()) == sorted(f"{r.id}.jpg" for r in records)
    assert _no_temporary_files(workdir) == []


# -- 4. crafted record ids and paths ---------------------------------------------------------
def test_a_crafted_record_id_or_image_path_never_reaches_the_file_system(tmp_path):
    with serve({"/a.jpg": Route(encode(pattern_image(4), "JPEG"))}) as server:
        workdir = tmp_path / "work"
        store = ManifestStore(workdir)
        good, _ = plan_web_records([Candidate(server.url("/a.jpg"), GROUP, "CC0")], GROUPS, store)
        store.put(good[0])
        crafted = json.loads(good[0].model_dump_json())
        crafted["id"] = "../../outside/x"
        (workdir / "records" / "evil.json").write_text(json.dumps(crafted))
        named = dict(crafted, id="web-named-right")
        (workdir / "records" / "web..x.json").write_text(json.dumps(named))  # a name that is no id
        (workdir / "records" / "web-other.json").write_text(json.dumps(named))  # a name that is another id
        pointing = json.loads(good[0].model_dump_json())
        pointing["image"] = {"path": "../../outside/secret.png", "sha256": "0" * 64, "width": 1, "height": 1}
        pointing["id"] = "web-points-outside"
        (workdir / "records" / "web-points-outside.json").write_text(json.dumps(pointing))
        run = run_stage(WebScraper(_config()), store)
    assert [r.id for r in run.records] == [good[0].id] and run.records[0].state == State.generated
    assert not (tmp_path / "outside").exists()
    problems = {Path(e.path).name: e.problem for e in store.counts().unreadable}
    assert set(problems) == {"evil.json", "web..x.json", "web-other.json", "web-points-outside.json"}
    assert "invalid record id" in problems["evil.json"] and "invalid record id" in problems["web..x.json"]
    assert "holds record id 'web-named-right'" in problems["web-other.json"]
    assert "is not inside the work dir" in problems["web-points-outside.json"]
    status = runner.invoke(app, ["status", "--workdir", str(workdir)])
    assert status.exit_code == 0 and "evil.json" in status.output
    for bad in ("../x", "a/b", ".hidden", "x..y", "", "a" * 129):
        with pytest.raises(UnsafePathError):
            WorkDir.image(bad)
    with pytest.raises(UnsafePathError):
        store.path("images/../../etc/passwd")
    with pytest.raises(UnsafePathError):
        WorkDir.image("web-1", "jpg/../../x")


# -- 5. passwords in URLs ---------------------------------------------------------------------
def test_userinfo_is_never_sent_stored_or_published(tmp_path):
    from manifests.publish.build import build_dataset

    jpeg = encode(pattern_image(5), "JPEG")
    with serve({"/a.jpg": Route(jpeg), "/b.jpg": Route(jpeg)}) as server:
        port = server.base.rsplit(":", 1)[1]
        routes_redirect = f"http://mallory:hunter2@127.0.0.1:{port}/a.jpg"
        server.routes["/r.jpg"] = Route(b"", status=302, headers={"Location": routes_redirect})
        urls = tmp_path / "urls.csv"
        urls.write_text(
            "url,group,licence,page_url\n"
            f"http://alice:s3cret@127.0.0.1:{port}/r.jpg,{GROUP},CC0,https://bob:pa55@example.org/page\n"
        )
        workdir = tmp_path / "work"
        result = runner.invoke(app, ["scrape", "--workdir", str(workdir), "--urls", str(urls),
                                     "--allow-private-networks", "--rate", "0"])  # fmt: skip
        assert result.exit_code == 0, result.output
        headers = list(server.headers)
    store = ManifestStore(workdir)
    (record,) = store.iter()
    assert record.state == State.generated
    assert record.source.url == f"http://127.0.0.1:{port}/r.jpg"
    assert record.source.page_url == "https://example.org/page"
    assert record.history[-1].params["final_url"] == f"http://127.0.0.1:{port}/a.jpg"
    assert not any("authorization" in h for h in headers)  # neither the list's nor the redirect's password
    on_disk = b"".join(p.read_bytes() for p in workdir.rglob("*") if p.is_file())
    assert not any(secret in on_disk for secret in (b"s3cret", b"hunter2", b"pa55", b"alice", b"mallory"))

    # A record written before this check (userinfo in its JSON) is published without it.
    raw = json.loads((workdir / "records" / f"{record.id}.json").read_text())
    raw["source"]["url"] = "https://carol:topsecret@images.example.org/x.jpg"
    raw["state"] = "reviewed"
    for concept in raw["concepts"]:
        concept["mask"] = {"size": [520, 640], "counts": "0"}  # replaced just below
    (workdir / "records" / f"{record.id}.json").write_text(json.dumps(raw))
    old = store.get(record.id)
    assert old.source.url == "https://images.example.org/x.jpg"
    from manifests import encode_mask

    for k, concept in enumerate(old.concepts):
        mask = np.zeros((old.image.height, old.image.width), bool)
        mask[10:200, 10 + 300 * k : 250 + 300 * k] = True
        concept.mask = encode_mask(mask)
        concept.boxes = [(10.0 + 300 * k, 10.0, 250.0 + 300 * k, 200.0)]
        concept.review = "accepted"
    store.put(old)
    (workdir / "records" / f"{record.id}.json").write_text(
        (workdir / "records" / f"{record.id}.json")
        .read_text()
        .replace("images.example.org", "carol:topsecret@images.example.org")
    )
    build_dataset(store, tmp_path / "dataset")
    published = b"".join(p.read_bytes() for p in (tmp_path / "dataset").rglob("*") if p.is_file())
    assert b"images.example.org" in published and b"topsecret" not in published


# -- 6. metadata that survives --------------------------------------------------------------
def _exif() -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "SecretCam"
    exif[0x8825] = {2: (48.0, 51.0, 24.0)}
    return exif.tobytes()


def _progressive_jpeg_with_exif_between_scans(picture: Image.Image) -> bytes:
    jpeg = encode(picture, "JPEG", quality=90, progressive=True)
    first = jpeg.find(b"\xff\xda")
    second = jpeg.find(b"\xff\xda", first + 2)
    payload = b"Exif\0\0SecretCam GPS 48.85"
    app1 = b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload
    return jpeg[:second] + app1 + jpeg[second:] + b"<html>polyglot</html>PK\x03\x04zip"


SECRETS = (b"SecretCam", b"48.85", b"SecretXMP", b"GPSInfo", b"<html", b"PK\x03\x04")


def test_every_kept_format_loses_its_metadata_and_trailing_bytes_not_its_pixels(tmp_path):
    pictures = [pattern_image(seed) for seed in (60, 61, 62)]  # different, or all but one are duplicates
    info = PngImagePlugin.PngInfo()
    info.add_text("GPSInfo", "48.85,2.35")
    info.add_itxt("XML:com.adobe.xmp", "<x:xmpmeta>SecretXMP</x:xmpmeta>")
    png = encode(pictures[0], "PNG", pnginfo=info, exif=_exif()) + b"PK\x03\x04trailing zip"
    webp = encode(pictures[1], "WEBP", lossless=True, exif=_exif(), xmp=b"<x:xmpmeta>SecretXMP</x:xmpmeta>")
    webp += b"<html>after the RIFF</html>"
    jpeg = _progressive_jpeg_with_exif_between_scans(pictures[2])
    files = {"/a.png": png, "/b.webp": webp, "/c.jpg": jpeg}
    for data in files.values():
        assert any(secret in data for secret in SECRETS)
    with serve({p: Route(d, content_type=None) for p, d in files.items()}) as server:
        store = ManifestStore(tmp_path)
        records = _scrape(store, [Candidate(server.url(p), GROUP, "CC0") for p in files])
    for record, (path, data) in zip(records, files.items(), strict=True):
        assert record.state == State.generated, record.rejection
        stored = store.read_bytes(record.image.path)
        assert record.image.path.endswith(
            path.rsplit(".", 1)[1].replace("jpeg", "jpg")
        )  # kept, not re-encoded
        assert [s for s in SECRETS if s in stored] == [], path
        original = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(stored)).convert("RGB")), original), path
    png_stored, webp_stored, jpeg_stored = (store.read_bytes(r.image.path) for r in records)
    assert png_stored.endswith(b"IEND\xaeB`\x82")
    assert int.from_bytes(webp_stored[4:8], "little") + 8 == len(webp_stored)
    assert webp_stored[12:16] == b"VP8X" and webp_stored[20] & 0x0C == 0  # no EXIF / XMP flag left
    assert jpeg_stored.endswith(b"\xff\xd9") and jpeg_stored.count(b"\xff\xe1") == 0


# -- 7. 16-bit greyscale and ICC profiles --------------------------------------------------
def test_16_bit_greyscale_is_scaled_not_clipped():
    ramp = np.tile(np.linspace(0, 65535, 640).astype(np.uint16), (520, 1))
    png = encode(Image.fromarray(ramp), "PNG")
    assert Image.open(io.BytesIO(png)).mode == "I;16"
    prepared = prepare_image(png, min_side=512, max_pixels=10**8, keep_original=True)
    stored = np.asarray(Image.open(io.BytesIO(prepared.stored)))
    assert stored.shape == (520, 640, 3) and prepared.extension == "png"
    expected = np.round(ramp / 257).astype(int)
    assert np.abs(stored[..., 0].astype(int) - expected).max() <= 1
    assert 120 < stored.mean() < 135  # a clipped ramp would be ~254


def test_icc_profiles_are_converted_to_srgb_and_never_embedded_wrongly():
    gray_profile = icc_profile("GRAY", "Linear Gray", gamma=1.0)
    ramp = Image.fromarray(np.tile(np.linspace(0, 255, 640).astype(np.uint8), (520, 1)))
    gray = prepare_image(encode(ramp, "PNG", icc_profile=gray_profile), 512, 10**8, keep_original=True)
    gray_image = Image.open(io.BytesIO(gray.stored))
    assert gray_image.mode == "RGB" and "icc_profile" not in gray_image.info
    assert gray.colour_profile == "Linear Gray"
    middle = np.asarray(gray_image)[0, 320, 0]
    assert 170 <= middle <= 195  # linear 0.5 is sRGB ~188: converted, not copied (128)

    cmyk = Image.new("CMYK", (600, 600), (0, 255, 255, 0))  # red in CMYK
    mislabelled = prepare_image(
        encode(cmyk, "JPEG", icc_profile=gray_profile), 512, 10**8, keep_original=True
    )
    image = Image.open(io.BytesIO(mislabelled.stored))
    assert image.mode == "RGB" and "icc_profile" not in image.info and mislabelled.extension == "png"
    red = np.asarray(image)[300, 300]
    assert red[0] > 200 and red[1] < 60 and red[2] < 60

    wide = icc_profile("RGB ", "Wide Test RGB", gamma=2.2,
                       primaries=((0.2, 0.1, 0.0), (0.5, 0.8, 0.1), (0.27, 0.1, 0.7)))  # fmt: skip
    picture = pattern_image(7, (600, 600))
    photo = encode(picture, "JPEG", quality=95, icc_profile=wide)
    converted = prepare_image(photo, 512, 10**8, keep_original=True)
    assert converted.extension == "png" and converted.colour_profile == "Wide Test RGB"
    stored = Image.open(io.BytesIO(converted.stored))
    assert "icc_profile" not in stored.info
    raw = np.asarray(Image.open(io.BytesIO(photo)).convert("RGB")).astype(int)
    assert np.abs(np.asarray(stored).astype(int) - raw).mean() > 5  # the colours were transformed

    srgb = prepare_image(encode(picture, "JPEG", quality=95), 512, 10**8, keep_original=True)
    assert srgb.extension == "jpg" and srgb.colour_profile is None  # plain sRGB photos are still kept


# -- 8. bad files, APIs and addresses -------------------------------------------------------
def _said(result) -> str:
    """The command's output with rich's line wrapping undone."""
    return " ".join(result.output.split())


def _scrape_cli(workdir: Path, *args: str):
    return runner.invoke(app, ["scrape", "--workdir", str(workdir), "--allow-private-networks", *args])


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("latin1.csv", "url,group,licence\nhttp://127.0.0.1/é.jpg,lemon-lime,CC0\n".encode("latin-1"), "not UTF-8"),
        ("huge.csv", ("url,group,attribution\nhttp://127.0.0.1/a.jpg,lemon-lime,\"" + "x" * 140_000 + "\"\n").encode(),
         "field larger than field limit"),
        ("corrupt.parquet", b"PAR1" + b"\x00garbage" * 50 + b"PAR1", "not a readable Parquet file"),
        ("twice.csv", b"url,group,licence,license\nhttp://127.0.0.1/a.jpg,lemon-lime,CC0,CC0\n", "more than once"),
        ("twice.jsonl", b'{"url": "http://127.0.0.1/a.jpg", "URL": "http://127.0.0.1/b.jpg", "group": "lemon-lime"}\n',
         "more than once"),
    ],
)  # fmt: skip
def test_bad_url_lists_are_clear_errors_and_write_nothing(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    result = _scrape_cli(tmp_path / "work", "--urls", str(path))
    assert result.exit_code == 2, result.output
    assert message in _said(result) and "Traceback" not in result.output
    assert not (tmp_path / "work" / "records").exists()


def test_parquet_binary_cells_and_page_urls(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from generators.sources import UrlListError, read_url_list

    table = pa.table({
        "url": ["http://127.0.0.1/a.jpg", "http://127.0.0.1/b.jpg", "http://127.0.0.1/c.jpg"],
        "group": [GROUP] * 3,
        "attribution": [b"Jos\xc3\xa9 (UTF-8 bytes)", b"plain", None],
        "page_url": ["https://example.org/a", "javascript:alert(1)", "file:///etc/passwd"],
    })  # fmt: skip
    pq.write_table(table, tmp_path / "urls.parquet")
    read = read_url_list(tmp_path / "urls.parquet", set(GROUPS))
    assert [c.attribution for c in read.candidates] == ["José (UTF-8 bytes)"]
    assert [line for line, _ in read.skipped] == [2, 3]
    assert all("page_url" in why and "http" in why for _, why in read.skipped)
    pq.write_table(
        pa.table({"url": ["http://127.0.0.1/a.jpg"], "group": [GROUP], "attribution": [b"\xff\xfe"]}),
        tmp_path / "binary.parquet",
    )
    with pytest.raises(UrlListError, match="binary cell that is not UTF-8"):
        read_url_list(tmp_path / "binary.parquet", set(GROUPS))


def test_malformed_profile_and_unknown_domain_are_clear_errors(tmp_path):
    profile = tmp_path / "bad.yaml"
    profile.write_text("workdir: [unclosed\n  plan: {\n")
    result = runner.invoke(app, ["plan", "--workdir", str(tmp_path / "work"), "--profile", str(profile)])
    assert result.exit_code == 2 and "is not valid YAML at line 2, column 7" in _said(result), result.output
    groups = tmp_path / "groups.yaml"
    groups.write_text("groups:\n  - id: alpha-beta\n    domain: spaceships\n    concepts: [alpha, beta]\n")
    result = runner.invoke(app, ["plan", "--workdir", str(tmp_path / "work"), "--groups", str(groups)])
    assert (
        result.exit_code == 2 and "domain 'spaceships'" in _said(result) and "Traceback" not in result.output
    )
    assert not (tmp_path / "work").exists()
    bad_set = runner.invoke(app, ["plan", "--workdir", str(tmp_path / "work"), "--set", "plan.seed=[1"])
    assert bad_set.exit_code == 2 and "not valid YAML" in _said(bad_set)


def test_openverse_results_with_malformed_sizes_are_skipped(tmp_path):
    answer = {
        "page_count": "many",
        "results": [
            {"url": "https://img.example.org/big.jpg", "width": "big", "height": 600, "license": "by"},
            {"url": "https://img.example.org/ok.jpg", "width": 800, "height": 600, "license": "by",
             "license_version": "4.0"},
            "not an object",
        ],
    }  # fmt: skip
    with serve(
        {"/v1/images/": Route(json.dumps(answer).encode(), content_type="application/json")}
    ) as server:
        job = ScrapeJob(source="openverse", api_url=server.base, groups=[GROUP], per_group=5, api_rate=0)
        candidates, _ = find_candidates(job, GROUPS)
    assert [c.url for c in candidates] == ["https://img.example.org/ok.jpg"]


@pytest.mark.timeout(60)  # without the cap the loop never ends: fail, do not hang
def test_wikimedia_paging_is_capped_and_paced(tmp_path):
    def endless(path: str) -> bytes:  # every page: no usable file, and one more page to come
        page = {
            "title": "File:x.svg",
            "index": 1,
            "imageinfo": [{"url": "https://x.org/x.svg", "mime": "image/svg+xml"}],
        }
        return json.dumps(
            {"query": {"pages": [page]}, "continue": {"gsroffset": len(path), "continue": "-||"}}
        ).encode()

    with serve({"/w/api.php": Route(dynamic=endless, content_type="application/json")}) as server:
        job = ScrapeJob(source="wikimedia", api_url=server.url("/w/api.php"), groups=[GROUP], per_group=5,
                        api_rate=10, api_max_pages=6, contact="test@example.org")  # fmt: skip
        started = time.monotonic()
        candidates, _ = find_candidates(job, GROUPS)
        seconds = time.monotonic() - started
        requests = len(server.log)
    assert candidates == [] and requests == 6
    assert seconds >= 0.45  # six requests at most 10/s: five intervals of 0.1 s


@pytest.mark.parametrize(
    ("address", "blocked"),
    [
        ("2002:7f00:1::1", True),  # 6to4 of 127.0.0.1
        ("2002:c0a8:101::1", True),  # 6to4 of 192.168.1.1
        ("2002:a9fe:a9fe::1", True),  # 6to4 of 169.254.169.254 (cloud metadata)
        ("2002:808:808::1", False),  # 6to4 of 8.8.8.8
        ("64:ff9b::7f00:1", True),  # NAT64 of 127.0.0.1
        ("64:ff9b::a00:1", True),  # NAT64 of 10.0.0.1
        ("64:ff9b::808:808", False),  # NAT64 of 8.8.8.8
        ("2001:0:4136:e378:8000:63bf:80ff:fffe", True),  # Teredo, client 127.0.0.1 (obfuscated)
        ("::ffff:10.0.0.1", True),
        ("2606:4700:4700::1111", False),
    ],
)
def test_ipv6_addresses_embedding_private_ipv4_are_refused(address, blocked):
    assert address_blocked(address) is blocked


def test_orphan_temporary_files_are_swept_and_live_writes_kept(tmp_path):
    from manifests.store import _writer_tag

    store = ManifestStore(tmp_path)
    store.write_bytes("records/keep.txt", b"x")
    records = tmp_path / "records"
    host = _writer_tag().rsplit("_", 1)[0]
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = records / f".web-1.json.{host}_{dead.pid}.deadbeef.tmp"
    live = records / f".web-2.json.{_writer_tag()}.cafecafe.tmp"
    foreign = records / ".web-3.json.otherhost_1.abcdabcd.tmp"
    old_foreign = records / ".web-4.json.otherhost_1.01234567.tmp"
    for path in (orphan, live, foreign, old_foreign):
        path.write_bytes(b"half a record")
    os.utime(old_foreign, (time.time() - 7200, time.time() - 7200))
    run_stage(WebScraper(_config()), store)  # every stage run sweeps first
    assert sorted(p.name for p in records.iterdir()) == sorted(["keep.txt", live.name, foreign.name])
