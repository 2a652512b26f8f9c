"""Attention recording on a diffusers ``SD3Transformer2DModel``, with a ConceptAttention-style concept stream.

What is recorded (``method.md``, eqs. 3-6), for ONE batch row (the conditional sample under CFG):

- ``a_ii[layer]`` (N, N) float32: the image-only self-attention ``softmax(Q_img K_img^T / sqrt(d_h))``, a
  softmax over the image keys alone (rows sum to 1), averaged over heads. Computed head-chunk by head-chunk
  with float32 accumulation; never all heads at once. Only at the graph layers.
- ``o_ii[layer]`` (N, heads * d_h) float32: ``A_II V_img`` per head, heads concatenated in the layout the
  output projection reads (column ``h * d_h + j``), taken before ``to_out``. Graph layers only.
- ``a_ci[layer]`` (K, N) float32: concept-to-image attention ``softmax(Q_concept K_img^T / sqrt(d_h))`` over
  image keys only, averaged over heads and over each concept's content tokens. Every layer.
- ``concept_outputs[layer]`` (K, heads * d_h) and ``concept_maps[layer]`` (K, N): ConceptAttention's
  output-space quantities (concept-stream attention outputs averaged over each concept's tokens, and their
  dot products, after L2-normalising the concept vectors, with the image stream's joint-attention outputs),
  both before the output projections. Every layer.
- ``i2t_joint[layer]`` and ``i2t_clip[layer]`` (K, N): Seg4Diff's image-to-text attention, the probability
  that image query i gives to each concept's tokens *in the prompt* (:class:`PromptTokens`), averaged over
  heads and the concept's tokens; the softmax over all joint keys [image; prompt] (``i2t_joint``) or over the
  prompt's CLIP keys alone (``i2t_clip``). Every layer, when the prompt's concept positions are given.

Queries and keys are taken after the block's qk-norm (SD3.5: RMS norm), exactly as ``JointAttnProcessor2_0``
uses them. Token index ``i`` of an N-token image is row-major on the ``(gh, gw)`` patch grid.

The concept stream: each concept's content tokens (encoded by the pipeline's own text encoders, projected by
``context_embedder``; see ``anchordiff.pipeline``) travel through every block on that block's context-stream
weights (``norm1_context`` with the block's ``temb``, ``add_q/k/v_proj``, ``norm_added_q/k``, ``to_add_out``,
the gates, ``norm2_context``, ``ff_context``; the ``context_pre_only`` last block only reads them). Concept
queries attend to ``[concepts; image]`` keys; image and prompt tokens never see the concepts, so the model's
output is unchanged. Three pieces share one :class:`RecordingState`:
a block forward pre-hook (``norm1_context`` on the concept tokens with the block's ``temb``), the block's
recording attention processor (concept q/k/v, the concept attention, A_CI) and a block forward hook (output
projection, gates and feed-forward of the concept residual). Nothing in the transformer is forked or patched:
processors are swapped with ``Attention.set_processor`` and restored on exit, hooks are removed on exit.
SD3.5's image-only ``attn2`` keeps its own processor and is never touched.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

O_II_MODES = ("concat", "mean_attention")

# Memory budget (bytes) for the float32 (heads, N, N) score/probability blocks of one head chunk.
DEFAULT_HEAD_CHUNK_BYTES = 512 * 2**20


@dataclass
class ConceptTokens:
    """The concept stream's input: every content token of every concept, in one sequence.

    Attributes:
        hidden: (1, M, D) model dtype, the tokens after ``transformer.context_embedder`` (D = the
            transformer's inner dim), concept 0's tokens first.
        concept_index: (M,) long, the concept (0..K-1) each token belongs to.
        num_concepts: K.
    """

    hidden: Tensor
    concept_index: Tensor
    num_concepts: int

    def __post_init__(self) -> None:
        if self.hidden.ndim != 3 or self.hidden.shape[0] != 1:
            raise ValueError(f"ConceptTokens.hidden must be (1, M, D), got {tuple(self.hidden.shape)}")
        if self.concept_index.shape != (self.hidden.shape[1],):
            raise ValueError("ConceptTokens.concept_index must hold one concept id per token")
        counts = torch.bincount(self.concept_index.cpu(), minlength=self.num_concepts)
        if counts.numel() != self.num_concepts or bool((counts == 0).any()):
            raise ValueError("every concept needs at least one token in the concept stream")

    def token_counts(self) -> Tensor:
        """(K,) long: number of tokens of each concept."""
        return torch.bincount(self.concept_index.cpu(), minlength=self.num_concepts)


@dataclass(frozen=True)
class PromptTokens:
    """Where each concept's tokens sit in the prompt's context sequence (for Seg4Diff's attention).

    Attributes:
        positions: K tuples of indices into the prompt's T context tokens (the CLIP positions 0..clip_length-1
            come first in SD3's context, then T5's): concept k's CLIP sub-word tokens in the prompt. An empty
            tuple: the concept is not in the prompt (its rows are recorded as NaN).
        clip_length: the number of CLIP positions at the start of the context (77 for SD3 / SD3.5).
    """

    positions: tuple[tuple[int, ...], ...]
    clip_length: int


@dataclass
class _BlockConceptInputs:
    """What a block's pre-hook prepared for its processor and forward hook (one block at a time)."""

    layer: int
    norm_hidden: Tensor  # (1, M, D) concept tokens after norm1_context
    gates: tuple[Tensor, ...] | None  # (c_gate_msa, c_shift_mlp, c_scale_mlp, c_gate_mlp), each (1, D)
    attn_output: Tensor | None = None  # (1, M, heads*d_h), before to_add_out; set by the processor


@dataclass
class RecordingState:
    """State shared by the recorder's hooks and processors (one object per :class:`AttentionRecorder`).

    ``armed`` says whether the next transformer forward is recorded; a recorded forward sets ``active`` while
    it runs. Results of the last recorded forward are in the dicts keyed by block index.
    """

    graph_layers: frozenset[int]
    concepts: ConceptTokens | None
    cfg: bool
    o_ii_mode: str
    head_chunk_bytes: int
    armed: bool = True
    once: bool = True
    active: bool = False
    sample: int = 0
    recorded_forwards: int = 0
    concept_hidden: Tensor | None = None  # (1, M, D) the concept residual stream during a forward
    block: _BlockConceptInputs | None = None
    a_ii: dict[int, Tensor] = field(default_factory=dict)
    o_ii: dict[int, Tensor] = field(default_factory=dict)
    a_ci: dict[int, Tensor] = field(default_factory=dict)
    concept_outputs: dict[int, Tensor] = field(default_factory=dict)
    concept_maps: dict[int, Tensor] = field(default_factory=dict)
    prompt_tokens: PromptTokens | None = None
    i2t_joint: dict[int, Tensor] = field(default_factory=dict)
    i2t_clip: dict[int, Tensor] = field(default_factory=dict)

    def clear_results(self) -> None:
        stores = (self.a_ii, self.o_ii, self.a_ci, self.concept_outputs, self.concept_maps, self.i2t_joint,
                  self.i2t_clip)  # fmt: skip
        for store in stores:
            store.clear()


def image_self_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    o_ii_mode: str = "concat",
    head_chunk_bytes: int = DEFAULT_HEAD_CHUNK_BYTES,
) -> tuple[Tensor, Tensor]:
    """A_II and O_II of one sample from its image queries, keys and values (after qk-norm).

    Args:
        query, key, value: (heads, N, d_h), any float dtype.
        o_ii_mode: "concat" (default, method.md [decision]): O_II = A_II^h V^h per head h, heads concatenated;
            "mean_attention": the head-averaged A_II applied to every head's values, heads concatenated.
        head_chunk_bytes: budget for one chunk's float32 (chunk, N, N) scores; at least one head per chunk.

    Returns:
        a_ii (N, N) float32, rows sum to 1, mean over heads; o_ii (N, heads * d_h) float32.
    """
    if o_ii_mode not in O_II_MODES:
        raise ValueError(f"o_ii_mode must be one of {O_II_MODES}, got {o_ii_mode!r}")
    heads, n, d = query.shape
    scale = 1.0 / math.sqrt(d)
    chunk = max(1, min(heads, head_chunk_bytes // (2 * 4 * n * n)))
    a_ii = torch.zeros(n, n, dtype=torch.float32, device=query.device)
    per_head = o_ii_mode == "concat"
    o_ii = torch.empty(n, heads, d, dtype=torch.float32, device=query.device) if per_head else None
    for start in range(0, heads, chunk):
        stop = min(heads, start + chunk)
        scores = torch.bmm(query[start:stop].float(), key[start:stop].float().transpose(1, 2))  # (c, N, N)
        probs = scores.mul_(scale).softmax(dim=-1)
        del scores
        a_ii += probs.sum(dim=0)
        if per_head:
            o_ii[:, start:stop] = torch.bmm(probs, value[start:stop].float()).transpose(0, 1)
        del probs
    a_ii /= heads
    if not per_head:
        o_ii = torch.einsum("ij,hjd->ihd", a_ii, value.float())
    return a_ii, o_ii.reshape(n, heads * d)


def image_only_softmax(query: Tensor, key: Tensor) -> Tensor:
    """Head-mean of ``softmax(Q K_img^T / sqrt(d_h))`` over image keys only.

    Args:
        query: (heads, M, d_h) concept queries; key: (heads, N, d_h) image keys.

    Returns:
        (M, N) float32, rows sum to 1.
    """
    scale = 1.0 / math.sqrt(query.shape[-1])
    logits = torch.bmm(query.float(), key.float().transpose(1, 2)) * scale  # (heads, M, N)
    return logits.softmax(dim=-1).mean(dim=0)


def image_to_prompt_attention(
    query: Tensor, image_key: Tensor, prompt_key: Tensor, tokens: PromptTokens
) -> tuple[Tensor, Tensor]:
    """Seg4Diff's image-to-text attention of each concept's prompt tokens, two ways.

    Args:
        query: (heads, N, d_h) image queries; image_key: (heads, N, d_h) image keys; prompt_key: (heads, T, d_h)
            the prompt's context keys (CLIP positions first); all after the block's qk-norm.
        tokens: each concept's positions among the T prompt tokens.

    Returns:
        joint, clip: (K, N) float32. ``joint[k, i]`` = mean over heads h and concept k's positions j of
        ``softmax_j'(q_i^h . key_j'^h / sqrt(d_h))`` over all N + T joint keys (the probability the block's own
        joint attention gives; Seg4Diff's ``attn_scores.softmax(dim=-1)``); ``clip[k, i]`` the same with the
        softmax over the ``clip_length`` CLIP keys alone (Seg4Diff's ``SOFTMAX_I2T_ONLY``). NaN rows for a
        concept without positions.

    The joint probabilities are never materialised: attention with one-hot values (column k = 1 / |P_k| on
    concept k's key positions) returns exactly their mean over P_k, in float32, memory-efficiently.
    """
    heads, n, d = query.shape
    k = len(tokens.positions)
    keys = torch.cat([image_key, prompt_key], dim=1).float()  # (H, N + T, d)
    weights = torch.zeros(keys.shape[1], max(k, d), dtype=torch.float32, device=query.device)
    for concept, positions in enumerate(tokens.positions):
        if positions:
            weights[[n + j for j in positions], concept] = 1.0 / len(positions)
    joint = F.scaled_dot_product_attention(
        query.float()[None], keys[None], weights.expand(heads, -1, -1)[None], dropout_p=0.0, is_causal=False
    )[0, :, :, :k]  # (H, N, K)
    joint = joint.mean(dim=0).T.contiguous()  # (K, N)
    clip_keys = prompt_key[:, : tokens.clip_length].float()  # (H, C, d)
    clip_probs = (torch.bmm(query.float(), clip_keys.transpose(1, 2)) / math.sqrt(d)).softmax(dim=-1)
    clip_probs = clip_probs.mean(dim=0)  # (N, C)
    clip = torch.full((k, n), float("nan"), dtype=torch.float32, device=query.device)
    for concept, positions in enumerate(tokens.positions):
        if positions:
            clip[concept] = clip_probs[:, list(positions)].mean(dim=1)
    joint[clip.isnan().all(dim=1)] = float("nan")  # a concept not in the prompt has no attention to read
    return joint, clip


def _mean_by_concept(values: Tensor, concept_index: Tensor, num_concepts: int) -> Tensor:
    """(M, ...) per-token rows -> (K, ...) means over each concept's tokens, float32."""
    values = values.float()
    sums = torch.zeros((num_concepts, *values.shape[1:]), dtype=torch.float32, device=values.device)
    sums.index_add_(0, concept_index, values)
    counts = torch.bincount(concept_index, minlength=num_concepts).to(sums)
    return sums / counts.view(-1, *([1] * (values.ndim - 1)))


class RecordingJointAttnProcessor:
    """A joint-attention processor that computes exactly what ``JointAttnProcessor2_0`` computes and records.

    Installed on ``block.attn`` of one ``JointTransformerBlock``. When its recorder is not recording (or the
    call has no ``encoder_hidden_states``), it hands the call to the processor it replaced, unchanged.
    """

    def __init__(self, layer: int, state: RecordingState, original: Any):
        self.layer = layer
        self.state = state
        self.original = original

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> Tensor | tuple[Tensor, Tensor]:
        state = self.state
        if not state.active or encoder_hidden_states is None:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, *args, **kwargs)

        # 1. The block's own joint attention, as JointAttnProcessor2_0 computes it.
        batch, n_img, _ = hidden_states.shape
        heads = attn.heads
        query = attn.to_q(hidden_states)
        key = attn.to_k(hidden_states)
        value = attn.to_v(hidden_states)
        head_dim = key.shape[-1] // heads
        query = query.view(batch, -1, heads, head_dim).transpose(1, 2)  # (B, H, N, d)
        key = key.view(batch, -1, heads, head_dim).transpose(1, 2)
        value = value.view(batch, -1, heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        ctx_q, ctx_k, ctx_v = self._context_qkv(attn, encoder_hidden_states, heads, head_dim)  # (B, H, T, d)
        joint = F.scaled_dot_product_attention(
            torch.cat([query, ctx_q], dim=2),
            torch.cat([key, ctx_k], dim=2),
            torch.cat([value, ctx_v], dim=2),
            dropout_p=0.0,
            is_causal=False,
        )
        joint = joint.transpose(1, 2).reshape(batch, -1, heads * head_dim).to(query.dtype)  # (B, N+T, H*d)
        image_out, context_out = joint[:, :n_img], joint[:, n_img:]

        # 2. Recording, on the recorded sample only.
        s = state.sample
        q_img, k_img, v_img = query[s], key[s], value[s]  # (H, N, d)
        if self.layer in state.graph_layers:
            a_ii, o_ii = image_self_attention(
                q_img,
                k_img,
                v_img,
                o_ii_mode=state.o_ii_mode,
                head_chunk_bytes=state.head_chunk_bytes,
            )
            state.a_ii[self.layer] = a_ii
            state.o_ii[self.layer] = o_ii
        if state.prompt_tokens is not None:
            joint_i2t, clip_i2t = image_to_prompt_attention(q_img, k_img, ctx_k[s], state.prompt_tokens)
            state.i2t_joint[self.layer] = joint_i2t
            state.i2t_clip[self.layer] = clip_i2t
        block = state.block
        if state.concepts is not None and block is not None and block.layer == self.layer:
            self._concept_attention(attn, block, q_img, k_img, v_img, image_out[s], heads, head_dim)

        # 3. Output projections, as the original processor.
        if not attn.context_pre_only:
            context_out = attn.to_add_out(context_out)
        image_out = attn.to_out[0](image_out)
        image_out = attn.to_out[1](image_out)
        return image_out, context_out

    @staticmethod
    def _context_qkv(
        attn: nn.Module, tokens: Tensor, heads: int, head_dim: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Context-stream queries, keys, values (B, H, T, d) with the added qk-norm, as the processor does."""
        batch = tokens.shape[0]
        q = attn.add_q_proj(tokens).view(batch, -1, heads, head_dim).transpose(1, 2)
        k = attn.add_k_proj(tokens).view(batch, -1, heads, head_dim).transpose(1, 2)
        v = attn.add_v_proj(tokens).view(batch, -1, heads, head_dim).transpose(1, 2)
        if attn.norm_added_q is not None:
            q = attn.norm_added_q(q)
        if attn.norm_added_k is not None:
            k = attn.norm_added_k(k)
        return q, k, v

    def _concept_attention(
        self,
        attn: nn.Module,
        block: _BlockConceptInputs,
        q_img: Tensor,
        k_img: Tensor,
        v_img: Tensor,
        image_out: Tensor,
        heads: int,
        head_dim: int,
    ) -> None:
        """Concept queries over [concepts; image] keys (the stream's update) and the recorded A_CI / maps."""
        state = self.state
        concepts = state.concepts
        c_q, c_k, c_v = self._context_qkv(attn, block.norm_hidden, heads, head_dim)  # (1, H, M, d)
        c_out = F.scaled_dot_product_attention(
            c_q,
            torch.cat([c_k, k_img[None]], dim=2),
            torch.cat([c_v, v_img[None]], dim=2),
            dropout_p=0.0,
            is_causal=False,
        )
        c_out = c_out.transpose(1, 2).reshape(1, -1, heads * head_dim).to(c_q.dtype)  # (1, M, H*d)
        block.attn_output = c_out
        a_ci_tokens = image_only_softmax(c_q[0], k_img)  # (M, N)
        state.a_ci[self.layer] = _mean_by_concept(a_ci_tokens, concepts.concept_index, concepts.num_concepts)
        outputs = _mean_by_concept(c_out[0], concepts.concept_index, concepts.num_concepts)  # (K, H*d)
        state.concept_outputs[self.layer] = outputs
        state.concept_maps[self.layer] = F.normalize(outputs, dim=-1) @ image_out.float().T  # (K, N)


def _block_inputs(args: tuple, kwargs: dict) -> tuple[Tensor, Tensor]:
    """(hidden_states, temb) of a JointTransformerBlock call, by keyword or by position."""
    hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
    if "temb" in kwargs:
        temb = kwargs["temb"]
    elif len(args) > 2:
        temb = args[2]
    else:
        raise RuntimeError("the recorder could not find `temb` in a JointTransformerBlock call")
    return hidden, temb


class AttentionRecorder:
    """Context manager that records attention of one forward pass of an ``SD3Transformer2DModel``.

    Example::

        with AttentionRecorder(transformer, graph_layers=(9, 18), concepts=tokens) as recorder:
            transformer(hidden_states=latents, encoder_hidden_states=prompt, pooled_projections=pooled,
                        timestep=t)
        a_ii = recorder.state.a_ii[9]  # (N, N) float32

    Args:
        transformer: the diffusers ``SD3Transformer2DModel`` (any dtype/device).
        graph_layers: block indices where A_II and O_II are recorded.
        concepts: the concept stream's tokens, or None (then no A_CI and processors only on graph layers).
        prompt_tokens: each concept's positions in the prompt: record Seg4Diff's image-to-text attention at
            every block (None: not recorded).
        cfg: the transformer's batch is [unconditional; conditional] (classifier-free guidance): record the
            first conditional row (index B // 2). Otherwise row 0 is recorded.
        armed: record the next forward as soon as the context is entered (False: call :meth:`arm` later,
            e.g. from a pipeline callback at the step to record).
        once: disarm after one recorded forward (later forwards, e.g. the rest of a denoising loop, run the
            original processors at full speed).
        o_ii_mode, head_chunk_bytes: see :func:`image_self_attention`.

    The original processors are restored and all hooks removed on exit, also when the body raises.
    """

    def __init__(
        self,
        transformer: nn.Module,
        *,
        graph_layers: tuple[int, ...] | list[int] = (),
        concepts: ConceptTokens | None = None,
        prompt_tokens: PromptTokens | None = None,
        cfg: bool = False,
        armed: bool = True,
        once: bool = True,
        o_ii_mode: str = "concat",
        head_chunk_bytes: int = DEFAULT_HEAD_CHUNK_BYTES,
    ):
        blocks = getattr(transformer, "transformer_blocks", None)
        if blocks is None:
            raise TypeError(
                f"AttentionRecorder needs a diffusers SD3Transformer2DModel, got {type(transformer).__name__}"
            )
        num_blocks = len(blocks)
        bad = [layer for layer in graph_layers if not 0 <= int(layer) < num_blocks]
        if bad:
            raise ValueError(
                f"graph layers {bad} are out of range: the transformer has blocks 0..{num_blocks - 1}"
            )
        if o_ii_mode not in O_II_MODES:
            raise ValueError(f"o_ii_mode must be one of {O_II_MODES}, got {o_ii_mode!r}")
        self.transformer = transformer
        self.blocks = blocks
        self.state = RecordingState(
            graph_layers=frozenset(int(layer) for layer in graph_layers),
            concepts=concepts,
            prompt_tokens=prompt_tokens,
            cfg=cfg,
            o_ii_mode=o_ii_mode,
            head_chunk_bytes=int(head_chunk_bytes),
            armed=armed,
            once=once,
        )
        self._originals: dict[int, Any] = {}
        self._handles: list[Any] = []

    @property
    def recorded_layers(self) -> list[int]:
        """Blocks that get a recording processor: all with concepts or prompt tokens, else the graph layers."""
        if self.state.concepts is not None or self.state.prompt_tokens is not None:
            return list(range(len(self.blocks)))
        return sorted(self.state.graph_layers)

    def arm(self) -> None:
        """Record the next transformer forward."""
        self.state.armed = True

    def __enter__(self) -> AttentionRecorder:
        try:
            self._handles.append(
                self.transformer.register_forward_pre_hook(self._start_forward, with_kwargs=True)
            )
            self._handles.append(self.transformer.register_forward_hook(self._end_forward, with_kwargs=True))
            for layer in self.recorded_layers:
                block = self.blocks[layer]
                self._originals[layer] = block.attn.processor
                block.attn.set_processor(RecordingJointAttnProcessor(layer, self.state, block.attn.processor))
                if self.state.concepts is not None:
                    self._handles.append(
                        block.register_forward_pre_hook(
                            functools.partial(self._block_start, layer), with_kwargs=True
                        )
                    )
                    self._handles.append(
                        block.register_forward_hook(
                            functools.partial(self._block_end, layer), with_kwargs=True
                        )
                    )
        except BaseException:
            self._restore()
            raise
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._restore()

    def _restore(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for layer, processor in self._originals.items():
            self.blocks[layer].attn.set_processor(processor)
        self._originals.clear()
        self.state.active = False
        self.state.block = None
        self.state.concept_hidden = None

    # -- transformer hooks -------------------------------------------------------------------------------
    def _start_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        state = self.state
        state.active = False
        if not state.armed:
            return
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        batch = hidden.shape[0]
        if state.cfg and batch % 2:
            raise RuntimeError(f"cfg=True needs an even batch [uncond; cond], got batch size {batch}")
        state.sample = batch // 2 if state.cfg else 0
        state.clear_results()
        state.block = None
        if state.concepts is not None:
            param = next(module.parameters())
            state.concept_hidden = state.concepts.hidden.to(device=param.device, dtype=param.dtype)
        state.active = True

    def _end_forward(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        state = self.state
        if state.active:
            state.recorded_forwards += 1
            if state.once:
                state.armed = False
        state.active = False
        state.block = None
        state.concept_hidden = None

    # -- block hooks (concept stream) --------------------------------------------------------------------
    def _block_start(self, layer: int, block: nn.Module, args: tuple, kwargs: dict) -> None:
        state = self.state
        if not state.active or state.concept_hidden is None:
            return
        _, temb = _block_inputs(args, kwargs)
        temb = temb[state.sample : state.sample + 1]
        concepts = state.concept_hidden
        if block.context_pre_only:
            state.block = _BlockConceptInputs(layer, block.norm1_context(concepts, temb), None)
        else:
            norm_hidden, gate_msa, shift_mlp, scale_mlp, gate_mlp = block.norm1_context(concepts, emb=temb)
            state.block = _BlockConceptInputs(layer, norm_hidden, (gate_msa, shift_mlp, scale_mlp, gate_mlp))

    def _block_end(self, layer: int, block: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        state = self.state
        inputs = state.block
        state.block = None
        if not state.active or inputs is None or inputs.layer != layer or inputs.attn_output is None:
            return
        if block.context_pre_only:  # the last block only reads the concept tokens
            return
        gate_msa, shift_mlp, scale_mlp, gate_mlp = inputs.gates
        hidden = state.concept_hidden + gate_msa.unsqueeze(1) * block.attn.to_add_out(inputs.attn_output)
        norm_hidden = block.norm2_context(hidden) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
        state.concept_hidden = hidden + gate_mlp.unsqueeze(1) * block.ff_context(norm_hidden)
