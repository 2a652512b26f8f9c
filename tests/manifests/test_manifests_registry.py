"""Backend registries (``manifests.registry``): names, import paths, and errors that say what to do."""

from __future__ import annotations

import types

import pytest

from manifests.registry import GENERATORS, LOCALIZERS, SEGMENTERS, Registry, UnknownBackend


def make_stage(config, **context):
    return ("built", config.backend, context)


def test_a_registered_factory_builds_from_the_config_and_context():
    registry = Registry("thing", "things", {})
    registry.register("mine", make_stage)
    config = types.SimpleNamespace(backend="mine")
    assert registry.build(config, quality=1) == ("built", "mine", {"quality": 1})
    assert registry.names() == ["mine"]


def test_register_works_as_a_decorator_and_replaces():
    registry = Registry("thing", "things", {"mine": "nowhere:nothing"})

    @registry.register("mine")
    def factory(config):
        return "new"

    assert registry.factory("mine") is factory


def test_an_import_path_is_imported_on_first_use_and_kept():
    registry = Registry("thing", "things", {"lazy": f"{__name__}:make_stage"})
    assert registry.factory("lazy") is make_stage
    assert registry._factories["lazy"] is make_stage  # resolved once
    assert registry.factory(f"{__name__}:make_stage") is make_stage  # unregistered paths work too


def test_unknown_names_and_bad_paths_say_what_to_give():
    registry = Registry("box localiser", "localize", {"qwen2_5_vl": "x:y"})
    with pytest.raises(
        UnknownBackend, match=r"unknown box localiser backend 'florence' in `localize.backend`"
    ):
        registry.factory("florence")
    with pytest.raises(UnknownBackend, match=r"cannot import 'no_such_module:f'"):
        registry.factory("no_such_module:f")
    with pytest.raises(UnknownBackend, match="not callable"):
        registry.factory(f"{__name__}:__doc__")
    with pytest.raises(ValueError, match="plain name"):
        registry.register("a:b", make_stage)


def test_the_builtin_backends_resolve_to_their_factories():
    from annotators.localize import from_config as qwen
    from annotators.segment import from_config as sam2
    from generators.flux import from_config as flux

    assert GENERATORS.factory("flux") is flux
    assert LOCALIZERS.factory("qwen2_5_vl") is qwen
    assert SEGMENTERS.factory("sam2") is sam2
