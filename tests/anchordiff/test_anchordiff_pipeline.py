"""AnchorDiff end to end on the tiny offline SD3 / SD3.5 models (CPU)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from fixture_scopes import shared_unless_mutating
from PIL import Image

from anchordiff import AnchorDiff, AnchorDiffOutput, AttentionRecord
from anchordiff.backbones import PRESETS, SD3_MEDIUM_TRANSFORMER, SD35_LARGE_TRANSFORMER
from anchordiff.pipeline import METHODS

CONCEPTS = ["husky", "wolf", "alaskan malamute"]
SIZE = (80, 96)  # (W, H) of the test image: not square, not the native 128 px


@pytest.fixture(scope=shared_unless_mutating)
def ad():
    return AnchorDiff.from_pretrained("tiny", num_inference_steps=4)


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, size=(SIZE[1], SIZE[0], 3), dtype=np.uint8)
    pixels[20:60, 10:40] = (200, 180, 160)  # a flat block so the picture is not pure noise
    return Image.fromarray(pixels)


def _check_output(out: AnchorDiffOutput, k: int, size=SIZE, grid=(16, 16), timed: bool = True) -> None:
    width, height = size
    assert out.heatmaps.shape == (k, height, width) and out.heatmaps.dtype == torch.float32
    assert out.heatmaps.device.type == "cpu"
    assert float(out.heatmaps.min()) >= 0.0 and float(out.heatmaps.max()) <= 1.0
    assert out.masks.shape == (k, height, width) and out.masks.dtype == torch.bool
    expected_masks = out.heatmaps > out.heatmaps.mean(dim=(1, 2), keepdim=True)
    assert torch.equal(out.masks, expected_masks)
    assert out.anchors.shape == (k, 2) and out.anchors.dtype == torch.long
    assert bool((out.anchors >= 0).all()) and bool((out.anchors[:, 0] < grid[0]).all())
    assert bool((out.anchors[:, 1] < grid[1]).all())
    assert out.token_heatmaps.shape == (k, *grid)
    assert float(out.token_heatmaps.min()) >= 0.0 and float(out.token_heatmaps.max()) <= 1.0
    assert out.degenerate.shape == (k,) and out.degenerate.dtype == torch.bool
    for row, flag in zip(out.heatmaps, out.degenerate.tolist(), strict=True):
        assert (float(row.max()) == 0.0) if flag else (float(row.max()) == pytest.approx(1.0))
    assert out.timings["heatmaps"] >= 0
    if timed:
        assert out.timings["total"] > 0


@pytest.mark.parametrize("mode", ["invert", "noise"])
def test_end_to_end_both_modes(ad, image, mode):
    out = ad(image, CONCEPTS, mode=mode)
    _check_output(out, len(CONCEPTS))
    assert {mode, "encode_text", "encode_image", "forward", "heatmaps", "total"} <= set(out.timings)
    assert out.method == "anchordiff" and out.concepts == CONCEPTS
    assert not bool(out.degenerate.any())


def test_every_method_from_one_record(ad, image):
    record = ad.record(image, CONCEPTS, mode="noise", graph_layers="all")
    assert isinstance(record, AttentionRecord)
    assert record.graph_layers == (0, 1, 2, 3) and record.grid == (16, 16) and record.image_size == SIZE
    assert record.a_ci.shape == (4, 3, 256) and record.concept_maps.shape == (4, 3, 256)
    assert record.concept_outputs.shape == (4, 3, 32)
    assert record.prompt == "a photo of husky and wolf and alaskan malamute"
    assert record.timestep == pytest.approx(float(_midpoint_timestep(ad)))
    outputs = {method: ad.heatmaps_from_record(record, method=method) for method in METHODS}
    for method, out in outputs.items():
        _check_output(out, 3, timed=False)
        assert out.method == method
    # The graph methods and cross-attention share the anchors argmax(mean A_CI).
    a_ci_anchor = record.a_ci.mean(0).argmax(dim=1)
    for method in ("anchordiff", "no_gate", "no_wcos", "cross_attention"):
        flat = outputs[method].anchors[:, 0] * 16 + outputs[method].anchors[:, 1]
        assert torch.equal(flat, a_ci_anchor)
    # cross_attention is the min-max normalised mean A_CI.
    a_ci = record.a_ci.mean(0)
    expected = (a_ci - a_ci.amin(1, keepdim=True)) / (a_ci.amax(1, keepdim=True) - a_ci.amin(1, keepdim=True))
    torch.testing.assert_close(outputs["cross_attention"].token_heatmaps.reshape(3, -1), expected)
    # concept_attention: softmax over concepts per block, mean over blocks, min-max.
    probs = record.concept_maps.softmax(dim=1).mean(0)
    expected = (probs - probs.amin(1, keepdim=True)) / (
        probs.amax(1, keepdim=True) - probs.amin(1, keepdim=True)
    )
    torch.testing.assert_close(outputs["concept_attention"].token_heatmaps.reshape(3, -1), expected)
    # The ablations change the graph, so their maps differ from AnchorDiff's.
    assert not torch.allclose(outputs["anchordiff"].token_heatmaps, outputs["no_gate"].token_heatmaps)
    # A single-layer and a custom layer set come from the same recording.
    single = ad.heatmaps_from_record(record, layers=(3,), steps=20, gate_quantile=0.9)
    assert single.token_heatmaps.shape == (3, 16, 16)


def _midpoint_timestep(ad):
    return _timesteps(ad, 4)[4 // 2]


def test_call_equals_record_then_heatmaps(ad, image):
    out = ad(image, CONCEPTS[:2], mode="noise", seed=3, return_record=True)
    again = ad.heatmaps_from_record(ad.record(image, CONCEPTS[:2], mode="noise", seed=3))
    assert torch.equal(out.heatmaps, again.heatmaps) and torch.equal(out.anchors, again.anchors)
    assert out.record is not None and out.record.mode == "noise"
    other_seed = ad(image, CONCEPTS[:2], mode="noise", seed=4)
    assert not torch.equal(out.token_heatmaps, other_seed.token_heatmaps)
    invert = ad(image, CONCEPTS[:2], mode="invert", seed=3)
    assert torch.equal(invert.token_heatmaps, ad(image, CONCEPTS[:2], mode="invert", seed=99).token_heatmaps)


@pytest.mark.parametrize("guidance", [1.0, 2.0])
def test_inversion_climbs_the_schedule_to_the_midpoint(image, guidance):
    """Invert mode: Euler steps from sigma = 0 through the schedule's sigmas, then one recorded pass there."""
    ad = AnchorDiff.from_pretrained("tiny", num_inference_steps=4, inversion_guidance_scale=guidance)
    calls = []

    def log(module, args, kwargs):
        calls.append((kwargs["hidden_states"].shape[0], float(kwargs["timestep"][0])))

    handle = ad.transformer.register_forward_pre_hook(log, with_kwargs=True)
    try:
        ad.record(image, ["husky"], mode="invert")
    finally:
        handle.remove()
    timesteps = [float(t) for t in _timesteps(ad, 4)]
    batch = 2 if guidance > 1 else 1
    assert calls == [(batch, 0.0), (batch, pytest.approx(timesteps[3])), (1, pytest.approx(timesteps[2]))]


def _timesteps(ad, n):
    scheduler = type(ad.pipe.scheduler).from_config(ad.pipe.scheduler.config)
    scheduler.set_timesteps(n)
    return scheduler.timesteps


def test_concept_tokens_are_content_tokens(ad):
    tokens = ad.encode_concepts(["husky", "alaskan malamute"])
    # CLIP: 1 and 2 word tokens (no BOS/EOS/padding) + T5: the same pieces without EOS/padding.
    clip = [len(ad.pipe.tokenizer(c).input_ids) - 2 for c in ("husky", "alaskan malamute")]
    t5 = [len(ad.pipe.tokenizer_3(c).input_ids) - 1 for c in ("husky", "alaskan malamute")]
    assert tokens.token_counts().tolist() == [clip[0] + t5[0], clip[1] + t5[1]]
    assert tokens.token_counts().tolist()[1] > tokens.token_counts().tolist()[0]
    assert tokens.hidden.shape == (1, sum(clip) + sum(t5), ad.transformer.config.caption_projection_dim)


def test_separate_concept_pass_gives_the_same_record(image):
    joint = AnchorDiff.from_pretrained("tiny", num_inference_steps=4)
    separate = AnchorDiff.from_pretrained("tiny", num_inference_steps=4, concept_pass="separate")
    a = joint.record(image, CONCEPTS[:2], mode="noise")
    b = separate.record(image, CONCEPTS[:2], mode="noise")
    for layer in joint.graph_layers:
        torch.testing.assert_close(a.a_ii[layer], b.a_ii[layer], atol=1e-6, rtol=0)
        torch.testing.assert_close(a.o_ii[layer], b.o_ii[layer], atol=1e-6, rtol=0)
    torch.testing.assert_close(a.a_ci, b.a_ci, atol=1e-6, rtol=0)


def test_options_change_the_recording(image):
    ad = AnchorDiff.from_pretrained(
        "tiny",
        num_inference_steps=6,
        timestep_index=1,
        o_ii_heads="mean_attention",
        prompt_template="an image with {concepts}",
        concept_separator=", ",
        graph_layers=(2,),
        resolution=64,
    )
    record = ad.record(image, ["husky", "wolf"], mode="noise")
    assert record.prompt == "an image with husky, wolf"
    assert record.graph_layers == (2,) and record.grid == (8, 8) and record.o_ii[2].shape == (64, 32)
    config = ad.config
    for key in (
        "model",
        "revision",
        "preset",
        "dtype",
        "device",
        "prompt_template",
        "concept_pass",
        "o_ii_heads",
        "clamp_negative",
        "empty_row",
        "num_inference_steps",
        "graph_layers",
        "recorded_step",
    ):
        assert key in config
    assert config["recorded_step"] == 1 and config["graph_layers"] == [2] and config["resolution"] == 64
    assert config["model"] == "tiny" and config["dtype"] == "float32" and config["device"] == "cpu"
    assert AnchorDiff.from_pretrained("tiny", graph_layers="all").graph_layers == (0, 1, 2, 3)


def test_generate_records_the_midpoint_under_cfg(ad):
    image, out = ad.generate(
        "a photo of a husky and a wolf",
        ["husky", "wolf"],
        num_inference_steps=4,
        guidance_scale=4.0,
        height=64,
        width=96,
        seed=1,
    )
    assert image.size == (96, 64)
    _check_output(out, 2, size=(96, 64), grid=(8, 12))
    assert out.record.mode == "generate" and out.record.grid == (8, 12)
    assert out.record.timestep == pytest.approx(float(_midpoint_timestep(ad)))
    assert "generate" in out.timings
    plain = ad.pipe(
        "a photo of a husky and a wolf",
        num_inference_steps=4,
        guidance_scale=4.0,
        height=64,
        width=96,
        generator=torch.Generator().manual_seed(1),
        max_sequence_length=ad.max_sequence_length,
    )
    difference = np.abs(np.asarray(plain.images[0], dtype=int) - np.asarray(image, dtype=int)).max()
    assert difference <= 1  # recording did not change the generated image


def test_tiny_sd35_end_to_end(image):
    ad = AnchorDiff.from_pretrained("tiny", preset="sd35", num_inference_steps=2)
    assert (
        ad.transformer.config.qk_norm == "rms_norm" and ad.transformer.transformer_blocks[0].attn2 is not None
    )
    _check_output(ad(image, ["lemon", "lime"], mode="invert"), 2)
    assert ad.config["preset"] == "sd35"


def test_real_presets_match_published_configurations():
    from diffusers import SD3Transformer2DModel

    for config, blocks, params in (
        (SD3_MEDIUM_TRANSFORMER, 24, 2_028_328_000),
        (SD35_LARGE_TRANSFORMER, 38, None),
    ):
        assert (
            config["num_attention_heads"] * config["attention_head_dim"] == config["caption_projection_dim"]
        )
        with torch.device("meta"):
            model = SD3Transformer2DModel(**config)
        assert len(model.transformer_blocks) == blocks
        count = sum(p.numel() for p in model.parameters())
        if params:
            assert count == params  # SD3-medium's published 2B transformer
        else:
            assert 8.0e9 < count < 8.2e9  # SD3.5-large's published 8.1B
    assert PRESETS["sd3"].graph_layers == (9, 18) and PRESETS["sd35"].graph_layers == (23, 31)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda ad, im: ad(im, []), ValueError, "concepts is empty"),
        (lambda ad, im: ad(im, "husky"), TypeError, "list of strings"),
        (lambda ad, im: ad(im, ["husky", "Husky "]), ValueError, "duplicate concept"),
        (lambda ad, im: ad(im, ["husky", ""]), ValueError, "non-empty string"),
        (lambda ad, im: ad(np.zeros((8, 8, 3)), ["husky"]), TypeError, "PIL.Image.fromarray"),
        (lambda ad, im: ad(im, ["husky"], layers=(1, 4)), ValueError, "out of range"),
        (lambda ad, im: ad(im, ["husky"], layers=()), ValueError, "non-empty"),
        (lambda ad, im: ad(im, ["husky"], method="gradcam"), ValueError, "unknown method"),
        (lambda ad, im: ad(im, ["husky"], mode="ddim"), ValueError, "unknown mode"),
        (lambda ad, im: ad(im, ["husky"], steps=0), ValueError, "steps"),
        (lambda ad, im: ad(im, ["husky"], gate_quantile=1.5), ValueError, "gate_quantile"),
        (lambda ad, im: ad(im, ["husky"], prompt="  "), ValueError, "prompt"),
        (
            lambda ad, im: ad.heatmaps_from_record(ad.record(im, ["husky"], mode="noise"), layers=(0,)),
            ValueError,
            "not recorded",
        ),
        (lambda ad, im: ad.generate("a dog", ["husky"], height=100), ValueError, "multiple of"),
    ],
)
def test_bad_inputs_give_documented_errors(ad, image, call, error, match):
    with pytest.raises(error, match=match):
        call(ad, image)


def test_bad_construction_arguments():
    with pytest.raises(ValueError, match="unknown preset"):
        AnchorDiff.from_pretrained("tiny", preset="sdxl")
    with pytest.raises(ValueError, match="drop preset"):
        AnchorDiff.from_pretrained("random-sd35", preset="sd3")
    with pytest.raises(ValueError, match="unknown preset"):
        AnchorDiff.from_pretrained("random-flux")
    with pytest.raises(ValueError, match="prompt_template"):
        AnchorDiff.from_pretrained("tiny", prompt_template="a photo")
    with pytest.raises(ValueError, match="out of range"):
        AnchorDiff.from_pretrained("tiny", graph_layers=(9, 18))
    with pytest.raises(TypeError, match="the options are"):
        AnchorDiff.from_pretrained("tiny", gate=0.5)
    with pytest.raises(OSError, match="could not load"):
        AnchorDiff.from_pretrained("/nonexistent/sd3-folder-for-test", local_files_only=True)


def test_package_import_is_light():
    code = "import sys, anchordiff; assert 'diffusers' not in sys.modules and 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_registered_map_builder_is_a_method_of_its_own(ad, image, monkeypatch):
    """A method registered in ``MAP_BUILDERS`` runs through heatmaps_from_record like the built-ins."""
    from anchordiff.graph import select_anchors
    from anchordiff.pipeline import MAP_BUILDERS, register_map_builder

    monkeypatch.setattr("anchordiff.pipeline.MAP_BUILDERS", dict(MAP_BUILDERS))
    from anchordiff import pipeline

    @register_map_builder("inverse_cross_attention")
    def inverse(ad, record, layers, a_ci, steps, gate_quantile):
        return -a_ci, select_anchors(a_ci)

    assert (
        "inverse_cross_attention" in pipeline.MAP_BUILDERS
        and not pipeline.MAP_BUILDERS["inverse_cross_attention"].needs_graph
    )
    record = ad.record(image, CONCEPTS, mode="noise")
    inverse_out = ad.heatmaps_from_record(record, method="inverse_cross_attention")
    cross = ad.heatmaps_from_record(record, method="cross_attention")
    assert inverse_out.method == "inverse_cross_attention"
    assert torch.allclose(
        inverse_out.heatmaps, 1 - cross.heatmaps, atol=1e-5
    )  # min-max of -x is 1 - min-max of x
    with pytest.raises(ValueError, match="no_such_method"):
        ad.heatmaps_from_record(record, method="no_such_method")
