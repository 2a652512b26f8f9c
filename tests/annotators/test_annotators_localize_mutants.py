"""Pins of ``QwenLocalizer``: ``_load`` passes the asked revision to every from_pretrained
(config, processor and weights: the record's history names that revision), and ``verify``
refuses concepts and ``others`` of different lengths instead of silently truncating."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from PIL import Image

import annotators.localize as localize
from annotators.localize import Generation, QwenLocalizer


class Loader:
    """Stands in for a transformers Auto* class; records from_pretrained's arguments."""

    def __init__(self, calls, name, result):
        self.calls, self.name, self.result = calls, name, result

    def from_pretrained(self, *args, **kwargs):
        self.calls.append((self.name, args, kwargs))
        return self.result


def test_load_passes_revision_and_dtype_to_config_processor_and_weights(monkeypatch):
    """Every from_pretrained of ``_load`` gets revision=...; the weights also get dtype=..."""
    calls: list = []
    config = SimpleNamespace(model_type="qwen2_5_vl")
    monkeypatch.setattr(localize, "AutoConfig", Loader(calls, "config", config))
    monkeypatch.setattr(localize, "AutoProcessor", Loader(calls, "processor", "P"))
    monkeypatch.setattr(localize, "Qwen2_5_VLForConditionalGeneration", Loader(calls, "network", "N"))
    assert QwenLocalizer._load("org/qwen", "abc123", torch.float16) == ("N", "P")
    assert calls == [
        ("config", ("org/qwen",), {"revision": "abc123"}),
        ("processor", ("org/qwen",), {"revision": "abc123"}),
        ("network", ("org/qwen",), {"revision": "abc123", "dtype": torch.float16}),
    ]


def bare_localizer(answers: list[str]) -> QwenLocalizer:
    """A QwenLocalizer without a model: ``generate`` answers from ``answers``."""
    localizer = object.__new__(QwenLocalizer)
    localizer.batch_size = 2
    localizer.compiler = SimpleNamespace(compile_grammar=lambda grammar: grammar)
    queue = list(answers)

    def generate(crops, prompts, grammars, max_new_tokens):
        return [Generation(text=queue.pop(0), input_size=crop.size) for crop in crops[: len(prompts)]]

    localizer.generate = generate
    return localizer


def test_verify_answers_per_crop_and_refuses_mismatched_lengths():
    """One verdict per crop (``yes`` -> True); concepts and others of different lengths raise."""
    crops = [Image.new("RGB", (28, 28)) for _ in range(3)]
    localizer = bare_localizer(["yes", " No", "YES"])
    assert localizer.verify(crops, ["a", "b", "c"], [["b"], ["a"], []]) == [True, False, True]
    with pytest.raises(ValueError):
        bare_localizer(["yes"] * 3).verify(crops[:2], ["a", "b"], [["b"]])


def test_from_config_hands_every_field_of_the_profile_to_the_localizer():
    import torch

    from annotators.config import LocalizeConfig
    from annotators.localize import from_config

    config = LocalizeConfig(model="tiny", device="cpu", dtype="float32", batch_size=3, max_new_tokens=77,
                            constrained=False, every_concept=False, box_frame="relative_1000",
                            min_pixels=4 * 28 * 28, max_pixels=40 * 28 * 28)  # fmt: skip
    localizer = from_config(config)
    assert (localizer.model_ref, localizer.device, localizer.dtype) == (
        "tiny",
        torch.device("cpu"),
        torch.float32,
    )
    assert (localizer.batch_size, localizer.max_new_tokens, localizer.constrained) == (3, 77, False)
    assert localizer.require_every_concept is False and localizer.box_frame == "relative_1000"
    assert (localizer.min_pixels, localizer.max_pixels) == (4 * 28 * 28, 40 * 28 * 28)
