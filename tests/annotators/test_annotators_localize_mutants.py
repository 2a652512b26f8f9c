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


def test_the_model_input_keeps_within_the_localizers_pixel_limits():
    """A large image is resized to qwen-vl-utils' ``smart_resize`` within this localizer's own min / max
    pixels (the keys of the image message), not the library's defaults."""
    from qwen_vl_utils.vision_process import smart_resize

    from annotators.localize import QwenLocalizer

    small, large = 8 * 28 * 28, 60 * 28 * 28
    localizer = QwenLocalizer("tiny", min_pixels=small, max_pixels=large)
    width, height = localizer.input_size(Image.new("RGB", (1200, 900)))
    expected_h, expected_w = smart_resize(900, 1200, factor=28, min_pixels=small, max_pixels=large)
    assert (width, height) == (expected_w, expected_h) and width * height <= large
    tiny_w, tiny_h = localizer.input_size(Image.new("RGB", (30, 30)))
    assert tiny_w * tiny_h >= small


def test_a_real_model_gets_qwens_default_pixel_limits_and_tiny_its_own():
    """Qwen2.5-VL's recommended 256-1280 tokens of 28 x 28 px for a real model; the tiny model's small limits."""
    components = localize.build_tiny_qwen()
    real = QwenLocalizer("org/qwen2.5-vl", components=components, device="cpu")
    assert (real.min_pixels, real.max_pixels) == (256 * 28 * 28, 1280 * 28 * 28)
    tiny = QwenLocalizer("tiny", device="cpu")
    assert (tiny.min_pixels, tiny.max_pixels) == (localize.TINY_MIN_PIXELS, localize.TINY_MAX_PIXELS)
    token = tiny.tokenizer.convert_tokens_to_ids
    assert tiny.eos_token_ids == [token("<|im_end|>"), token("<|endoftext|>")]  # generation stops at either


def test_the_tiny_model_is_seeded_with_zero_by_default():
    weights = [p.detach().clone() for p in localize.build_tiny_qwen(0)[0].parameters()]
    for model in (localize.build_tiny_qwen()[0], QwenLocalizer("tiny", device="cpu").model):
        assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters(), strict=True))
    other = localize.build_tiny_qwen(1)[0]
    assert not all(torch.equal(a, b) for a, b in zip(weights, other.parameters(), strict=True))


def test_the_tiny_qwen_follows_the_real_configs_rope_and_stop_token():
    """As Qwen2.5-VL-7B's config: default (m)RoPE with theta 1e6, sections summing to head_dim / 2, the text
    config's eos <|im_end|>; the documented sizes (hidden 64, MLP 128, 2 layers, 4 heads)."""
    model, processor = localize.build_tiny_qwen()
    text = model.config.text_config
    assert (
        text.rope_parameters["rope_type"] == "default" and text.rope_parameters["rope_theta"] == 1_000_000.0
    )
    assert sum(text.rope_parameters["mrope_section"]) == text.hidden_size // text.num_attention_heads // 2
    assert text.eos_token_id == processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    sizes = (text.hidden_size, text.intermediate_size, text.num_hidden_layers, text.num_attention_heads)
    assert sizes == (64, 128, 2, 4)
    vision = model.config.vision_config
    assert (vision.hidden_size, vision.out_hidden_size, vision.patch_size, vision.spatial_merge_size) == (
        32,
        64,
        14,
        2,
    )


def test_eos_ids_add_both_chat_stop_tokens_to_the_models_own():
    """A generation config naming one stop token still stops at <|im_end|> and <|endoftext|> (no duplicates)."""
    _, processor = localize.build_tiny_qwen()
    token = processor.tokenizer.convert_tokens_to_ids
    localizer = object.__new__(QwenLocalizer)
    localizer.tokenizer = processor.tokenizer
    localizer.model = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=7))
    assert localizer._eos_ids() == [7, token("<|im_end|>"), token("<|endoftext|>")]
    localizer.model.generation_config.eos_token_id = [token("<|endoftext|>")]
    assert localizer._eos_ids() == [token("<|endoftext|>"), token("<|im_end|>")]
    localizer.tokenizer = SimpleNamespace(
        convert_tokens_to_ids=lambda name: 9, convert_ids_to_tokens=lambda i: "<unk>"
    )
    assert localizer._eos_ids() == [token("<|endoftext|>")]  # names the vocabulary lacks are not added


def test_the_grammar_covers_the_models_padded_output_vocabulary():
    """Qwen2.5-VL's output embedding has more rows than its tokenizer has tokens (Qwen2.5-VL-7B: 152,064 rows, 151,665 tokens): the
    grammar's token mask must span every row the logits have, or the padding rows stay unmasked."""
    model, processor = localize.build_tiny_qwen()
    tokens = len(processor.tokenizer)
    model.resize_token_embeddings(tokens + 64, mean_resizing=False)
    localizer = QwenLocalizer("org/qwen2.5-vl", components=(model, processor), device="cpu")
    grammar = localizer.compiler.compile_grammar('root ::= "yes" | "no"')
    assert grammar.tokenizer_info.vocab_size == tokens + 64
