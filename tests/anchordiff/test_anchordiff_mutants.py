"""Tests the mutation pass asked for (docs/testing.md): behaviour of the synthetic scenes, the record copy
and the diagnostics that no other test pinned."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from fixture_scopes import shared_unless_mutating
from PIL import Image

from anchordiff import AnchorDiff, AttentionRecord
from anchordiff.graph import anchor_accuracy, anchordiff_heatmaps, minmax, select_anchors
from anchordiff.synthetic import synthetic_scene


def test_synthetic_scene_default_seed_is_zero_and_4x4_is_the_smallest_grid():
    """``seed=0`` is the documented default, and a grid side of exactly 4 is accepted (3 is not)."""
    default, seeded = synthetic_scene((8, 8), num_objects=2), synthetic_scene((8, 8), num_objects=2, seed=0)
    assert torch.equal(default.a_ci, seeded.a_ci) and torch.equal(default.a_ii, seeded.a_ii)
    assert not torch.equal(default.a_ci, synthetic_scene((8, 8), num_objects=2, seed=1).a_ci)
    for grid in ((4, 9), (9, 4), (4, 4)):
        assert synthetic_scene(grid, num_objects=1).grid == grid
    for grid in ((3, 9), (9, 3)):
        with pytest.raises(ValueError, match="at least 4x4"):
            synthetic_scene(grid, num_objects=1)


def test_synthetic_concept_peak_is_a_gaussian_bump_at_the_object_centre():
    """Without noise, A_CI logits are target plateau + peak * exp(-d^2 / (2 (0.35 r)^2)) on the object.

    Recovered from the softmax as log-ratios between two tokens of the queried object: the centre token
    (d = 0, bump 1) against a token at distance d, so the plateau and the normaliser cancel.
    """
    peak = 1.5
    scene = synthetic_scene(
        (32, 32), num_objects=1, seed=3, concept_noise=0.0, concept_peak=peak, radius=(6.0, 6.0)
    )
    gh, gw = scene.grid
    row, col = (int(round(float(v))) for v in scene.centers[0])
    logits = scene.a_ci[0].log().reshape(gh, gw)
    centre_row, centre_col = float(scene.centers[0, 0]), float(scene.centers[0, 1])
    sigma = 0.35 * 6.0
    for dr in (0, 1, 2, 3):
        d2 = (row + dr - centre_row) ** 2 + (col - centre_col) ** 2
        d2_ref = (row - centre_row) ** 2 + (col - centre_col) ** 2
        expected = peak * (math.exp(-d2 / (2 * sigma**2)) - math.exp(-d2_ref / (2 * sigma**2)))
        got = float(logits[row + dr, col] - logits[row, col])
        assert got == pytest.approx(expected, abs=1e-4), dr


def _record(k: int = 2, n: int = 16) -> AttentionRecord:
    return AttentionRecord(
        a_ii={1: torch.rand(n, n)},
        o_ii={1: torch.rand(n, 8)},
        a_ci=torch.rand(3, k, n),
        concept_outputs=torch.rand(3, k, 8),
        concept_maps=torch.rand(3, k, n),
        concept_token_counts=[1] * k,
        i2t_joint=torch.rand(3, k, n),
        i2t_clip=torch.rand(3, k, n),
        prompt_positions=[[4], [6]][:k],
        grid=(4, 4),
        image_size=(32, 32),
        prompt="a photo of a and b",
        mode="noise",
        concepts=["a", "b"][:k],
        timestep=500.0,
    )


def test_attention_record_to_copies_every_tensor():
    """``AttentionRecord.to`` keeps every tensor (values equal) and every other field."""
    record = _record()
    moved = record.to("cpu")
    assert moved is not record
    for name in ("a_ci", "concept_outputs", "concept_maps", "i2t_joint", "i2t_clip"):
        assert torch.equal(getattr(moved, name), getattr(record, name)), name
    assert torch.equal(moved.a_ii[1], record.a_ii[1]) and torch.equal(moved.o_ii[1], record.o_ii[1])
    assert (moved.grid, moved.prompt, moved.concepts, moved.timestep) == (
        record.grid,
        record.prompt,
        record.concepts,
        record.timestep,
    )


def test_anchor_accuracy_with_flat_and_grid_anchors_on_a_non_square_grid():
    """Flat token indices and (row, column) anchors give the same verdicts on a 2 x 3 grid."""
    masks = torch.zeros(2, 4, 6, dtype=torch.bool)
    masks[0, :2, :2] = True  # token (0, 0)
    masks[1, 2:, 4:] = True  # token (1, 2)
    flat = torch.tensor([0, 5])
    assert anchor_accuracy(flat, masks, (2, 3)).tolist() == [True, True]
    assert anchor_accuracy(torch.tensor([[0, 0], [1, 2]]), masks, (2, 3)).tolist() == [True, True]
    assert anchor_accuracy(torch.tensor([5, 0]), masks, (2, 3)).tolist() == [False, False]


@pytest.fixture(scope=shared_unless_mutating)
def tiny():
    return AnchorDiff.from_pretrained("tiny", num_inference_steps=4)


def _synthetic_record(seed: int = 0) -> AttentionRecord:
    """A 4-block record on a 16 x 16 grid: A_II / A_CI from a synthetic scene, random (signed) O_II and
    ConceptAttention logits that differ per block, graph layers 1 and 2 (the tiny model's)."""
    scene = synthetic_scene((16, 16), num_objects=2, seed=seed)
    g = torch.Generator().manual_seed(seed)
    n = scene.a_ii.shape[0]
    a_ci = torch.stack([torch.softmax(torch.randn(2, n, generator=g) * 3, dim=1) for _ in range(4)])
    a_ci[3] = scene.a_ci
    record = _record(k=2, n=n)
    return dataclasses.replace(
        record,
        a_ii={1: scene.a_ii, 2: scene.a_ii.T.softmax(dim=1)},
        o_ii={1: torch.randn(n, 8, generator=g), 2: torch.randn(n, 8, generator=g)},
        a_ci=a_ci,
        concept_maps=torch.randn(4, 2, n, generator=g),
        grid=(16, 16),
        image_size=(16, 16),
    )


def test_anchor_layers_choose_the_a_ci_blocks_of_the_anchors_and_of_cross_attention(tiny):
    """``anchor_layers=(3,)`` uses block 3's A_CI alone: cross_attention maps and the anchors follow it."""
    record = _synthetic_record()
    out = tiny.heatmaps_from_record(record, method="cross_attention", anchor_layers=(3,))
    expected, _ = minmax(record.a_ci[3])
    assert torch.allclose(out.token_heatmaps.reshape(2, -1), expected, atol=1e-6)
    default = tiny.heatmaps_from_record(record, method="cross_attention")
    assert not torch.allclose(default.token_heatmaps, out.token_heatmaps, atol=1e-3)
    graph = tiny.heatmaps_from_record(record, anchor_layers=(3,))
    flat = graph.anchors[:, 0] * 16 + graph.anchors[:, 1]
    assert torch.equal(flat, select_anchors(record.a_ci[3]))


def test_concept_attention_layers_choose_the_averaged_blocks(tiny):
    """``layers=(2,)`` for concept_attention: minmax of block 2's softmax over the concepts."""
    record = _synthetic_record()
    out = tiny.heatmaps_from_record(record, method="concept_attention", layers=(2,))
    expected, _ = minmax(record.concept_maps[2].softmax(dim=0))
    assert torch.allclose(out.token_heatmaps.reshape(2, -1), expected, atol=1e-6)
    every = tiny.heatmaps_from_record(record, method="concept_attention")
    assert not torch.allclose(every.token_heatmaps, out.token_heatmaps, atol=1e-3)


def test_clamp_negative_option_reaches_the_graph():
    """``AnchorDiffOptions.clamp_negative=False`` changes the maps, exactly as in ``anchordiff_heatmaps``.

    O_II is random, so gated cosines have both signs; 5 steps keep the unclamped walk finite.
    """
    record = _synthetic_record(seed=1)
    unclamped = AnchorDiff.from_pretrained("tiny", num_inference_steps=4, clamp_negative=False)
    out = unclamped.heatmaps_from_record(record, layers=(1,), steps=5)
    a_ci = record.a_ci.mean(dim=0)
    graph = (record.a_ii[1], record.o_ii[1], a_ci)
    expected, _ = minmax(anchordiff_heatmaps(*graph, steps=5, clamp_negative=False))
    assert bool(torch.isfinite(expected).all())
    assert torch.allclose(out.token_heatmaps.reshape(2, -1), expected, atol=1e-5)
    clamped, _ = minmax(anchordiff_heatmaps(*graph, steps=5, clamp_negative=True))
    assert not torch.allclose(clamped, expected, atol=1e-3)


def test_separate_concept_pass_records_only_the_requested_graph_layers():
    """With ``concept_pass="separate"`` the concept pass adds no A_II / O_II of its own."""
    separate = AnchorDiff.from_pretrained("tiny", num_inference_steps=4, concept_pass="separate")
    image = Image.new("RGB", (64, 64), (120, 90, 60))
    record = separate.record(image, ["husky", "wolf"], mode="noise", graph_layers=(1,))
    assert record.graph_layers == (1,) and set(record.o_ii) == {1}


def test_with_options_changes_only_the_named_options_on_the_same_pipeline(tiny):
    """``with_options`` (sweeps of anchor_threshold) keeps the loaded pipeline, the model and the other
    options, and refuses what AnchorDiffOptions refuses."""
    changed = tiny.with_options(anchor_threshold=0.9, seg4diff_softmax="clip")
    assert changed.pipe is tiny.pipe and changed.model == tiny.model and changed.preset == tiny.preset
    assert changed.options.anchor_threshold == 0.9 and changed.options.seg4diff_softmax == "clip"
    assert (
        dataclasses.replace(changed.options, anchor_threshold=0.5, seg4diff_softmax="joint") == tiny.options
    )
    assert tiny.options.anchor_threshold == 0.5
    with pytest.raises(ValueError, match="anchor_threshold"):
        tiny.with_options(anchor_threshold=1.5)


def test_synthetic_a_ci_plateaus_are_the_target_and_leak_logits():
    """Without peak and noise, log A_CI of concept k is ``concept_target`` above the background on its
    own object and ``concept_leak`` above it on the other objects (a softmax keeps logit differences)."""
    scene = synthetic_scene((24, 24), num_objects=2, seed=1, concept_peak=0.0, concept_noise=0.0,
                            concept_target=2.5, concept_leak=1.25)  # fmt: skip
    logits = scene.a_ci.log()
    background = scene.labels == 0
    for k in range(2):
        base = logits[k, background].mean()
        own, other = scene.labels == k + 1, scene.labels == 2 - k
        torch.testing.assert_close(
            logits[k, own] - base, torch.full((int(own.sum()),), 2.5), atol=1e-4, rtol=0
        )
        torch.testing.assert_close(
            logits[k, other] - base, torch.full((int(other.sum()),), 1.25), atol=1e-4, rtol=0
        )


def test_synthetic_background_feature_has_the_asked_cosine_with_the_object_feature():
    """With no value noise and attention confined to each token's own object or background, an object
    token's O_II and a background token's O_II are the class features: their cosine is
    ``background_similarity`` and both have unit norm."""
    for similarity in (0.0, 0.5, 0.9):
        scene = synthetic_scene((24, 24), num_objects=1, seed=2, value_noise=0.0, attention_noise=0.0,
                                object_affinity=40.0, locality=1.0, background_similarity=similarity)  # fmt: skip
        inside = int(torch.nonzero(scene.labels == 1)[0])
        outside = int(torch.nonzero(scene.labels == 0)[0])
        a, b = scene.o_ii[inside], scene.o_ii[outside]
        assert float(a.norm()) == pytest.approx(1.0, abs=1e-4) and float(b.norm()) == pytest.approx(
            1.0, abs=1e-4
        )
        assert float(a @ b) == pytest.approx(similarity, abs=1e-4)


def test_empty_row_option_reaches_the_graph():
    """``AnchorDiffOptions.empty_row="zero"`` changes the maps, exactly as in ``anchordiff_heatmaps``
    (a zero O_II row at each anchor leaves its row of W empty)."""
    record = _synthetic_record(seed=1)
    record.o_ii[1][select_anchors(record.a_ci.mean(dim=0))] = 0.0  # W_cos 0 on the anchors' rows: empty rows
    zero = AnchorDiff.from_pretrained("tiny", num_inference_steps=4, empty_row="zero")
    out = zero.heatmaps_from_record(record, layers=(1,), steps=20)
    graph = (record.a_ii[1], record.o_ii[1], record.a_ci.mean(dim=0))
    expected, _ = minmax(anchordiff_heatmaps(*graph, steps=20, empty_row="zero"))
    assert torch.allclose(out.token_heatmaps.reshape(2, -1), expected, atol=1e-5)
    self_loop, _ = minmax(anchordiff_heatmaps(*graph, steps=20, empty_row="self_loop"))
    assert not torch.allclose(self_loop, expected, atol=1e-3)


def test_a_call_records_the_graph_layers_it_maps_and_none_for_a_baseline(tiny):
    """``ad(..., layers=(2,))`` records A_II at block 2 only (the default would be the preset's 1 and 2);
    a baseline records no A_II at all."""
    image = Image.new("RGB", (64, 64), (120, 90, 60))
    assert tiny.graph_layers == (1, 2)
    out = tiny(image, ["husky", "wolf"], mode="noise", layers=(2,), steps=3, return_record=True)
    assert out.record.graph_layers == (2,) and set(out.record.a_ii) == {2}
    baseline = tiny(image, ["husky", "wolf"], mode="noise", method="cross_attention", return_record=True)
    assert baseline.record.a_ii == {} and baseline.record.graph_layers == ()


def test_check_prompt_keeps_a_given_prompt_and_fills_the_template_otherwise(tiny):
    assert tiny._check_prompt("two dogs", ["husky", "wolf"]) == "two dogs"
    assert tiny._check_prompt(None, ["husky", "wolf"]) == "a photo of husky and wolf"
    for bad in ("  ", 3):
        with pytest.raises(ValueError, match="prompt must be a non-empty string or None"):
            tiny._check_prompt(bad, ["husky"])


def test_bad_anchor_layers_are_named_in_the_error(tiny):
    with pytest.raises(ValueError, match=r"^anchor_layers \[99\] out of range"):
        tiny.heatmaps_from_record(_synthetic_record(), anchor_layers=(99,))


def test_dynamic_shifting_schedulers_get_mu_from_the_latent_token_count(tiny, monkeypatch):
    """A scheduler with ``use_dynamic_shifting`` (SD3.5-style configs) gets diffusers' ``calculate_shift``
    of the latent's (H / p) * (W / p) tokens with the config's own sequence lengths and shifts."""
    from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift

    settings = {"base_image_seq_len": 64, "max_image_seq_len": 1024, "base_shift": 0.3, "max_shift": 1.4}
    public = {k: v for k, v in tiny.pipe.scheduler.config.items() if not k.startswith("_")}  # no default list
    config = {**public, "use_dynamic_shifting": True, "time_shift_type": "exponential", **settings}
    scheduler = type(tiny.pipe.scheduler).from_config(config)
    monkeypatch.setattr(tiny.pipe, "scheduler", scheduler)
    p = tiny.patch_size
    latents = torch.zeros(1, 4, 12 * p, 20 * p)
    _, timesteps = tiny._schedule(latents)
    reference = type(scheduler).from_config(config)
    mu = calculate_shift(240, 64, 1024, 0.3, 1.4)
    reference.set_timesteps(tiny.options.num_inference_steps, mu=mu)
    assert torch.allclose(timesteps, reference.timesteps)
    for wrong_mu in (calculate_shift(240, 256, 4096, 0.5, 1.16), calculate_shift(4 * 20, 64, 1024, 0.3, 1.4)):
        wrong = type(scheduler).from_config(config)
        wrong.set_timesteps(tiny.options.num_inference_steps, mu=wrong_mu)
        assert not torch.allclose(timesteps, wrong.timesteps)


def test_the_default_device_is_cuda_when_available(monkeypatch):
    from anchordiff.pipeline import _default_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert _default_device() == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _default_device() == torch.device("cpu")


def test_options_accept_a_one_megabyte_head_chunk_and_name_a_bad_o_ii_mode():
    from anchordiff.pipeline import AnchorDiffOptions

    assert AnchorDiffOptions(head_chunk_mb=1).head_chunk_mb == 1
    with pytest.raises(ValueError, match=r"^head_chunk_mb must be >= 1, got 0"):
        AnchorDiffOptions(head_chunk_mb=0)
    with pytest.raises(ValueError, match=r"^o_ii_heads must be one of"):
        AnchorDiffOptions(o_ii_heads="sum")


def test_from_pretrained_refuses_a_missing_model_and_a_preset_other_than_the_random_models_own():
    for bad in (None, ""):
        with pytest.raises(TypeError, match="model must be a repo id, a folder, 'tiny'"):
            AnchorDiff.from_pretrained(bad)
    with pytest.raises(ValueError, match=r"model 'random-sd3' is the 'sd3' architecture; drop preset='sd35'"):
        AnchorDiff.from_pretrained("random-sd3", preset="sd35")


def test_from_pretrained_infers_the_preset_from_the_block_count_except_for_tiny(monkeypatch):
    """A folder or repo without ``preset``: SD3.5-large's block count means sd35, anything else sd3; the tiny
    model is always sd3."""
    from types import SimpleNamespace

    import anchordiff.pipeline as pipeline_module
    from anchordiff.backbones import PRESETS

    class Probe(AnchorDiff):
        def __init__(self, pipe, **kwargs):
            self.kwargs = kwargs

    def fake_pipe(num_layers):
        config = SimpleNamespace(num_layers=num_layers)
        return SimpleNamespace(
            transformer=SimpleNamespace(config=config), set_progress_bar_config=lambda **k: None
        )

    blocks = {"org/large": PRESETS["sd35"].num_layers, "org/medium": PRESETS["sd3"].num_layers,
              "tiny": PRESETS["sd35"].num_layers}  # fmt: skip
    monkeypatch.setattr(pipeline_module, "load_pipeline", lambda model, *args: fake_pipe(blocks[model]))
    assert PRESETS["sd35"].num_layers != PRESETS["sd3"].num_layers
    assert Probe.from_pretrained("org/large", device="cpu").kwargs["preset"] == "sd35"
    assert Probe.from_pretrained("org/medium", device="cpu").kwargs["preset"] == "sd3"
    assert Probe.from_pretrained("tiny", device="cpu").kwargs["preset"] == "sd3"


def test_an_idle_recording_processor_hands_every_argument_to_the_original():
    from anchordiff.attention import RecordingJointAttnProcessor, RecordingState

    calls = []
    state = RecordingState(
        graph_layers=frozenset(), concepts=None, cfg=False, o_ii_mode="concat", head_chunk_bytes=1
    )
    processor = RecordingJointAttnProcessor(
        0, state, lambda *args, **kwargs: calls.append((args, kwargs)) or "out"
    )
    assert processor("attn", "hidden", "context", "mask", "extra", scale=2.0) == "out"
    assert calls == [(("attn", "hidden", "context", "mask", "extra"), {"scale": 2.0})]


def test_a_transformer_called_with_positional_latents_is_recorded_alike():
    """``transformer(latents, ...)``: the recorder reads the batch from the first positional argument (CFG
    batch of 2, the conditional half)."""
    from anchordiff.attention import AttentionRecorder
    from anchordiff.backbones import build_tiny_pipeline

    transformer = build_tiny_pipeline("sd3").transformer
    config = transformer.config
    g = torch.Generator().manual_seed(0)
    inputs = {
        "encoder_hidden_states": torch.randn(2, 7, config.joint_attention_dim, generator=g),
        "pooled_projections": torch.randn(2, config.pooled_projection_dim, generator=g),
        "timestep": torch.full((2,), 500.0),
        "return_dict": False,
    }
    latents = torch.randn(2, config.in_channels, 16, 16, generator=g)
    states = []
    for positional in (False, True):
        with torch.no_grad(), AttentionRecorder(transformer, graph_layers=(1,), cfg=True) as recorder:
            transformer(latents, **inputs) if positional else transformer(hidden_states=latents, **inputs)
        states.append(recorder.state)
    keyword, positional = states
    assert positional.recorded_forwards == 1 and positional.sample == 1
    assert torch.equal(keyword.a_ii[1], positional.a_ii[1])


def test_anchors_outside_the_grid_on_any_side_are_refused():
    """Each of row < 0, row >= gh, col < 0 and col >= gw alone is outside (a 2 x 3 grid)."""
    masks = torch.ones(1, 4, 6, dtype=torch.bool)
    assert bool(anchor_accuracy(torch.tensor([[1, 2]]), masks, (2, 3)).all())
    for outside in ([-1, 0], [2, 0], [0, -1], [0, 3]):
        with pytest.raises(ValueError, match="fall outside the 2x3 grid"):
            anchor_accuracy(torch.tensor([outside]), masks, (2, 3))


def test_affinity_stats_names_a_bad_o_ii():
    from anchordiff.graph import affinity_stats

    labels = torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match=r"^o_ii must have 2 dimensions"):
        affinity_stats(torch.rand(4, 4), torch.rand(4), labels)


def test_load_pipeline_hands_the_reference_and_options_to_diffusers(tmp_path, monkeypatch):
    """A folder (``~`` expanded) or a Hub id goes to ``StableDiffusion3Pipeline.from_pretrained`` with the dtype,
    and the revision / ``local_files_only`` only when given; the pipeline then moves to the device. The tiny
    pipeline moves with its dtype unless float32."""
    from types import SimpleNamespace

    import diffusers

    import anchordiff.backbones as backbones

    loaded, moved = [], []

    def stub(*args, **kwargs):
        return SimpleNamespace(to=lambda *a, **k: moved.append((a, k)) or "moved")

    monkeypatch.setattr(
        diffusers.StableDiffusion3Pipeline, "from_pretrained",
        staticmethod(lambda ref, **kwargs: loaded.append((ref, kwargs)) or stub()),
    )  # fmt: skip
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "sd3-folder").mkdir()
    cpu = torch.device("cpu")
    assert backbones.load_pipeline("~/sd3-folder", "sd3", cpu, torch.bfloat16, "r1", True) == "moved"
    assert backbones.load_pipeline("org/sd3", "sd3", cpu, torch.float16) == "moved"
    assert loaded == [
        (str(tmp_path / "sd3-folder"), {"dtype": torch.bfloat16, "revision": "r1", "local_files_only": True}),
        ("org/sd3", {"dtype": torch.float16}),
    ]
    assert moved == [((cpu,), {}), ((cpu,), {})]
    moved.clear()
    monkeypatch.setattr(backbones, "build_tiny_pipeline", lambda preset: stub())
    backbones.load_pipeline("tiny", "sd35", cpu, torch.bfloat16)
    backbones.load_pipeline("tiny", "sd35", cpu, torch.float32)
    assert moved == [((), {"device": cpu, "dtype": torch.bfloat16}), ((cpu,), {})]


def test_the_tiny_pipeline_defaults_to_the_sd3_architecture():
    from anchordiff.backbones import build_tiny_pipeline

    default = build_tiny_pipeline().transformer.config
    assert default == build_tiny_pipeline("sd3").transformer.config
    assert default != build_tiny_pipeline("sd35").transformer.config  # SD3.5: qk norm, dual attention
