"""Pins of ``manifests.record``: record ids are stable hashes (ids already stored in work dirs
must not change), URLs are canonicalised for http and https alike, and a stage's note and
params reach the record's history."""

from __future__ import annotations

import pytest

from manifests import Concept, GeneratedSource, Record, State
from manifests.record import canonical_url, generated_record_id, web_record_id


def test_record_ids_are_stable():
    """The id of a scene spec and of a web URL, as stored by earlier runs."""
    spec = ("lemon-lime", ["lemon", "lime"], "side-by-side", "kitchen", 7)
    assert generated_record_id(*spec) == "gen-2139b70e53fd2c8c"
    assert generated_record_id(*spec[:3], "garden", 7) != "gen-2139b70e53fd2c8c"  # the setting counts
    assert web_record_id("HTTPS://Images.Example.org:443/a/b.jpg?x=1#frag") == "web-289f08a94de6bd5a"


@pytest.mark.parametrize(
    ("url", "canonical"),
    [
        ("http://Example.org:80/a?q=1#f", "http://example.org/a?q=1"),
        ("HTTPS://example.org:443", "https://example.org/"),
        ("https://example.org:8443/x", "https://example.org:8443/x"),
    ],
)
def test_canonical_url_for_http_and_https(url, canonical):
    """Scheme and host lower-cased, default port and fragment dropped, empty path -> "/"."""
    assert canonical_url(url) == canonical


@pytest.mark.parametrize("url", ["ftp://example.org/a", "https:///no-host", "example.org/a"])
def test_canonical_url_refuses_non_http_urls(url):
    with pytest.raises(ValueError, match="not an http"):
        canonical_url(url)


def test_stage_note_and_params_reach_the_history():
    """``advance`` and ``log`` record the stage, its params and the note."""
    record = Record(
        id="gen-x", group="g", concepts=[Concept(name="a"), Concept(name="b")],
        source=GeneratedSource(template="t", setting="s", seed=1),
    )  # fmt: skip
    record.log("plan", "planned", params={"domain": "food"})
    record.advance(State.generated, "generate", {"model": "m"}, note="1 image")
    assert [(e.stage, e.params, e.note) for e in record.history] == [
        ("plan", {"domain": "food"}, "planned"),
        ("generate", {"model": "m"}, "1 image"),
    ]
    assert record.state == State.generated


def test_the_package_names_load_lazily_from_their_modules():
    """``manifests.<name>`` (PEP 562 ``__getattr__``) is the object of the module that defines it, cached
    in the package; an unknown name is an AttributeError that names it."""
    import manifests
    import manifests.scenes

    assert manifests.__getattr__("SceneSpec") is manifests.scenes.SceneSpec
    assert manifests.__dict__["SceneSpec"] is manifests.scenes.SceneSpec
    with pytest.raises(AttributeError, match="'NoSuchName'"):
        manifests.__getattr__("NoSuchName")
