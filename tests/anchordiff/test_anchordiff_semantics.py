"""The semantics of AnchorDiff's real-model paths, each against an independent naive computation (CPU).

Every test here recomputes what AnchorDiff records (``anchordiff/pipeline.py``, ``attention.py``) from
quantities captured by hooks of its own on the tiny offline SD3 / SD3.5-style models (the block's own
``to_k`` / ``add_q_proj`` / ... outputs, the transformer's inputs) or from the diffusers components directly,
with plain tensor algebra: never by calling the code under test a second time. The literal values are those
of ``method.md`` ("Extraction", "Concept tokens and A_CI", "Baselines").
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections import defaultdict
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from fixture_scopes import shared_unless_mutating
from PIL import Image

from anchordiff import AnchorDiff
from anchordiff.attention import AttentionRecorder
from anchordiff.pipeline import AnchorDiffOptions

CONCEPTS = ["husky", "wolf", "alaskan malamute"]  # the last is two pieces in both tiny tokenizers
STEPS = 4  # inference steps of every run here; the recorded step is STEPS // 2
PROMPT = "a photo of a husky and a wolf"
GEN_SIZE = (96, 64)  # (W, H) of the generated image: an 8 x 12 token grid
SIZE = (80, 96)  # (W, H) of the input image: not square, not the native 128 px
ATOL, RTOL = 1e-5, 1e-4


@pytest.fixture(scope=shared_unless_mutating, params=["sd3", "sd35"])
def ad(request):
    return AnchorDiff.from_pretrained("tiny", preset=request.param, num_inference_steps=STEPS)


@pytest.fixture(scope=shared_unless_mutating)
def ad_sd3():
    return AnchorDiff.from_pretrained("tiny", preset="sd3", num_inference_steps=STEPS)


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, size=(SIZE[1], SIZE[0], 3), dtype=np.uint8)
    pixels[20:60, 10:40] = (200, 180, 160)  # a flat block so the picture is not pure noise
    return Image.fromarray(pixels)


# -- independent helpers ----------------------------------------------------------------------------------
class Capture:
    """Hooks of the test's own: the transformer's inputs and, per block, the joint attention's projections.

    ``calls[j]`` is the j-th transformer forward: ``inputs`` (its tensor keyword arguments) and
    ``layers[block][name]``, the list of outputs of ``attn.<name>`` (``to_q``, ``to_k``, ``to_v``, ``add_q_proj``,
    ``add_k_proj``, ``add_v_proj``) and, under ``"image_out"``, the inputs of ``attn.to_out[0]`` (the image
    stream's attention output before the output projection), in call order.
    """

    PROJECTIONS = ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj")

    def __init__(self, transformer: torch.nn.Module, velocity: torch.Tensor | None = None):
        self.transformer = transformer
        self.velocity = velocity  # a constant stub velocity returned instead of the transformer's output
        self.calls: list[dict] = []
        self.handles: list = []

    def __enter__(self) -> Capture:
        def start(module, args, kwargs):
            inputs = {k: v.detach().clone() for k, v in kwargs.items() if torch.is_tensor(v)}
            self.calls.append({"inputs": inputs, "layers": defaultdict(lambda: defaultdict(list))})

        self.handles.append(self.transformer.register_forward_pre_hook(start, with_kwargs=True))
        if self.velocity is not None:

            def stub(module, args, kwargs, output):
                return (self.velocity.to(output[0].dtype).expand_as(output[0]).clone(),)

            self.handles.append(self.transformer.register_forward_hook(stub, with_kwargs=True))
        for layer, block in enumerate(self.transformer.transformer_blocks):
            for name in self.PROJECTIONS:

                def keep(module, args, output, layer=layer, name=name):
                    self.calls[-1]["layers"][layer][name].append(output.detach().clone())

                self.handles.append(getattr(block.attn, name).register_forward_hook(keep))

            def keep_image(module, args, layer=layer):
                self.calls[-1]["layers"][layer]["image_out"].append(args[0].detach().clone())

            self.handles.append(block.attn.to_out[0].register_forward_pre_hook(keep_image))
        return self

    def __exit__(self, *exc_info) -> None:
        for handle in self.handles:
            handle.remove()


def _content_counts(ad: AnchorDiff, concepts: list[str]) -> list[int]:
    """Content tokens per concept counted from the tokenizer ids: CLIP minus BOS/EOS/pad, T5 minus EOS/pad."""
    clip, t5 = ad.pipe.tokenizer, ad.pipe.tokenizer_3
    counts = []
    for concept in concepts:
        clip_ids = clip(concept).input_ids
        t5_ids = t5(concept).input_ids
        special_clip = {clip.bos_token_id, clip.eos_token_id, clip.pad_token_id}
        n_clip = sum(i not in special_clip for i in clip_ids)
        n_t5 = sum(i not in {t5.eos_token_id, t5.pad_token_id} for i in t5_ids)
        counts.append(n_clip + n_t5)
    return counts


def _concept_mean(rows: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """(M, ...) per-token rows, concept 0's tokens first -> (K, ...) per-concept means."""
    return torch.stack([chunk.mean(dim=0) for chunk in rows.split(counts)])


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(T, heads * d) -> (heads, T, d)."""
    return x.reshape(x.shape[0], heads, -1).transpose(0, 1)


def _naive_block(attn: torch.nn.Module, captured: dict, row: int, m: int) -> dict[str, torch.Tensor]:
    """Per-token A_CI, concept outputs and the image output of one block, from the captured projections.

    ``row``: the batch row of the image stream; the concept stream's calls are the (1, m, D) ones.
    """
    heads = attn.heads

    def concept(name: str) -> torch.Tensor:
        (out,) = [o for o in captured[name] if tuple(o.shape[:2]) == (1, m)]
        return _heads(out[0], heads)

    (k_out,), (v_out,) = captured["to_k"], captured["to_v"]
    k_img, v_img = _heads(k_out[row], heads), _heads(v_out[row], heads)
    c_q, c_k, c_v = concept("add_q_proj"), concept("add_k_proj"), concept("add_v_proj")
    with torch.no_grad():
        if attn.norm_k is not None:
            k_img = attn.norm_k(k_img)
        if attn.norm_added_q is not None:
            c_q = attn.norm_added_q(c_q)
        if attn.norm_added_k is not None:
            c_k = attn.norm_added_k(c_k)
    scale = 1.0 / math.sqrt(c_q.shape[-1])
    a_ci = torch.softmax(c_q @ k_img.transpose(1, 2) * scale, dim=-1).mean(dim=0)  # (m, N)
    keys, values = torch.cat([c_k, k_img], dim=1), torch.cat([c_v, v_img], dim=1)
    c_out = torch.softmax(c_q @ keys.transpose(1, 2) * scale, dim=-1) @ values  # (H, m, d)
    (image_out,) = captured["image_out"]
    return {
        "a_ci": a_ci,
        "outputs": c_out.transpose(0, 1).reshape(m, -1),
        "image_out": image_out[row],
        "c_q": c_q,
        "k_img": k_img,
    }


def _naive_record(ad: AnchorDiff, call: dict, row: int, counts: list[int]) -> dict[str, torch.Tensor]:
    """(L, K, N) A_CI, (L, K, D) concept outputs and (L, K, N) ConceptAttention maps, computed naively."""
    m = sum(counts)
    a_ci, outputs, maps = [], [], []
    for layer, block in enumerate(ad.transformer.transformer_blocks):
        naive = _naive_block(block.attn, call["layers"][layer], row, m)
        a_ci.append(_concept_mean(naive["a_ci"], counts))
        mean_out = _concept_mean(naive["outputs"], counts)
        outputs.append(mean_out)
        unit = mean_out / mean_out.norm(dim=-1, keepdim=True)
        maps.append(unit @ naive["image_out"].T)
    return {"a_ci": torch.stack(a_ci), "outputs": torch.stack(outputs), "maps": torch.stack(maps)}


def _minmax_rows(x: torch.Tensor) -> torch.Tensor:
    low, high = x.amin(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)
    return (x - low) / (high - low)


def _scheduler(ad: AnchorDiff):
    """A fresh copy of the pipeline's flow-matching scheduler with STEPS timesteps."""
    scheduler = type(ad.pipe.scheduler).from_config(ad.pipe.scheduler.config)
    scheduler.set_timesteps(STEPS)
    return scheduler


def _vae_latent(ad: AnchorDiff, image: Image.Image) -> torch.Tensor:
    """The clean latent by hand: VAE posterior mean of the image stretched to 128 px, ``(z - shift) * scale``."""
    vae = ad.pipe.vae
    pixels = ad.pipe.image_processor.preprocess(image.convert("RGB"), height=128, width=128)
    with torch.no_grad():
        z = vae.encode(pixels).latent_dist.mean
    return (z - vae.config.shift_factor) * vae.config.scaling_factor


@pytest.fixture(scope=shared_unless_mutating)
def generated(ad):
    """One CFG generation with the test's own hooks on every transformer call."""
    with Capture(ad.transformer) as capture:
        image, out = ad.generate(
            PROMPT,
            CONCEPTS,
            num_inference_steps=STEPS,
            guidance_scale=4.0,
            height=GEN_SIZE[1],
            width=GEN_SIZE[0],
            seed=1,
        )
    return SimpleNamespace(image=image, out=out, record=out.record, calls=capture.calls)


# -- 1. ConceptAttention maps -----------------------------------------------------------------------------
def test_concept_attention_maps_are_normalised_concept_outputs_dot_image_outputs(ad, generated):
    """Pins ``record.concept_maps`` under CFG (conditional row): per block, the concept stream's attention
    output (softmax over [concept; image] keys, mean over each concept's tokens), L2-normalised, dotted with
    the image stream's attention output before ``to_out``; and the ``concept_attention`` heatmaps: softmax
    over the concepts per block, mean over blocks, min-max per concept; anchors at their argmax."""
    record = generated.record
    assert len(generated.calls) == STEPS
    call = generated.calls[STEPS // 2]
    assert call["inputs"]["hidden_states"].shape[0] == 2  # CFG: [uncond; cond]
    counts = _content_counts(ad, CONCEPTS)
    naive = _naive_record(ad, call, row=1, counts=counts)
    torch.testing.assert_close(record.concept_outputs, naive["outputs"], atol=ATOL, rtol=RTOL)
    assert not torch.allclose(naive["outputs"].norm(dim=-1), torch.ones(()), atol=1e-2)  # norm matters
    torch.testing.assert_close(record.concept_maps, naive["maps"], atol=ATOL, rtol=RTOL)

    out = ad.heatmaps_from_record(record, method="concept_attention")
    token_maps = out.token_heatmaps.reshape(len(CONCEPTS), -1)
    probs = record.concept_maps.softmax(dim=1).mean(dim=0)  # (K, N): softmax over concepts, mean over blocks
    torch.testing.assert_close(token_maps, _minmax_rows(probs), atol=1e-5, rtol=0)
    gw = GEN_SIZE[0] // 8
    flat = probs.argmax(dim=1)
    assert torch.equal(out.anchors, torch.stack([flat // gw, flat % gw], dim=1))
    # The same probabilities from the naive maps (compared before the min-max, which stretches a small range).
    naive_probs = naive["maps"].softmax(dim=1).mean(dim=0)
    torch.testing.assert_close(probs, naive_probs, atol=1e-6, rtol=1e-5)


# -- 2. A_CI of a multi-token concept ---------------------------------------------------------------------
def test_a_ci_of_a_multi_token_concept_is_the_mean_of_its_token_rows(ad, image):
    """Pins A_CI (eq. 5): the image-only softmax(Q_c K_img^T / sqrt(d_h)) of each concept token (after the
    added qk-norm), averaged over heads, then over the concept's content tokens (CLIP + T5). For
    "alaskan malamute" (4 content tokens) the first token's row alone differs, so "take the first token"
    fails."""
    concepts = ["husky", "alaskan malamute"]
    with Capture(ad.transformer) as capture:
        record = ad.record(image, concepts, mode="noise", seed=2)
    (call,) = capture.calls
    counts = _content_counts(ad, concepts)
    assert counts == [2, 4] and record.concept_token_counts == counts
    m = sum(counts)
    for layer, block in enumerate(ad.transformer.transformer_blocks):
        naive = _naive_block(block.attn, call["layers"][layer], row=0, m=m)
        rows = naive["a_ci"]  # (m, N) per token
        torch.testing.assert_close(rows.sum(dim=1), torch.ones(m), atol=1e-6, rtol=0)
        expected = torch.stack([rows[:2].mean(dim=0), rows[2:].mean(dim=0)])
        torch.testing.assert_close(record.a_ci[layer], expected, atol=1e-6, rtol=RTOL)
        # The per-head loop, written out: softmax per head over image keys, then the head mean.
        c_q, k_img = naive["c_q"], naive["k_img"]
        per_head = [
            torch.softmax(c_q[h] @ k_img[h].T / math.sqrt(c_q.shape[-1]), dim=-1) for h in range(len(c_q))
        ]
        torch.testing.assert_close(sum(per_head) / len(per_head), rows, atol=1e-6, rtol=RTOL)
        assert not torch.allclose(record.a_ci[layer, 1], rows[2], atol=1e-5)  # not the first token


# -- 3. Concept embedding rows ----------------------------------------------------------------------------
def test_concept_rows_are_content_positions_of_encode_prompt(ad):
    """Pins ``encode_concepts``: each concept is encoded on its own; its rows are the CLIP positions that are
    not BOS/EOS/padding (both CLIP encoders' penultimate hidden states, concatenated per position) and the T5
    positions that are not EOS/padding, in order, through ``context_embedder``. Positions shifted by one
    (BOS or EOS included) give other rows."""
    pipe = ad.pipe
    clip, t5 = pipe.tokenizer, pipe.tokenizer_3
    clip_length = clip.model_max_length
    tokens = ad.encode_concepts(CONCEPTS)
    expected_rows, shifted_rows, counts = [], [], []
    for concept in CONCEPTS:
        with torch.no_grad():
            embeds = pipe.encode_prompt(
                prompt=concept,
                prompt_2=None,
                prompt_3=None,
                do_classifier_free_guidance=False,
                max_sequence_length=ad.max_sequence_length,
            )[0][0]  # (77 + T, joint_attention_dim)
        assert embeds.shape[0] == clip_length + ad.max_sequence_length
        clip_ids = clip(concept, padding="max_length", max_length=clip_length).input_ids
        t5_ids = t5(concept, padding="max_length", max_length=ad.max_sequence_length).input_ids
        special = {clip.bos_token_id, clip.eos_token_id, clip.pad_token_id}
        clip_pos = [i for i, t in enumerate(clip_ids) if t not in special]
        t5_pos = [
            clip_length + j for j, t in enumerate(t5_ids) if t not in {t5.eos_token_id, t5.pad_token_id}
        ]
        if concept == "alaskan malamute":  # two pieces in each tokenizer
            assert clip_pos == [1, 2] and t5_pos == [clip_length, clip_length + 1]
        # Both CLIP encoders: the CLIP rows are [CLIP-L; CLIP-G] penultimate hidden states at those positions.
        ids = torch.tensor([clip_ids])
        with torch.no_grad():
            both = torch.cat(
                [
                    encoder(ids, output_hidden_states=True).hidden_states[-2][0]
                    for encoder in (pipe.text_encoder, pipe.text_encoder_2)
                ],
                dim=-1,
            )
        width = both.shape[-1]
        torch.testing.assert_close(embeds[clip_pos, :width], both[clip_pos], atol=1e-6, rtol=1e-5)
        positions = clip_pos + t5_pos
        expected_rows.append(embeds[positions])
        shifted_rows.append(embeds[[p - 1 for p in positions]])  # BOS included / last CLIP piece as T5 row
        counts.append(len(positions))
    with torch.no_grad():
        expected = ad.transformer.context_embedder(torch.cat(expected_rows))
        shifted = ad.transformer.context_embedder(torch.cat(shifted_rows))
    assert counts == [2, 2, 4]
    assert tokens.hidden.shape == (1, sum(counts), ad.transformer.config.caption_projection_dim)
    torch.testing.assert_close(tokens.hidden[0], expected, atol=1e-6, rtol=1e-5)
    assert torch.equal(tokens.concept_index, torch.tensor([0, 0, 1, 1, 2, 2, 2, 2]))
    assert tokens.num_concepts == 3
    assert not torch.allclose(shifted, expected, atol=1e-3)


# -- 4. mode="noise" --------------------------------------------------------------------------------------
def test_noise_mode_feeds_the_flow_matching_interpolation_at_the_midpoint(ad_sd3, image):
    """Pins ``mode="noise"``: the one transformer call gets ``(1 - sigma) * x0 + sigma * eps`` with sigma =
    ``sigmas[num_inference_steps // 2]``, x0 the VAE latent, eps ``randn`` from ``Generator("cpu")`` seeded
    with ``seed``, at timestep ``sigma * 1000``; the prompt is "a photo of " + " and ".join(concepts)."""
    ad = ad_sd3
    with Capture(ad.transformer) as capture:
        record = ad.record(image, CONCEPTS, mode="noise", seed=7)
    (call,) = capture.calls
    x0 = _vae_latent(ad, image)
    eps = torch.randn(x0.shape, generator=torch.Generator("cpu").manual_seed(7))
    scheduler = _scheduler(ad)
    sigma = float(scheduler.sigmas[STEPS // 2])
    expected = (1 - sigma) * x0 + sigma * eps
    torch.testing.assert_close(call["inputs"]["hidden_states"], expected, atol=ATOL, rtol=RTOL)
    wrong = (1 - scheduler.sigmas[STEPS // 2 + 1]) * x0 + scheduler.sigmas[STEPS // 2 + 1] * eps
    assert not torch.allclose(wrong, expected, atol=1e-3)
    assert float(call["inputs"]["timestep"][0]) == pytest.approx(sigma * 1000, rel=1e-5)
    assert record.timestep == pytest.approx(sigma * 1000, rel=1e-5)
    assert record.prompt == "a photo of husky and wolf and alaskan malamute"


# -- 5. mode="invert" -------------------------------------------------------------------------------------
def test_inversion_with_a_constant_velocity_reaches_x0_plus_sigma_v(ad_sd3, image):
    """Pins ``mode="invert"``: deterministic Euler flow-matching inversion ``x <- x + (sigma_next - sigma) v``
    from sigma = 0 upwards; with the transformer's velocity stubbed (by a forward hook) to a constant v every
    call j sees ``x0 + sigma_j * v``, the recorded one ``x0 + sigmas[n // 2] * v`` (a flipped sign gives
    ``x0 - sigma * v``)."""
    ad = ad_sd3
    velocity = torch.randn(1, 16, 32, 32, generator=torch.Generator().manual_seed(11))
    with Capture(ad.transformer, velocity=velocity) as capture:
        ad.record(image, ["husky", "wolf"], mode="invert")
    sigmas = [float(s) for s in _scheduler(ad).sigmas]  # (n + 1,) descending, last 0
    x0 = _vae_latent(ad, image)
    # The calls: sigma_n = 0, sigma_{n-1}, ..., sigma_{n//2 + 1}, then the recorded one at sigma_{n//2}.
    visited = list(range(STEPS, STEPS // 2, -1)) + [STEPS // 2]
    assert len(capture.calls) == len(visited)
    for call, index in zip(capture.calls, visited, strict=True):
        expected = x0 + sigmas[index] * velocity
        torch.testing.assert_close(call["inputs"]["hidden_states"], expected, atol=ATOL, rtol=RTOL)
        assert float(call["inputs"]["timestep"][0]) == pytest.approx(sigmas[index] * 1000, rel=1e-5, abs=1e-4)
    flipped = x0 - sigmas[STEPS // 2] * velocity
    assert not torch.allclose(flipped, capture.calls[-1]["inputs"]["hidden_states"], atol=1e-3)


def test_guided_inversion_steps_with_the_guided_velocity(image):
    """``inversion_guidance_scale`` s > 1: each inversion call is a batch [unconditional ""; prompt] and
    the step uses ``v_u + s (v_c - v_u)``; with the two rows' velocities stubbed to constants, call j sees
    ``x0 + sigma_j (v_u + s (v_c - v_u))`` on both rows (the recorded forward, batch 1, is not guided)."""
    ad = AnchorDiff.from_pretrained(
        "tiny", preset="sd3", num_inference_steps=STEPS, inversion_guidance_scale=3.0
    )
    g = torch.Generator().manual_seed(12)
    v_u, v_c = torch.randn(1, 16, 32, 32, generator=g), torch.randn(1, 16, 32, 32, generator=g)
    calls = []

    def stub(module, args, kwargs, output):
        calls.append({k: v.detach().clone() for k, v in kwargs.items() if torch.is_tensor(v)})
        rows = torch.cat([v_u, v_c]) if output[0].shape[0] == 2 else v_c
        return (rows.to(output[0].dtype),)

    handle = ad.transformer.register_forward_hook(stub, with_kwargs=True)
    try:
        ad.record(image, ["husky", "wolf"], mode="invert")
    finally:
        handle.remove()
    with torch.no_grad():
        empty = ad.pipe.encode_prompt(prompt="", prompt_2=None, prompt_3=None, do_classifier_free_guidance=False,
                                      max_sequence_length=ad.max_sequence_length)[0]  # fmt: skip
    sigmas = [float(s) for s in _scheduler(ad).sigmas]
    x0 = _vae_latent(ad, image)
    guided = v_u + 3.0 * (v_c - v_u)
    visited = list(range(STEPS, STEPS // 2, -1)) + [STEPS // 2]
    assert [c["hidden_states"].shape[0] for c in calls] == [2] * (len(visited) - 1) + [1]
    for call, index in zip(calls, visited, strict=True):
        for row in call["hidden_states"]:
            torch.testing.assert_close(row[None], x0 + sigmas[index] * guided, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(calls[0]["encoder_hidden_states"][:1], empty)
    assert not torch.allclose(calls[0]["encoder_hidden_states"][1:], empty, atol=1e-3)


# -- 6. VAE latent ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("shift", "scale"), [(None, None), (0.5, 2.0)])
def test_vae_latent_is_shifted_then_scaled(image, shift, scale):
    """Pins ``_encode_image``: the VAE posterior mode (mean) of the image stretched to the native size, then
    ``(z - shift_factor) * scaling_factor`` read from the VAE config (SD3's 0.0609 / 1.5305, and 0.5 / 2.0
    set for the test), so that dropping the shift, the scale, or swapping their order fails."""
    ad = AnchorDiff.from_pretrained("tiny", preset="sd3", num_inference_steps=STEPS)
    vae = ad.pipe.vae
    if shift is not None:
        vae.register_to_config(shift_factor=shift, scaling_factor=scale)
    shift, scale = vae.config.shift_factor, vae.config.scaling_factor
    assert shift != 0.0 and scale != 1.0
    pixels = ad.pipe.image_processor.preprocess(image, height=128, width=128)
    assert pixels.shape == (1, 3, 128, 128)
    with torch.no_grad():
        z = vae.encode(pixels).latent_dist.mean
        latent = ad._encode_image(image, seed=0)
    expected = (z - shift) * scale
    assert latent.shape == (1, 16, 32, 32) and latent.dtype == torch.float32
    torch.testing.assert_close(latent, expected, atol=1e-6, rtol=1e-5)
    for wrong in (z * scale, z - shift, z * scale - shift):
        assert not torch.allclose(wrong, expected, atol=1e-3)


# -- 7. generate() records the conditional CFG row --------------------------------------------------------
def test_generate_records_the_conditional_row_of_the_midpoint_step(ad, generated):
    """Pins ``generate``: under CFG the recorded step is call ``num_inference_steps // 2`` and its record
    (A_CI, concept outputs and maps, A_II, O_II) equals a recording run by hand on that call's conditional
    row alone (row 1 of [uncond; cond], checked against the prompt's own embedding); the unconditional row
    gives a different record."""
    record = generated.record
    step = STEPS // 2
    inputs = generated.calls[step]["inputs"]
    with torch.no_grad():
        cond_embeds = ad.pipe.encode_prompt(
            prompt=PROMPT,
            prompt_2=None,
            prompt_3=None,
            do_classifier_free_guidance=False,
            max_sequence_length=ad.max_sequence_length,
        )[0]
    torch.testing.assert_close(inputs["encoder_hidden_states"][1:], cond_embeds)
    assert not torch.allclose(inputs["encoder_hidden_states"][:1], cond_embeds, atol=1e-3)
    assert record.timestep == pytest.approx(float(inputs["timestep"][0]))
    assert record.graph_layers == ad.graph_layers

    def by_hand(row: int):
        rows = {k: v[row : row + 1] for k, v in inputs.items()}
        recorder = AttentionRecorder(
            ad.transformer, graph_layers=ad.graph_layers, concepts=ad.encode_concepts(CONCEPTS)
        )
        with torch.no_grad(), recorder:
            ad.transformer(**rows, return_dict=False)
        state = recorder.state
        layers = range(len(ad.transformer.transformer_blocks))
        return state, {
            "a_ci": torch.stack([state.a_ci[x] for x in layers]),
            "concept_outputs": torch.stack([state.concept_outputs[x] for x in layers]),
            "concept_maps": torch.stack([state.concept_maps[x] for x in layers]),
        }

    cond_state, cond = by_hand(1)
    uncond_state, uncond = by_hand(0)
    for name in ("a_ci", "concept_outputs", "concept_maps"):
        torch.testing.assert_close(getattr(record, name), cond[name], atol=ATOL, rtol=RTOL)
        assert not torch.allclose(getattr(record, name), uncond[name], atol=1e-4)
    for layer in ad.graph_layers:
        torch.testing.assert_close(record.a_ii[layer], cond_state.a_ii[layer], atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(record.o_ii[layer], cond_state.o_ii[layer], atol=ATOL, rtol=RTOL)
        assert not torch.allclose(record.o_ii[layer], uncond_state.o_ii[layer], atol=1e-4)
    # And independently of the recorder: A_CI from the test's own hooks on the conditional row.
    naive = _naive_record(ad, generated.calls[step], row=1, counts=_content_counts(ad, CONCEPTS))
    torch.testing.assert_close(record.a_ci, naive["a_ci"], atol=ATOL, rtol=RTOL)


# -- 8. Seg4Diff's image-to-text attention ---------------------------------------------------------------
def _prompt_positions_by_hand(ad: AnchorDiff, prompt: str, concepts: list[str]) -> list[list[int]]:
    """Concept k's CLIP positions in the prompt from a word-by-word tokenization (BOS at 0): the words of
    each concept are found in the prompt's word list, their pieces counted from the words before."""
    tokenizer = ad.pipe.tokenizer
    words = prompt.split()
    starts = [1]
    for word in words:
        starts.append(starts[-1] + len(tokenizer(word, add_special_tokens=False).input_ids))
    found = []
    for concept in concepts:
        parts = concept.split()
        hits = [i for i in range(len(words)) if words[i : i + len(parts)] == parts]
        found.append(list(range(starts[hits[0]], starts[hits[0] + len(parts)])) if hits else [])
    return found


def _naive_i2t(
    attn: torch.nn.Module, captured: dict, row: int, prompt_length: int, positions: list[list[int]]
):
    """(K, N) joint and CLIP-only image-to-text attention of each concept's prompt positions, from the
    captured projections of one block: image queries / keys from ``to_q`` / ``to_k``, prompt keys from the
    ``add_k_proj`` call on the prompt (its (B, 77 + T5, D) output), after the block's qk-norms."""
    heads = attn.heads
    (q_out,), (k_out,) = captured["to_q"], captured["to_k"]
    (prompt_k,) = [o for o in captured["add_k_proj"] if o.shape[1] == prompt_length]
    q, k_img, k_txt = _heads(q_out[row], heads), _heads(k_out[row], heads), _heads(prompt_k[row], heads)
    with torch.no_grad():
        if attn.norm_q is not None:
            q, k_img = attn.norm_q(q), attn.norm_k(k_img)
        if attn.norm_added_k is not None:
            k_txt = attn.norm_added_k(k_txt)
    scale = 1.0 / math.sqrt(q.shape[-1])
    n = q.shape[1]
    joint = torch.softmax(q @ torch.cat([k_img, k_txt], dim=1).transpose(1, 2) * scale, dim=-1)  # (H, N, N+T)
    clip = torch.softmax(q @ k_txt[:, :77].transpose(1, 2) * scale, dim=-1)  # (H, N, 77)
    nan = torch.full((n,), float("nan"))
    return (
        torch.stack([joint[:, :, [n + j for j in p]].mean(dim=(0, 2)) if p else nan for p in positions]),
        torch.stack([clip[:, :, p].mean(dim=(0, 2)) if p else nan for p in positions]),
    )


def test_seg4diff_maps_are_image_to_prompt_attention_of_each_concepts_tokens(ad, image):
    """Pins Seg4Diff's recording and maps (docs/seg4diff.md 1-5): per block, the head mean of
    softmax(Q_img [K_img; K_prompt]^T / sqrt(d_h)) over ALL joint keys, at each concept's CLIP positions in
    the prompt (found here by a word-by-word tokenization), averaged over those positions ("alaskan malamute"
    is two: neither alone); ``i2t_clip`` with the softmax over the 77 CLIP keys alone; ``seg4diff`` = the
    mean over ``ad.seg4diff_layers`` (or ``layers``), min-max, without any normalisation before; the
    ``seg4diff_softmax="clip"`` option reads ``i2t_clip``."""
    concepts = ["husky", "wolf", "alaskan malamute"]
    with Capture(ad.transformer) as capture:
        record = ad.record(image, concepts, mode="noise", seed=2)
    (call,) = capture.calls
    positions = _prompt_positions_by_hand(ad, record.prompt, concepts)
    assert record.prompt == "a photo of husky and wolf and alaskan malamute"
    assert record.prompt_positions == positions and [len(p) for p in positions] == [1, 1, 2]
    prompt_length = 77 + ad.max_sequence_length
    for layer, block in enumerate(ad.transformer.transformer_blocks):
        joint, clip = _naive_i2t(block.attn, call["layers"][layer], 0, prompt_length, positions)
        torch.testing.assert_close(record.i2t_joint[layer], joint, atol=1e-7, rtol=1e-5)
        torch.testing.assert_close(record.i2t_clip[layer], clip, atol=1e-7, rtol=1e-5)
        assert not torch.allclose(joint, clip, rtol=0.05)  # the two softmaxes differ
        _, clip_first_piece = _naive_i2t(
            block.attn, call["layers"][layer], 0, prompt_length, [positions[2][:1]]
        )
        assert not torch.allclose(record.i2t_clip[layer, 2], clip_first_piece[0], rtol=1e-3)

    layers = ad.seg4diff_layers
    assert layers == (1,)
    out = ad.heatmaps_from_record(record, method="seg4diff")
    expected = _minmax_rows(record.i2t_joint[list(layers)].mean(dim=0))
    torch.testing.assert_close(out.token_heatmaps.reshape(3, -1), expected, atol=1e-6, rtol=0)
    both = ad.heatmaps_from_record(record, method="seg4diff", layers=(1, 2))
    expected = _minmax_rows(record.i2t_joint[[1, 2]].mean(dim=0))
    torch.testing.assert_close(both.token_heatmaps.reshape(3, -1), expected, atol=1e-6, rtol=0)
    clip_ad = AnchorDiff(ad.pipe, model="tiny", preset=ad.preset, options=dataclasses.replace(
        ad.options, seg4diff_softmax="clip", seg4diff_layers=(2,)))  # fmt: skip
    clip_out = clip_ad.heatmaps_from_record(record, method="seg4diff")
    torch.testing.assert_close(
        clip_out.token_heatmaps.reshape(3, -1), _minmax_rows(record.i2t_clip[2]), atol=1e-6, rtol=0
    )


def test_seg4diff_reads_the_conditional_row_and_refuses_concepts_not_in_the_prompt(ad, generated):
    """Under CFG the recorded image-to-text attention is the conditional row's (row 1), pinned against the
    test's own hooks; "alaskan malamute" is not in PROMPT, so its rows are NaN and ``seg4diff`` raises a
    ValueError naming it (the other methods still work on the same record)."""
    record = generated.record
    positions = _prompt_positions_by_hand(ad, PROMPT, CONCEPTS)
    assert record.prompt_positions == positions and positions[2] == []
    call = generated.calls[STEPS // 2]
    prompt_length = 77 + ad.max_sequence_length
    for layer, block in enumerate(ad.transformer.transformer_blocks):
        cond, _ = _naive_i2t(block.attn, call["layers"][layer], 1, prompt_length, positions[:2])
        uncond, _ = _naive_i2t(block.attn, call["layers"][layer], 0, prompt_length, positions[:2])
        torch.testing.assert_close(record.i2t_joint[layer, :2], cond, atol=1e-7, rtol=1e-5)
        assert not torch.allclose(record.i2t_joint[layer, :2], uncond, rtol=1e-3)
    assert torch.isnan(record.i2t_joint[:, 2]).all() and torch.isnan(record.i2t_clip[:, 2]).all()
    with pytest.raises(ValueError, match="alaskan malamute"):
        ad.heatmaps_from_record(record, method="seg4diff")
    assert ad.heatmaps_from_record(record, method="cross_attention").token_heatmaps.isfinite().all()


# -- 9. Defaults ------------------------------------------------------------------------------------------
def _defaults(function) -> dict:
    return {
        name: p.default
        for name, p in inspect.signature(function).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def _stub_pipe(num_layers: int) -> SimpleNamespace:
    """Just what ``AnchorDiff.__init__`` reads of a real SD3 / SD3.5 pipeline (1024 px native)."""
    config = SimpleNamespace(patch_size=2, sample_size=128, pos_embed_max_size=192)
    transformer = SimpleNamespace(
        transformer_blocks=[None] * num_layers, device=torch.device("cpu"), dtype=torch.float32, config=config
    )
    return SimpleNamespace(transformer=transformer, vae_scale_factor=8)


def test_every_default_is_the_paper_faithful_one():
    """Pins, as literals from method.md, every default: the options ([decision]s), the keyword defaults of
    ``__call__`` / ``record`` / ``heatmaps_from_record`` / ``generate`` (method anchordiff, mode invert,
    N_diff 160, tau_W quantile 0.98), the preset graph layers {9, 18} / {23, 31}, the midpoint step
    ``num_inference_steps // 2`` and the prompt template ``"a photo of " + " and ".join(concepts)``."""
    defaults = {f.name: f.default for f in dataclasses.fields(AnchorDiffOptions)}
    assert defaults == {
        "prompt_template": "a photo of {concepts}",
        "concept_separator": " and ",
        "num_inference_steps": 28,
        "timestep_index": None,
        "graph_layers": None,
        "concept_pass": "joint",
        "o_ii_heads": "concat",
        "inversion_guidance_scale": 1.0,
        "vae_latent": "mode",
        "max_sequence_length": None,
        "resolution": None,
        "head_chunk_mb": 512,
        "clamp_negative": True,
        "empty_row": "self_loop",
        # anchordiff_multi only (beyond the paper, issue 16); the paper's method never reads them
        "max_anchors": 3,
        "anchor_threshold": 0.5,
        "anchor_radius": 0.1,
        # seg4diff only (issue 16): the preset's expert blocks, Seg4Diff's softmax over all joint keys
        "seg4diff_layers": None,
        "seg4diff_softmax": "joint",
    }
    for n in (1, 2, 4, 5, 7, 28, 50):
        assert AnchorDiffOptions(num_inference_steps=n).recorded_step == n // 2
    assert AnchorDiffOptions().recorded_step == 14
    assert AnchorDiffOptions(num_inference_steps=6, timestep_index=1).recorded_step == 1

    assert _defaults(AnchorDiff.__call__) == {
        "mode": "invert",
        "prompt": None,
        "method": "anchordiff",
        "layers": None,
        "steps": 160,
        "gate_quantile": 0.98,
        "seed": 0,
        "return_record": False,
    }
    assert _defaults(AnchorDiff.record) == {"mode": "invert", "prompt": None, "graph_layers": None, "seed": 0}
    assert _defaults(AnchorDiff.heatmaps_from_record) == {
        "method": "anchordiff",
        "layers": None,
        "steps": 160,
        "gate_quantile": 0.98,
        "anchor_layers": None,
    }
    assert _defaults(AnchorDiff.generate) == {
        "num_inference_steps": 28,
        "guidance_scale": 7.0,
        "height": None,
        "width": None,
        "seed": 0,
        "negative_prompt": None,
        "method": "anchordiff",
        "layers": None,
        "steps": 160,
        "gate_quantile": 0.98,
    }
    from anchordiff import graph
    from anchordiff.attention import image_self_attention

    for function in (graph.build_graph, graph.anchordiff_heatmaps):
        found = _defaults(function)
        assert found["gate_quantile"] == 0.98 and found["clamp_negative"] is True
        assert found["empty_row"] == "self_loop" and found["use_gate"] is True and found["use_wcos"] is True
    assert _defaults(graph.anchordiff_heatmaps)["steps"] == 160
    assert _defaults(graph.propagate)["steps"] == 160 and _defaults(graph.propagate_scores)["steps"] == 160
    assert _defaults(image_self_attention)["o_ii_mode"] == "concat"
    assert _defaults(AttentionRecorder.__init__)["o_ii_mode"] == "concat"

    # The presets' graph layers, resolution and T5 length, as resolved for real SD3 / SD3.5 pipelines.
    for preset, blocks, layers, seg4diff in (("sd3", 24, (9, 18), (9,)), ("sd35", 38, (23, 31), (14,))):
        ad = AnchorDiff(_stub_pipe(blocks), model="custom", preset=preset)
        assert ad.graph_layers == layers and ad.resolution == 1024 and ad.max_sequence_length == 256
        assert ad.seg4diff_layers == seg4diff and ad.config["seg4diff_layers"] == list(seg4diff)
        assert ad.config["graph_layers"] == list(layers) and ad.config["recorded_step"] == 14
        assert ad.config["default_mode"] == "invert" and ad.config["default_steps"] == 160
        assert ad.config["default_gate_quantile"] == 0.98
        concepts = ["husky", "wolf", "alaskan malamute"]
        assert ad._check_prompt(None, concepts) == "a photo of " + " and ".join(concepts)
    assert AnchorDiff(_stub_pipe(24), preset="sd3").preset == "sd3"
