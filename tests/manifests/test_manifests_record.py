import pytest
from pydantic import ValidationError

from manifests import Concept, GeneratedSource, Record, WebSource, canonical_url, plan_scenes, web_record_id
from manifests.groups import load_groups


def test_record_needs_two_or_three_distinct_concepts():
    source = GeneratedSource(template="t", setting="s", seed=1)
    with pytest.raises(ValidationError, match="2 or 3 concepts"):
        Record(id="x", group="g", concepts=[Concept(name="a")], source=source)
    with pytest.raises(ValidationError, match="must differ"):
        Record(id="x", group="g", concepts=[Concept(name="a"), Concept(name="a")], source=source)


def test_source_is_discriminated_on_reload():
    record = Record(
        id="web-1",
        group="g",
        concepts=[Concept(name="a"), Concept(name="b")],
        source=WebSource(url="https://example.org/a.jpg", licence="cc-by"),
    )
    again = Record.model_validate_json(record.model_dump_json())
    assert isinstance(again.source, WebSource)
    assert again.source.licence == "cc-by"


def test_ids_are_deterministic_and_canonical():
    assert web_record_id("HTTPS://Example.org:443/a.jpg#frag") == web_record_id("https://example.org/a.jpg")
    assert web_record_id("https://example.org/a.jpg") != web_record_id("https://example.org/b.jpg")
    assert canonical_url("http://Host.COM:8080/x?q=1") == "http://host.com:8080/x?q=1"
    with pytest.raises(ValueError, match="http"):
        canonical_url("ftp://example.org/a.jpg")
    specs_a = plan_scenes(load_groups(), per_group=2, seed=5)
    specs_b = plan_scenes(load_groups(), per_group=2, seed=5)
    assert [s.record_id for s in specs_a] == [s.record_id for s in specs_b]
    assert len({s.record_id for s in specs_a}) == len(specs_a)
    assert [s.record_id for s in plan_scenes(load_groups(), per_group=2, seed=6)] != [
        s.record_id for s in specs_a
    ]


def test_concept_lookup_names_what_exists():
    record = Record(
        id="x",
        group="g",
        concepts=[Concept(name="lemon"), Concept(name="lime")],
        source=GeneratedSource(template="t", setting="s", seed=1),
    )
    assert record.concept("lime").name == "lime"
    with pytest.raises(KeyError, match="lemon"):
        record.concept("orange")
