"""Pins of ``manifests.scenes``: ``per_group`` = 1 is allowed (0 is not), and a planned record
carries the spec's concepts and a ``plan`` history entry naming the domain."""

from __future__ import annotations

import pytest

from manifests import State, load_groups, plan_scenes


def test_one_scene_per_group_is_allowed_zero_is_not():
    """per_group=1 plans exactly one 31-bit-seeded scene per group; per_group=0 raises."""
    groups = load_groups()
    specs = plan_scenes(groups, per_group=1, seed=0)
    assert [s.group for s in specs] == [g.id for g in groups]
    assert all(0 <= s.seed < 2**31 for s in specs)
    with pytest.raises(ValueError, match="per_group must be at least 1"):
        plan_scenes(groups, per_group=0)


def test_planned_record_has_the_concepts_and_a_plan_entry():
    """``to_record``: state planned, one Concept per spec concept, history ``plan`` with the domain."""
    spec = plan_scenes(load_groups(), per_group=1, seed=0)[0]
    record = spec.to_record()
    assert record.state == State.planned and record.concept_names == list(spec.concepts)
    (event,) = record.history
    assert event.stage == "plan" and event.params == {"domain": spec.domain}
