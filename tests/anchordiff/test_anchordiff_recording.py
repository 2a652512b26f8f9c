"""The attention recorder and the concept stream on tiny SD3 / SD3.5-style transformers (CPU, float32)."""

from __future__ import annotations

import math

import pytest
import torch
from fixture_scopes import shared_unless_mutating

from anchordiff.attention import (
    AttentionRecorder,
    ConceptTokens,
    RecordingJointAttnProcessor,
    image_only_softmax,
    image_self_attention,
)
from anchordiff.backbones import build_tiny_pipeline

TOL = 1e-5
GRAPH_LAYERS = (1, 2)


@pytest.fixture(scope=shared_unless_mutating, params=["sd3", "sd35"])
def pipe(request):
    return build_tiny_pipeline(request.param)


def _inputs(transformer, batch: int = 1, text_tokens: int = 7, latent: int = 16, seed: int = 0) -> dict:
    """Random transformer inputs: (B, C, latent, latent) latents -> an (latent/2)^2 token grid."""
    config = transformer.config
    g = torch.Generator().manual_seed(seed)
    return {
        "hidden_states": torch.randn(batch, config.in_channels, latent, latent, generator=g),
        "encoder_hidden_states": torch.randn(batch, text_tokens, config.joint_attention_dim, generator=g),
        "pooled_projections": torch.randn(batch, config.pooled_projection_dim, generator=g),
        "timestep": torch.full((batch,), 500.0),
        "return_dict": False,
    }


def _concepts(transformer, counts=(1, 3), seed: int = 1) -> ConceptTokens:
    """Random concept tokens: concept k has counts[k] tokens."""
    g = torch.Generator().manual_seed(seed)
    embeds = torch.randn(sum(counts), transformer.config.joint_attention_dim, generator=g)
    with torch.no_grad():
        hidden = transformer.context_embedder(embeds)[None]
    index = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    return ConceptTokens(hidden, index, len(counts))


def _run(transformer, inputs, **recorder_kwargs):
    with torch.no_grad(), AttentionRecorder(transformer, **recorder_kwargs) as recorder:
        output = transformer(**inputs)[0]
    return output, recorder.state


@pytest.mark.parametrize("with_concepts", [False, True])
def test_recording_changes_no_output(pipe, with_concepts):
    transformer = pipe.transformer
    inputs = _inputs(transformer)
    with torch.no_grad():
        reference = transformer(**inputs)[0]
    concepts = _concepts(transformer) if with_concepts else None
    output, state = _run(transformer, inputs, graph_layers=GRAPH_LAYERS, concepts=concepts)
    assert (output - reference).abs().max().item() <= TOL
    assert state.recorded_forwards == 1
    assert sorted(state.a_ii) == list(GRAPH_LAYERS)
    num_blocks = len(transformer.transformer_blocks)
    assert sorted(state.a_ci) == (list(range(num_blocks)) if with_concepts else [])


def test_recording_during_pipeline_generation_changes_no_latents(pipe):
    """A full denoising run (CFG, recorder armed at the midpoint step by a callback) gives the same latents."""
    args = {
        "prompt": "a photo of a husky",
        "num_inference_steps": 4,
        "guidance_scale": 5.0,
        "height": 64,
        "width": 64,
        "max_sequence_length": 16,
        "output_type": "latent",
    }
    pipe.set_progress_bar_config(disable=True)
    reference = pipe(generator=torch.Generator().manual_seed(0), **args).images
    recorder = AttentionRecorder(
        pipe.transformer,
        graph_layers=GRAPH_LAYERS,
        concepts=_concepts(pipe.transformer),
        cfg=True,
        armed=False,
    )

    def arm(pipeline, i, t, kwargs):
        if i + 1 == 2:
            recorder.arm()
        return {}

    with recorder:
        latents = pipe(generator=torch.Generator().manual_seed(0), callback_on_step_end=arm, **args).images
    assert recorder.state.recorded_forwards == 1
    assert (latents - reference).abs().max().item() <= TOL
    assert recorder.state.a_ii[1].shape == (64, 64)  # 64 px / VAE 4 / patch 2 = an 8 x 8 grid


def test_a_ii_rows_sum_to_one_and_o_ii_shape(pipe):
    transformer = pipe.transformer
    _, state = _run(
        transformer, _inputs(transformer), graph_layers=GRAPH_LAYERS, concepts=_concepts(transformer)
    )
    heads = transformer.config.num_attention_heads
    head_dim = transformer.config.attention_head_dim
    n = 8 * 8
    for layer in GRAPH_LAYERS:
        a_ii, o_ii = state.a_ii[layer], state.o_ii[layer]
        assert a_ii.shape == (n, n) and a_ii.dtype == torch.float32
        assert bool((a_ii >= 0).all())
        torch.testing.assert_close(a_ii.sum(dim=1), torch.ones(n), atol=1e-6, rtol=0)
        assert o_ii.shape == (n, heads * head_dim) and o_ii.dtype == torch.float32
    for a_ci in state.a_ci.values():
        assert a_ci.shape == (2, n)
        torch.testing.assert_close(a_ci.sum(dim=1), torch.ones(2), atol=1e-6, rtol=0)


def test_a_ii_matches_reference_with_qk_norm(pipe):
    """A_II / O_II equal a naive computation from the block's attention inputs, qk-norm included."""
    transformer = pipe.transformer
    layer = GRAPH_LAYERS[1]
    attn = transformer.transformer_blocks[layer].attn
    captured = {}

    def capture(module, args, kwargs):
        captured["x"] = kwargs["hidden_states"]

    handle = attn.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        _, state = _run(transformer, _inputs(transformer), graph_layers=(layer,))
    finally:
        handle.remove()
    x = captured["x"][0]  # (N, D) normalised image tokens of the block
    heads = attn.heads
    with torch.no_grad():
        q = attn.to_q(x).view(len(x), heads, -1).transpose(0, 1)
        k = attn.to_k(x).view(len(x), heads, -1).transpose(0, 1)
        v = attn.to_v(x).view(len(x), heads, -1).transpose(0, 1)
        if attn.norm_q is not None:
            q, k = attn.norm_q(q), attn.norm_k(k)
    probs = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(q.shape[-1]), dim=-1)  # (H, N, N)
    torch.testing.assert_close(state.a_ii[layer], probs.mean(0), atol=1e-6, rtol=1e-5)
    expected_o = (probs @ v).transpose(0, 1).reshape(len(x), -1)  # heads concatenated
    torch.testing.assert_close(state.o_ii[layer], expected_o, atol=1e-5, rtol=1e-5)
    if transformer.config.qk_norm:  # the SD3.5-style model really normalises
        raw = attn.to_q(x).view(len(x), heads, -1).transpose(0, 1)
        assert not torch.allclose(raw, q)


def test_image_self_attention_chunking_and_modes():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(5, 40, 8, generator=g) for _ in range(3))
    probs = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(8), dim=-1)
    for chunk_bytes in (1, 2 * 4 * 40 * 40 * 2, 2**30):  # one head per chunk, two, all
        a_ii, o_ii = image_self_attention(q, k, v, head_chunk_bytes=chunk_bytes)
        torch.testing.assert_close(a_ii, probs.mean(0), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(o_ii, (probs @ v).transpose(0, 1).reshape(40, 40), atol=1e-5, rtol=1e-5)
    _, o_mean = image_self_attention(q, k, v, o_ii_mode="mean_attention")
    torch.testing.assert_close(
        o_mean, (probs.mean(0) @ v).transpose(0, 1).reshape(40, 40), atol=1e-5, rtol=1e-5
    )
    a_ci = image_only_softmax(q[:, :3], k)
    torch.testing.assert_close(a_ci, probs[:, :3].mean(0), atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="o_ii_mode"):
        image_self_attention(q, k, v, o_ii_mode="sum")


def test_a_ii_o_ii_identical_with_and_without_concepts(pipe):
    transformer = pipe.transformer
    inputs = _inputs(transformer)
    _, plain = _run(transformer, inputs, graph_layers=GRAPH_LAYERS)
    _, joint = _run(transformer, inputs, graph_layers=GRAPH_LAYERS, concepts=_concepts(transformer))
    for layer in GRAPH_LAYERS:
        assert torch.equal(plain.a_ii[layer], joint.a_ii[layer])
        assert torch.equal(plain.o_ii[layer], joint.o_ii[layer])


def test_cfg_records_the_conditional_half(pipe):
    transformer = pipe.transformer
    cond = _inputs(transformer, seed=0)
    uncond = _inputs(transformer, seed=5)
    uncond["hidden_states"] = cond["hidden_states"]  # CFG: same latents, different text
    both = {
        key: torch.cat([uncond[key], cond[key]]) if torch.is_tensor(cond[key]) else cond[key] for key in cond
    }
    concepts = _concepts(transformer)
    _, single = _run(transformer, cond, graph_layers=GRAPH_LAYERS, concepts=concepts)
    _, single_uncond = _run(transformer, uncond, graph_layers=GRAPH_LAYERS, concepts=concepts)
    _, batched = _run(transformer, both, graph_layers=GRAPH_LAYERS, concepts=concepts, cfg=True)
    _, no_cfg = _run(transformer, both, graph_layers=GRAPH_LAYERS, concepts=concepts, cfg=False)
    for layer in GRAPH_LAYERS:
        torch.testing.assert_close(batched.a_ii[layer], single.a_ii[layer], atol=TOL, rtol=TOL)
        torch.testing.assert_close(batched.o_ii[layer], single.o_ii[layer], atol=TOL, rtol=TOL)
        torch.testing.assert_close(no_cfg.a_ii[layer], single_uncond.a_ii[layer], atol=TOL, rtol=TOL)
        assert not torch.allclose(batched.a_ii[layer], no_cfg.a_ii[layer], atol=1e-4)
    last = len(transformer.transformer_blocks) - 1
    torch.testing.assert_close(batched.a_ci[last], single.a_ci[last], atol=TOL, rtol=TOL)
    with pytest.raises(RuntimeError, match="even batch"):
        _run(transformer, _inputs(transformer, batch=3), graph_layers=GRAPH_LAYERS, cfg=True)


def test_concept_stream_equals_context_stream_when_concepts_are_the_prompt(pipe):
    """Concept tokens equal to the prompt tokens see the same keys ([prompt; image] in another order), so the
    concept stream must follow the model's own context stream block by block (norm1_context with the block's
    temb, qk-norm, to_add_out, gates, norm2_context, ff_context), here under CFG on the conditional row."""
    transformer = pipe.transformer
    cond = _inputs(transformer, seed=0)
    uncond = _inputs(transformer, seed=3)
    both = {
        key: torch.cat([uncond[key], cond[key]]) if torch.is_tensor(cond[key]) else cond[key] for key in cond
    }
    text = cond["encoder_hidden_states"][0]
    with torch.no_grad():
        hidden = transformer.context_embedder(text)[None]
    tokens = ConceptTokens(hidden, torch.arange(len(text)), len(text))
    recorder = AttentionRecorder(transformer, graph_layers=(), concepts=tokens, cfg=True)
    pairs = []

    def compare(block, args, kwargs, output):  # runs after the recorder's own block hook
        if output[0] is not None:
            pairs.append((recorder.state.concept_hidden[0].clone(), output[0][1].clone()))

    with torch.no_grad(), recorder:
        handles = [
            block.register_forward_hook(compare, with_kwargs=True) for block in transformer.transformer_blocks
        ]
        try:
            transformer(**both)
        finally:
            for handle in handles:
                handle.remove()
    assert len(pairs) == len(transformer.transformer_blocks) - 1  # the last block has no context output
    for concept_stream, context_stream in pairs:
        torch.testing.assert_close(concept_stream, context_stream, atol=1e-4, rtol=1e-4)
    # The concepts carried through every block, the context_pre_only last block included.
    assert sorted(recorder.state.a_ci) == list(range(len(transformer.transformer_blocks)))


def test_processors_restored_after_exit_and_on_exception(pipe):
    transformer = pipe.transformer
    before = {name: proc for name, proc in transformer.attn_processors.items()}
    inputs = _inputs(transformer)
    recorder = AttentionRecorder(transformer, graph_layers=GRAPH_LAYERS, concepts=_concepts(transformer))
    with recorder:
        installed = transformer.attn_processors
        recording = [
            name for name, proc in installed.items() if isinstance(proc, RecordingJointAttnProcessor)
        ]
        assert len(recording) == len(transformer.transformer_blocks)
        assert all(name.endswith(".attn.processor") for name in recording)  # SD3.5 attn2 untouched
        with torch.no_grad():
            transformer(**inputs)
    assert transformer.attn_processors == before
    assert not transformer._forward_pre_hooks and not transformer._forward_hooks
    assert all(
        not block._forward_pre_hooks and not block._forward_hooks for block in transformer.transformer_blocks
    )

    with (
        pytest.raises(KeyError, match="boom"),
        AttentionRecorder(transformer, graph_layers=GRAPH_LAYERS, concepts=_concepts(transformer)),
    ):
        raise KeyError("boom")
    assert transformer.attn_processors == before
    assert not transformer._forward_pre_hooks and not transformer._forward_hooks
    assert all(
        not block._forward_pre_hooks and not block._forward_hooks for block in transformer.transformer_blocks
    )


def test_recorder_records_once_then_runs_original_processors(pipe):
    transformer = pipe.transformer
    inputs = _inputs(transformer)
    with torch.no_grad(), AttentionRecorder(transformer, graph_layers=GRAPH_LAYERS) as recorder:
        transformer(**inputs)
        first = recorder.state.a_ii[1].clone()
        transformer(**_inputs(transformer, seed=9))
        assert recorder.state.recorded_forwards == 1
        assert torch.equal(recorder.state.a_ii[1], first)  # the second forward was not recorded
        recorder.arm()
        transformer(**_inputs(transformer, seed=9))
        assert recorder.state.recorded_forwards == 2
        assert not torch.equal(recorder.state.a_ii[1], first)


def test_recorder_rejects_bad_arguments(pipe):
    transformer = pipe.transformer
    with pytest.raises(ValueError, match="out of range"):
        AttentionRecorder(transformer, graph_layers=(len(transformer.transformer_blocks),))
    with pytest.raises(TypeError, match="SD3Transformer2DModel"):
        AttentionRecorder(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="at least one token"):
        ConceptTokens(torch.zeros(1, 2, 4), torch.tensor([0, 0]), 2)
