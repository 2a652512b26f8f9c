"""Semantics of record ids: a generated record's id is a hash of everything that makes its
image (the scene spec, seed included), a web record's id a hash of its canonical URL.

Two different images with one id would be one record: the second is never generated
(``add_planned`` skips an id already stored) or overwrites the first. So every identity
field of ``SceneSpec`` is changed in turn, found programmatically, and must change the id.
"""

from __future__ import annotations

import dataclasses

import pytest

from manifests import (
    ManifestStore,
    SceneSpec,
    add_planned,
    canonical_url,
    load_groups,
    plan_scenes,
    web_record_id,
)
from manifests.record import generated_record_id
from manifests.scenes import scene_vocabulary

BASE = SceneSpec(
    group="dogs",
    domain="animals",
    concepts=("siberian husky", "gray wolf"),
    template="A photograph of {objects} {setting}.",
    setting="on a snowy field",
    seed=1234,
)

DERIVED_FIELDS = {
    "domain": "a function of the group (one domain per group id); used to pick settings when planning, "
    "it is not stored on the record and does not enter the prompt, so it is not part of the image's identity",
}
"""Fields of ``SceneSpec`` deliberately left out of the id, with the reason. A new field must
either change the id (the tests below see it) or be listed here."""


def other_values(value):
    """Values different from ``value`` of the same type (two for a tuple: another and reordered)."""
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int):
        return [value + 1, 0 if value else 1]
    if isinstance(value, str):
        return [value + " x", "other"]
    if isinstance(value, tuple):
        return [(*value[:-1], "alaskan malamute"), tuple(reversed(value)), (*value, "alaskan malamute")]
    raise TypeError(f"no test value for a {type(value).__name__}: extend other_values")


IDENTITY_FIELDS = [f.name for f in dataclasses.fields(SceneSpec) if f.name not in DERIVED_FIELDS]


def test_the_spec_fields_are_all_accounted_for():
    """Pins: the fields left out of the id are exactly the documented derived ones, and the
    identity fields include the seed (a spec field added later is tested automatically)."""
    names = {f.name for f in dataclasses.fields(SceneSpec)}
    assert set(DERIVED_FIELDS) <= names
    assert {"group", "concepts", "template", "setting", "seed"} <= set(IDENTITY_FIELDS)


@pytest.mark.parametrize("name", IDENTITY_FIELDS)
def test_every_identity_field_changes_the_id(name):
    """Pins: changing any one identity field of the spec (each value, found by type) gives a
    different record id, on the spec and on the record it plans."""
    for value in other_values(getattr(BASE, name)):
        changed = dataclasses.replace(BASE, **{name: value})
        assert changed.record_id != BASE.record_id, f"{name}={value!r} keeps the id"
        assert changed.to_record().id == changed.record_id


def test_two_specs_differing_only_in_seed_do_not_collide():
    """Pins: the seed is part of the id (distinct seeds over a range never collide)."""
    ids = {dataclasses.replace(BASE, seed=seed).record_id for seed in range(50)}
    assert len(ids) == 50
    assert dataclasses.replace(BASE, seed=2**31 - 1).record_id != dataclasses.replace(BASE, seed=0).record_id


def test_derived_fields_are_recoverable_and_the_id_is_recomputable_from_the_record():
    """Pins: the id is a function of what the planned record stores (group, concepts,
    template, setting, seed), and the derived domain is the group's own domain in the plan."""
    record = BASE.to_record()
    source = record.source
    assert record.id == generated_record_id(
        record.group, record.concept_names, source.template, source.setting, source.seed
    )
    assert dataclasses.replace(BASE, domain="plants").record_id == BASE.record_id
    domains = {g.id: g.domain for g in load_groups()}
    for spec in plan_scenes(load_groups(), per_group=2, seed=3):
        assert spec.domain == domains[spec.group]


def test_text_moved_between_fields_changes_the_id():
    """Pins: fields are hashed as separate values, so moving text from one to the next
    (no separator ambiguity) changes the id."""
    a = dataclasses.replace(BASE, template="in the ", setting="snow")
    b = dataclasses.replace(BASE, template="in the snow", setting="")
    assert a.record_id != b.record_id
    c = dataclasses.replace(BASE, concepts=("siberian husky gray", "wolf"))
    assert c.record_id != BASE.record_id


def test_planning_many_scenes_gives_distinct_ids_and_stores_all(workdir):
    """Pins: with more scenes per group than (template, setting) pairs, pairs repeat and only
    the seed tells the specs apart: every id is still distinct and every spec is stored."""
    vocabulary = scene_vocabulary()
    groups = load_groups()[:3]
    pairs = max(len(vocabulary["templates"]) * len(vocabulary["settings"][g.domain]) for g in groups)
    specs = plan_scenes(groups, per_group=pairs + 5, seed=0)
    combos = [(s.group, s.template, s.setting) for s in specs]
    assert len(set(combos)) < len(combos)  # the seed alone separates some specs
    assert len({s.record_id for s in specs}) == len(specs)
    assert add_planned(ManifestStore(workdir), specs) == (len(specs), 0)


# -- web ids ------------------------------------------------------------------------------------
SAME_IMAGE = [
    "https://example.org/img/a.jpg?size=l",
    "HTTPS://EXAMPLE.ORG/img/a.jpg?size=l",
    "https://Example.org:443/img/a.jpg?size=l",
    "https://example.org/img/a.jpg?size=l#top",
    "  https://example.org/img/a.jpg?size=l  ",
]
OTHER_IMAGES = [
    "http://example.org/img/a.jpg?size=l",  # scheme
    "https://example.com/img/a.jpg?size=l",  # host
    "https://example.org:8443/img/a.jpg?size=l",  # non-default port
    "https://example.org/img/b.jpg?size=l",  # path
    "https://example.org/img/A.jpg?size=l",  # path case (paths are case-sensitive)
    "https://example.org/img/a.jpg?size=s",  # query value
    "https://example.org/img/a.jpg",  # no query
]


def test_web_ids_depend_on_the_canonical_url_only():
    """Pins: URLs with one canonical form share one id (the id hashes the canonical URL, not
    the raw text); every canonical part (scheme, host, port, path, query) changes it."""
    canonical = canonical_url(SAME_IMAGE[0])
    assert {canonical_url(u) for u in SAME_IMAGE} == {canonical}
    assert {web_record_id(u) for u in SAME_IMAGE} == {web_record_id(canonical)}
    ids = [web_record_id(u) for u in OTHER_IMAGES]
    assert web_record_id(canonical) not in ids
    assert len(set(ids)) == len(ids)
    assert all(i.startswith("web-") for i in ids) and BASE.record_id.startswith("gen-")
    for url in [*SAME_IMAGE, *OTHER_IMAGES]:
        assert web_record_id(canonical_url(url)) == web_record_id(url)  # canonicalising is idempotent


def test_the_package_loads_its_names_lazily_and_refuses_unknown_ones():
    import manifests

    assert manifests.ManifestStore.__name__ == "ManifestStore" and "ManifestStore" in dir(manifests)
    with pytest.raises(AttributeError, match="module 'manifests' has no attribute 'NoSuchThing'"):
        manifests.NoSuchThing  # noqa: B018


def test_splits_do_not_depend_on_the_order_records_come_in():
    """Ties of the largest remainder go to strata in sorted order, not in the order of arrival: the
    same records listed in another order get the same splits (a rebuild from another store listing)."""
    from manifests.splits import assign_splits

    ids = [f"rec-{i}" for i in range(6)]
    strata = ["b", "b", "b", "a", "a", "a"]  # 20% of 6 = 1 validation image: a tie of remainders 0.6
    first = assign_splits(ids, strata, fraction=0.2)
    second = assign_splits(ids[::-1], strata[::-1], fraction=0.2)
    assert first == second and sum(v == "validation" for v in first.values()) == 1
    (chosen,) = [i for i, v in first.items() if v == "validation"]
    assert strata[ids.index(chosen)] == "a"  # the sorted-first stratum takes the tie


def test_the_tiny_byte_table_and_bpe_are_gpt2s():
    """The tiny Qwen tokenizer's byte table is GPT-2's ``bytes_to_unicode`` (all 256 bytes, the last
    printable one included); BPE merges the lowest-ranked pair first and stops when no pair is ranked."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    from manifests.tiny import _bpe, _bytes_to_unicode

    assert _bytes_to_unicode() == bytes_to_unicode() and _bytes_to_unicode()[ord("ÿ")] == "ÿ"
    ranks = {("b", "c"): 0, ("a", "bc"): 1, ("a", "b"): 2}
    assert _bpe(list("abc"), ranks) == ["abc"]  # b+c first (rank 0), then a+bc
    assert _bpe(list("abd"), ranks) == ["ab", "d"]
    assert _bpe(list("xyz"), ranks) == ["x", "y", "z"] and _bpe(["q"], ranks) == ["q"]
