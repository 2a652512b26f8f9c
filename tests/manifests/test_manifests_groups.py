import textwrap
from collections import Counter

import pytest

from manifests import GroupsFileError, ManifestStore, add_planned, load_groups, plan_scenes


def test_packaged_groups_cover_the_benchmark():
    groups = load_groups()
    assert len(groups) >= 60
    assert sum(len(g.concepts) == 3 for g in groups) >= 20
    domains = Counter(g.domain for g in groups)
    assert {"animals", "plants", "food", "objects", "vehicles", "instruments"} <= set(domains)
    for group in groups:
        for concept in group.concepts:
            assert 1 <= len(concept.split()) <= 4


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "- {id: a, domain: food, concepts: [lemon, lime]}\n- {id: a, domain: food, concepts: [x, y]}",
            "group id 'a' appears 2 times",
        ),
        (
            "- {id: citrus, domain: food, concepts: [lemon, Lemon]}",
            "group 'citrus' is invalid: .*appears twice",
        ),
        ("- {id: citrus, domain: food, concepts: [lemon, '']}", "group 'citrus' is invalid: .*empty"),
        ("- {id: lonely, domain: food, concepts: [lemon]}", "group 'lonely' is invalid: .*2 or 3"),
        ("- {id: crowd, domain: food, concepts: [a, b, c, d]}", "group 'crowd' is invalid: .*2 or 3"),
        (
            "- {id: wordy, domain: food, concepts: [a very long concept name here, b]}",
            "group 'wordy'.*1 to 4",
        ),
        ("- {id: '', domain: food, concepts: [a, b]}", "must not be empty"),
        (
            "- {id: p, domain: food, concepts: [a, b]}\n- {id: q, domain: food, concepts: [b, a]}",
            "group 'q' has the same concepts as group 'p'",
        ),
    ],
)
def test_invalid_groups_name_the_offending_group(tmp_path, body, message):
    path = tmp_path / "groups.yaml"
    path.write_text("groups:\n" + textwrap.indent(body, "  "))
    with pytest.raises(GroupsFileError, match=message):
        load_groups(path)


def test_not_yaml_or_wrong_shape(tmp_path):
    path = tmp_path / "groups.yaml"
    path.write_text("groups: [unclosed")
    with pytest.raises(GroupsFileError, match="not valid YAML"):
        load_groups(path)
    path.write_text("- just a list")
    with pytest.raises(GroupsFileError, match="top-level 'groups:'"):
        load_groups(path)


def test_plan_is_deterministic_and_idempotent(workdir):
    groups = load_groups()
    specs = plan_scenes(groups, per_group=3, seed=0)
    assert len(specs) == 3 * len(groups)
    first = specs[0]
    assert "{objects}" in first.template and first.setting
    # scenes of one group differ in setting or template
    group_specs = [s for s in specs if s.group == first.group]
    assert len({(s.template, s.setting) for s in group_specs}) == 3
    store = ManifestStore(workdir)
    assert add_planned(store, specs) == (len(specs), 0)
    assert add_planned(store, plan_scenes(groups, per_group=3, seed=0)) == (0, len(specs))
    assert store.counts().by_state == {"planned": len(specs)}


def test_invalid_groups_file_fails_before_writing(workdir, tmp_path):
    path = tmp_path / "groups.yaml"
    path.write_text(
        "groups:\n  - {id: ok, domain: food, concepts: [a, b]}\n  - {id: bad, domain: food, concepts: [c]}\n"
    )
    with pytest.raises(GroupsFileError, match="'bad'"):
        plan_scenes(path, per_group=2, seed=0)
    assert not (workdir / "records").exists()


def test_unknown_domain_is_explained(tmp_path):
    path = tmp_path / "groups.yaml"
    path.write_text("groups:\n  - {id: space, domain: astronomy, concepts: [comet, asteroid]}\n")
    with pytest.raises(ValueError, match="domain 'astronomy'.*no settings"):
        plan_scenes(load_groups(path), per_group=1)


def test_an_error_in_the_packaged_groups_file_names_it(monkeypatch):
    """Without a path the packaged file is read; its errors name ``manifests/groups.yaml``."""
    import types

    import manifests.groups as groups_module

    broken = types.SimpleNamespace(joinpath=lambda name: types.SimpleNamespace(read_text=lambda: "groups: 3"))
    monkeypatch.setattr(groups_module.resources, "files", lambda package: broken)
    with pytest.raises(groups_module.GroupsFileError, match=r"^manifests/groups\.yaml must hold a top-level"):
        load_groups()
