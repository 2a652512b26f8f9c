"""Prompt composition: deterministic, every concept once with its article, templates as data."""

from __future__ import annotations

import pytest

from generators.prompts import (
    PromptTemplateError,
    compose_prompt,
    indefinite_article,
    join_naturally,
    prompt_for_record,
)
from manifests import load_groups, plan_scenes
from manifests.scenes import scene_vocabulary


def test_articles_follow_the_sound_of_the_first_word():
    assert [
        indefinite_article(w)
        for w in ["alpaca", "lime", "orca", "hour glass", "unicorn", "suv", "European bison"]
    ] == ["an", "a", "an", "an", "a", "an", "a"]


def test_join_naturally():
    assert join_naturally(["a lemon"]) == "a lemon"
    assert join_naturally(["a lemon", "a lime"]) == "a lemon and a lime"
    assert join_naturally(["a rose", "a peony", "a camellia"]) == "a rose, a peony and a camellia"


def test_same_spec_same_prompt_and_every_concept_once():
    specs = plan_scenes(load_groups(), per_group=3, seed=7)
    for spec in specs:
        prompt = compose_prompt(spec.concepts, spec.template, spec.setting, spec.seed)
        assert prompt == compose_prompt(spec.concepts, spec.template, spec.setting, spec.seed)
        assert "{" not in prompt and "}" not in prompt
        assert spec.setting in prompt
        assert prompt[0].isupper()
        for concept in spec.concepts:
            assert prompt.count(f"{indefinite_article(concept)} {concept}") == 1, (concept, prompt)


def test_prompt_for_record_matches_the_scene_spec():
    spec = plan_scenes(load_groups()[:1], per_group=1)[0]
    record = spec.to_record()
    assert prompt_for_record(record) == compose_prompt(spec.concepts, spec.template, spec.setting, spec.seed)


def test_seeds_vary_order_viewpoint_and_arrangement():
    vocabulary = scene_vocabulary()
    template = vocabulary["templates"][0]
    prompts = {
        compose_prompt(
            ["siberian husky", "gray wolf", "alaskan malamute"], template, "on a snowy field", seed
        )
        for seed in range(40)
    }
    assert len(prompts) >= 10
    assert any(p.startswith("A photograph of a gray wolf") for p in prompts)
    assert any(p.startswith("A photograph of a siberian husky") for p in prompts)
    used_viewpoints = {v for v in vocabulary["viewpoints"] for p in prompts if v in p}
    assert len(used_viewpoints) >= 3


def test_viewpoint_cap_is_capitalised():
    prompt = compose_prompt(
        ["lemon", "lime"],
        "{viewpoint_cap} photo {setting}: {objects}.",
        "on a desk",
        3,
        vocabulary={"viewpoints": ["wide shot"], "arrangements": ["side by side"]},
    )
    assert prompt in (
        "Wide shot photo on a desk: a lemon and a lime.",
        "Wide shot photo on a desk: a lime and a lemon.",
    )


def test_unknown_placeholder_is_refused_with_the_fix():
    with pytest.raises(PromptTemplateError, match="lighting"):
        compose_prompt(["lemon", "lime"], "{objects} {lighting}", "on a desk", 0)
