"""AnchorDiff: anchor-seeded graph propagation over SD3 / SD3.5 attention (``method.md``).

``AnchorDiff.from_pretrained(model, preset=...)`` loads the backbone once; calling the object grounds K
concepts in one image::

    ad = AnchorDiff.from_pretrained("stabilityai/stable-diffusion-3-medium-diffusers", preset="sd3")
    out = ad(image, ["husky", "wolf"])          # out.heatmaps (2, H, W) in [0, 1], out.masks (2, H, W) bool

Steps of a call (each timed in ``out.timings``):
1. check the inputs; 2. encode the prompt (default ``"a photo of " + " and ".join(concepts)``) and each concept
separately; 3. encode the image with the VAE at the model's native size (``(z - shift) * scale``); 4. bring the
latent to the midpoint timestep (index ``num_inference_steps // 2`` of the scheduler's timesteps) by
deterministic Euler flow-matching inversion (``mode="invert"``) or by ``scheduler.scale_noise`` with seeded
noise (``mode="noise"``); 5. one transformer forward with :class:`~anchordiff.attention.AttentionRecorder`
(A_II / O_II at the graph layers, A_CI and the concept stream at every layer); 6. the heatmaps of the chosen
method from that recording (``anchordiff.graph``), resized bilinearly to the input image's size.

Coordinates: token index ``i`` on the ``(gh, gw)`` grid is row-major (row ``i // gw``, column ``i % gw``);
``anchors`` are (row, column) on that grid. The input image is resized (stretched) to the model's square
native size; heatmaps and masks come back at the input's ``(H, W)``.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from anchordiff.attention import (
    DEFAULT_HEAD_CHUNK_BYTES,
    O_II_MODES,
    AttentionRecorder,
    ConceptTokens,
    PromptTokens,
)
from anchordiff.backbones import (
    PRESETS,
    RANDOM_PREFIX,
    TINY,
    TINY_GRAPH_LAYERS,
    TINY_MAX_SEQUENCE_LENGTH,
    TINY_SEG4DIFF_LAYERS,
    check_preset,
    load_pipeline,
)
from anchordiff.graph import anchordiff_heatmaps, build_graph, mean_threshold_masks, minmax, select_anchors
from anchordiff.multi_anchor import (
    DEFAULT_ANCHOR_RADIUS,
    DEFAULT_ANCHOR_THRESHOLD,
    DEFAULT_MAX_ANCHORS,
    check_multi_anchor_options,
    multi_anchor_heatmaps,
)
from manifests.dtypes import torch_dtype

MODES = ("invert", "noise")
CONCEPT_PASSES = ("joint", "separate")
VAE_LATENTS = ("mode", "sample")
EMPTY_ROWS = ("self_loop", "zero")
SEG4DIFF_SOFTMAXES = ("joint", "clip")
DEFAULT_STEPS = 160
DEFAULT_GATE_QUANTILE = 0.98
DEFAULT_MAX_SEQUENCE_LENGTH = 256


@dataclass(frozen=True)
class MapBuilder:
    """A grounding method over one recording (method.md, "Baselines and ablations").

    ``build(ad, record, layers, a_ci, steps, gate_quantile) -> (token_maps, anchors)``: ``a_ci`` (K, N)
    is A_CI averaged over the anchor layers, on ``ad.device``; ``layers`` the checked layers given (None:
    the method's default); ``token_maps`` (K, N) before min-max, ``anchors`` (K,) token indices, or K
    tensors of indices for a method with several anchors per concept (the first is eq. 7's).
    ``needs_graph``: the recording must hold A_II / O_II of the graph layers.
    """

    build: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    needs_graph: bool = False


MAP_BUILDERS: dict[str, MapBuilder] = {}
"""The grounding methods by name: AnchorDiff, its ablations and the baselines (``register_map_builder``)."""


def register_map_builder(name: str, needs_graph: bool = False):
    """Register ``build`` as the method ``name`` (a decorator); the benchmark and the CLI offer it by name."""

    def add(build):
        MAP_BUILDERS[name] = MapBuilder(build, needs_graph)
        return build

    return add


def _graph_inputs(ad, record, layers) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean A_II (N, N) and O_II (N, D) of the graph layers (the preset's when None)."""
    layers = ad.graph_layers if layers is None else layers
    missing = [x for x in layers if x not in record.a_ii]
    if missing:
        raise ValueError(
            f"layers {missing} were not recorded (recorded graph layers: {list(record.graph_layers)}); "
            "record again with graph_layers including them, or graph_layers='all'"
        )
    a_ii = torch.stack([record.a_ii[x].to(ad.device) for x in layers]).mean(dim=0)  # (N, N)
    o_ii = torch.stack([record.o_ii[x].to(ad.device) for x in layers]).mean(dim=0)  # (N, D)
    return a_ii, o_ii


def _graph_maps(ad, record, layers, a_ci, steps, gate_quantile, *, use_gate: bool, use_wcos: bool):
    """The anchor graph over the mean A_II / O_II of the graph layers, propagated from the anchors."""
    a_ii, o_ii = _graph_inputs(ad, record, layers)
    token_maps = anchordiff_heatmaps(
        a_ii,
        o_ii,
        a_ci,
        gate_quantile=float(gate_quantile),
        steps=steps,
        clamp_negative=ad.options.clamp_negative,
        empty_row=ad.options.empty_row,
        use_gate=use_gate,
        use_wcos=use_wcos,
    )
    return token_maps, select_anchors(a_ci)


for _name, _switches in {
    "anchordiff": {"use_gate": True, "use_wcos": True},
    "no_gate": {"use_gate": False, "use_wcos": True},
    "no_wcos": {"use_gate": True, "use_wcos": False},
}.items():
    register_map_builder(_name, needs_graph=True)(functools.partial(_graph_maps, **_switches))


@register_map_builder("anchordiff_multi", needs_graph=True)
def _multi_anchor_maps(ad, record, layers, a_ci, steps, gate_quantile):
    """AnchorDiff with one anchor per instance (``anchordiff.multi_anchor``) on the same graph;
    every concept's anchors, eq. 7's first."""
    a_ii, o_ii = _graph_inputs(ad, record, layers)
    w_hat = build_graph(
        a_ii, o_ii, gate_quantile=float(gate_quantile), clamp_negative=ad.options.clamp_negative,
        empty_row=ad.options.empty_row,
    )  # fmt: skip
    result = multi_anchor_heatmaps(
        w_hat, a_ci, record.grid, steps=steps, max_anchors=ad.options.max_anchors,
        threshold=ad.options.anchor_threshold, radius=ad.options.anchor_radius,
    )  # fmt: skip
    return result.heatmaps, result.anchors


@register_map_builder("cross_attention")
def _cross_attention_maps(ad, record, layers, a_ci, steps, gate_quantile):
    """A_CI itself: averaged over ``layers`` when given, else over the anchor layers."""
    if layers is not None:
        a_ci = record.a_ci[list(layers)].to(ad.device).mean(dim=0)
    return a_ci, select_anchors(a_ci)


@register_map_builder("concept_attention")
def _concept_attention_maps(ad, record, layers, a_ci, steps, gate_quantile):
    """ConceptAttention: softmax over the concepts per block, then the mean over blocks (all by default)."""
    chosen = list(range(record.a_ci.shape[0]) if layers is None else layers)
    token_maps = record.concept_maps[chosen].to(ad.device).softmax(dim=1).mean(dim=0)
    return token_maps, token_maps.argmax(dim=1)


@register_map_builder("seg4diff")
def _seg4diff_maps(ad, record, layers, a_ci, steps, gate_quantile):
    """Seg4Diff, training-free (docs/seg4diff.md): the image-to-text attention probability of each concept's
    CLIP tokens in the prompt, mean over heads and tokens (recorded), then the mean over ``layers`` (None =
    the preset's expert blocks); no normalisation before the common min-max. Anchors: each map's argmax."""
    absent = [
        c for c, positions in zip(record.concepts, record.prompt_positions, strict=True) if not positions
    ]
    if absent:
        raise ValueError(
            f"seg4diff reads the attention to each concept's tokens in the prompt, and {absent} are not among "
            f"the CLIP tokens of {record.prompt!r}; use a prompt that names every concept (the default "
            "template does)"
        )
    chosen = list(ad.seg4diff_layers if layers is None else layers)
    source = record.i2t_joint if ad.options.seg4diff_softmax == "joint" else record.i2t_clip
    token_maps = source[chosen].to(ad.device).mean(dim=0)  # (K, N)
    return token_maps, token_maps.argmax(dim=1)


METHODS = tuple(MAP_BUILDERS)
"""The built-in methods: anchordiff, no_gate, no_wcos, anchordiff_multi, cross_attention, concept_attention,
seg4diff."""


@dataclass(frozen=True)
class AnchorDiffOptions:
    """Every choice ``method.md`` leaves open ([decision]), with the paper-faithful default.

    Attributes:
        prompt_template: [decision] prompt for existing images; ``{concepts}`` is replaced by the concepts
            joined with ``concept_separator``: ``"a photo of husky and wolf"``.
        concept_separator: see ``prompt_template``.
        num_inference_steps: length of the scheduler trajectory whose midpoint is recorded (SD3 default 28).
        timestep_index: index into the scheduler's timesteps of the recorded step; None = the midpoint
            ``num_inference_steps // 2`` (with SD3's shift 3.0: about 74% noise).
        graph_layers: blocks whose A_II / O_II build the graph (a tuple, or "all"); None = the preset's
            ({9, 18} for sd3, {23, 31} for sd35, (1, 2) for the 4-block tiny models).
        concept_pass: [decision] "joint" (default): concept stream and image stream in one forward pass;
            "separate": two passes as in the paper (identical maps, twice the cost).
        o_ii_heads: [decision] "concat" (default): O_II = A_II^h V^h per head, heads concatenated;
            "mean_attention": the head-mean A_II applied to each head's values.
        inversion_guidance_scale: classifier-free guidance of the inversion velocity; 1.0 (default) = the
            conditional velocity alone (one forward per step).
        vae_latent: "mode" (default, deterministic) or "sample" (seeded) of the VAE posterior.
        max_sequence_length: T5 tokens of prompts and concepts; None = 256 (SD3's default; 32 for tiny).
        resolution: side of the square model input in pixels; None = the native size
            ``transformer.sample_size * vae_scale_factor`` (1024 for SD3 / SD3.5, 128 for tiny).
        head_chunk_mb: memory budget of one head chunk of the float32 A_II computation.
        clamp_negative: [decision] negative cosines of W are set to 0 before row normalisation (eq. 11).
        empty_row: [decision] a row of W that sums to 0 becomes a "self_loop" (default) or stays "zero".
        max_anchors, anchor_threshold, anchor_radius: ``anchordiff_multi`` only (beyond the paper,
            ``anchordiff.multi_anchor``): at most this many anchors per concept, candidates at least this
            fraction of the A_CI maximum, suppression radius as a fraction of the longer grid side.
        seg4diff_layers: ``seg4diff`` only: the blocks whose image-to-text attention is averaged; None = the
            preset's expert blocks ((9,) for sd3 as Seg4Diff's config, (14,) for sd35 [decision], (1,) tiny).
        seg4diff_softmax: ``seg4diff`` only: "joint" (default, Seg4Diff's) = the softmax over all joint keys
            [image; prompt]; "clip" = over the prompt's CLIP keys alone (Seg4Diff's ``SOFTMAX_I2T_ONLY``).
    """

    prompt_template: str = "a photo of {concepts}"
    concept_separator: str = " and "
    num_inference_steps: int = 28
    timestep_index: int | None = None
    graph_layers: tuple[int, ...] | str | None = None
    concept_pass: str = "joint"
    o_ii_heads: str = "concat"
    inversion_guidance_scale: float = 1.0
    vae_latent: str = "mode"
    max_sequence_length: int | None = None
    resolution: int | None = None
    head_chunk_mb: int = DEFAULT_HEAD_CHUNK_BYTES // 2**20
    clamp_negative: bool = True
    empty_row: str = "self_loop"
    max_anchors: int = DEFAULT_MAX_ANCHORS
    anchor_threshold: float = DEFAULT_ANCHOR_THRESHOLD
    anchor_radius: float = DEFAULT_ANCHOR_RADIUS
    seg4diff_layers: tuple[int, ...] | str | None = None
    seg4diff_softmax: str = "joint"

    def __post_init__(self) -> None:
        if "{concepts}" not in self.prompt_template:
            raise ValueError(
                f"prompt_template must contain '{{concepts}}', got {self.prompt_template!r}; "
                "e.g. 'a photo of {concepts}'"
            )
        if not isinstance(self.num_inference_steps, int) or self.num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be a positive int, got {self.num_inference_steps!r}")
        if self.timestep_index is not None and not 0 <= self.timestep_index < self.num_inference_steps:
            raise ValueError(
                f"timestep_index must be in 0..{self.num_inference_steps - 1} (or None for the midpoint), "
                f"got {self.timestep_index!r}"
            )
        for name, value, allowed in (
            ("concept_pass", self.concept_pass, CONCEPT_PASSES),
            ("o_ii_heads", self.o_ii_heads, O_II_MODES),
            ("vae_latent", self.vae_latent, VAE_LATENTS),
            ("empty_row", self.empty_row, EMPTY_ROWS),
            ("seg4diff_softmax", self.seg4diff_softmax, SEG4DIFF_SOFTMAXES),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if self.inversion_guidance_scale < 1.0:
            raise ValueError(f"inversion_guidance_scale must be >= 1.0, got {self.inversion_guidance_scale}")
        if self.max_sequence_length is not None and self.max_sequence_length < 2:
            raise ValueError(f"max_sequence_length must be >= 2, got {self.max_sequence_length}")
        if self.head_chunk_mb < 1:
            raise ValueError(f"head_chunk_mb must be >= 1, got {self.head_chunk_mb}")
        check_multi_anchor_options(self.max_anchors, self.anchor_threshold, self.anchor_radius)

    @property
    def recorded_step(self) -> int:
        """Index of the recorded timestep in the scheduler's ``num_inference_steps`` timesteps."""
        return self.num_inference_steps // 2 if self.timestep_index is None else self.timestep_index


@dataclass
class AttentionRecord:
    """Everything one recorded forward pass gives, enough to build every method's maps again.

    All tensors are float32 on the device of the recording (``.to("cpu")`` to cache many). N = gh * gw image
    tokens (row-major), K concepts in the order given, L transformer blocks, D = heads * head_dim.

    Attributes:
        a_ii: block index -> (N, N) image-only self-attention, head mean, rows sum to 1 (graph layers only).
        o_ii: block index -> (N, D) image-only attention outputs, heads concatenated (graph layers only).
        a_ci: (L, K, N) concept-to-image attention per block (image-only softmax, head and token mean).
        concept_outputs: (L, K, D) concept-stream attention outputs per block (token mean, before to_add_out).
        concept_maps: (L, K, N) ConceptAttention's output-space logits per block: L2-normalised concept
            outputs dotted with the image stream's attention outputs (before the softmax over concepts).
        grid: (gh, gw) token grid.
        image_size: (W, H) of the input image in pixels (heatmaps are returned at this size).
        prompt: the prompt of the recorded pass.
        mode: "invert", "noise" or "generate".
        concepts: the K concept names.
        timestep: the recorded timestep (scheduler units, 0..1000).
        concept_token_counts: content tokens per concept (CLIP + T5).
        i2t_joint, i2t_clip: (L, K, N) Seg4Diff's image-to-text attention per block: the probability image
            token i gives concept k's tokens in the prompt (mean over heads and those tokens), softmax over
            all joint keys / over the prompt's CLIP keys alone (NaN rows for a concept not in the prompt).
        prompt_positions: concept k's CLIP token positions in the prompt (empty: not in the prompt).
    """

    a_ii: dict[int, Tensor]
    o_ii: dict[int, Tensor]
    a_ci: Tensor
    concept_outputs: Tensor
    concept_maps: Tensor
    grid: tuple[int, int]
    image_size: tuple[int, int]
    prompt: str
    mode: str
    concepts: list[str]
    timestep: float
    concept_token_counts: list[int]
    i2t_joint: Tensor
    i2t_clip: Tensor
    prompt_positions: list[list[int]]
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def graph_layers(self) -> tuple[int, ...]:
        """The blocks recorded with A_II / O_II."""
        return tuple(sorted(self.a_ii))

    def to(self, device: str | torch.device) -> AttentionRecord:
        """A copy with every tensor on ``device``."""
        return replace(
            self,
            a_ii={k: v.to(device) for k, v in self.a_ii.items()},
            o_ii={k: v.to(device) for k, v in self.o_ii.items()},
            a_ci=self.a_ci.to(device),
            concept_outputs=self.concept_outputs.to(device),
            concept_maps=self.concept_maps.to(device),
            i2t_joint=self.i2t_joint.to(device),
            i2t_clip=self.i2t_clip.to(device),
        )


@dataclass
class AnchorDiffOutput:
    """Heatmaps of K concepts for one image.

    Attributes:
        heatmaps: (K, H, W) float32 in [0, 1] on the CPU at the input image's size (bilinear from the token
            grid, then min-max normalised per concept; all zeros for a degenerate concept).
        masks: (K, H, W) bool, ``heatmap > mean(heatmap)`` per concept (all False when degenerate).
        anchors: (K, 2) long (row, column) on the token grid: the argmax of the mean A_CI for the graph
            methods and ``cross_attention``, of the method's own map for ``concept_attention`` and
            ``seg4diff``.
        anchor_sets: K (A_k, 2) long tensors, every anchor of each concept (A_k = 1 except for
            ``anchordiff_multi``; the first row is ``anchors[k]``).
        token_heatmaps: (K, gh, gw) float32 in [0, 1] on the CPU, the maps on the token grid.
        degenerate: (K,) bool, True where the token map was constant (max == min).
        timings: seconds per step ("encode_text", "encode_image", "invert"/"noise", "forward", "heatmaps",
            "total"; "generate" for :meth:`AnchorDiff.generate`).
        concepts: the K concept names; method: the method that made the maps.
        record: the recording the maps came from (kept by :meth:`AnchorDiff.generate` and
            ``__call__(..., return_record=True)``), else None.
    """

    heatmaps: Tensor
    masks: Tensor
    anchors: Tensor
    anchor_sets: list[Tensor]
    token_heatmaps: Tensor
    degenerate: Tensor
    timings: dict[str, float]
    concepts: list[str] = field(default_factory=list)
    method: str = "anchordiff"
    record: AttentionRecord | None = None


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class AnchorDiff:
    """AnchorDiff and its baselines on a diffusers ``StableDiffusion3Pipeline``.

    Build it with :meth:`from_pretrained`. The object holds the pipeline (loaded once) and the options
    (:class:`AnchorDiffOptions`); ``config`` lists both for reports.
    """

    def __init__(
        self,
        pipe: Any,
        *,
        model: str = "custom",
        preset: str = "sd3",
        revision: str | None = None,
        options: AnchorDiffOptions | None = None,
    ):
        check_preset(preset)
        self.pipe = pipe
        self.model = model
        self.preset = preset
        self.revision = revision
        self.options = options or AnchorDiffOptions()
        self.transformer = pipe.transformer
        self.num_layers = len(self.transformer.transformer_blocks)
        self.device = self.transformer.device
        self.dtype = self.transformer.dtype
        tiny = model == TINY
        self.graph_layers = self._check_layers(
            self.options.graph_layers or (TINY_GRAPH_LAYERS if tiny else PRESETS[preset].graph_layers),
            what="graph layers" if self.options.graph_layers else f"the graph layers of preset {preset!r}",
        )
        self.seg4diff_layers = self._check_layers(
            self.options.seg4diff_layers
            or (TINY_SEG4DIFF_LAYERS if tiny else PRESETS[preset].seg4diff_layers),
            what="seg4diff_layers"
            if self.options.seg4diff_layers
            else f"the Seg4Diff layers of preset {preset!r}",
        )
        self.max_sequence_length = self.options.max_sequence_length or (
            TINY_MAX_SEQUENCE_LENGTH if tiny else DEFAULT_MAX_SEQUENCE_LENGTH
        )
        self.patch_size = self.transformer.config.patch_size
        self.token_factor = pipe.vae_scale_factor * self.patch_size
        native = self.transformer.config.sample_size * pipe.vae_scale_factor
        self.resolution = self.options.resolution or native
        if self.resolution % self.token_factor:
            raise ValueError(
                f"resolution {self.resolution} must be a multiple of {self.token_factor} "
                f"(VAE factor {pipe.vae_scale_factor} x patch {self.patch_size})"
            )
        limit = self.transformer.config.pos_embed_max_size * self.token_factor
        if self.resolution > limit:
            raise ValueError(
                f"resolution {self.resolution} exceeds the model's positional embeddings ({limit} px)"
            )

    # -- construction ------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        model: str,
        preset: str | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        revision: str | None = None,
        *,
        local_files_only: bool | None = None,
        **options: Any,
    ) -> AnchorDiff:
        """Load a backbone once.

        Args:
            model: a diffusers SD3 / SD3.5 repo id (from the Hugging Face cache when offline), a local folder
                in the diffusers layout, ``"tiny"`` (seeded miniature, offline, CPU) or ``"random-sd3"`` /
                ``"random-sd35"`` (random weights of the real SD3-medium / SD3.5-large transformer, tiny text
                encoders, small VAE: for offline timing).
            preset: "sd3" or "sd35": graph-layer defaults (and the architecture of ``"tiny"``). None: from
                the model name for ``random-*``, "sd35" for a 38-block transformer, else "sd3".
            device: default CUDA when available, else CPU.
            dtype: ``torch.bfloat16`` / ``float16`` / ``float32`` or its name (``"bfloat16"``; others raise a
                ValueError naming these); default bfloat16 on CUDA and float32 on the CPU (always float32 for
                ``"tiny"`` unless given).
            revision: Hub revision of a repo id.
            local_files_only: passed to ``from_pretrained`` when given.
            **options: fields of :class:`AnchorDiffOptions` (e.g. ``prompt_template``, ``graph_layers``).
        """
        if not isinstance(model, str) or not model:
            raise TypeError(
                f"model must be a repo id, a folder, 'tiny' or 'random-sd3'/'random-sd35', got {model!r}"
            )
        if preset is not None:
            check_preset(preset)
        if model.startswith(RANDOM_PREFIX):
            implied = check_preset(model.removeprefix(RANDOM_PREFIX)).name
            if preset is not None and preset != implied:
                raise ValueError(f"model {model!r} is the {implied!r} architecture; drop preset={preset!r}")
            preset = implied
        device = torch.device(device) if device is not None else _default_device()
        if dtype is None:
            dtype = torch.bfloat16 if device.type == "cuda" and model != TINY else torch.float32
        dtype = torch_dtype(dtype)
        known = {f.name for f in fields(AnchorDiffOptions)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"unexpected keyword argument(s) {unknown}: the options are {sorted(known)}")
        for name in ("graph_layers", "seg4diff_layers"):
            layers = options.get(name)
            if layers is not None and not isinstance(layers, str) and isinstance(layers, Iterable):
                options[name] = tuple(layers)
        opts = AnchorDiffOptions(**options)
        pipe = load_pipeline(model, preset or "sd3", device, dtype, revision, local_files_only)
        pipe.set_progress_bar_config(disable=True)
        if preset is None:
            num_layers = pipe.transformer.config.num_layers
            preset = "sd35" if num_layers == PRESETS["sd35"].num_layers and model != TINY else "sd3"
        return cls(pipe, model=model, preset=preset, revision=revision, options=opts)

    def graph_inputs(self, record: AttentionRecord, layers: Any = None) -> tuple[Tensor, Tensor]:
        """The mean A_II (N, N) and O_II (N, D) over ``layers`` (None: ``graph_layers``), on ``device``."""
        return _graph_inputs(self, record, None if layers is None else self._check_layers(layers))

    def with_options(self, **changes: Any) -> AnchorDiff:
        """The same loaded pipeline with some options changed (e.g. ``anchor_threshold=0.7`` in a sweep)."""
        options = replace(self.options, **changes)
        return AnchorDiff(
            self.pipe, model=self.model, preset=self.preset, revision=self.revision, options=options
        )

    @property
    def config(self) -> dict[str, Any]:
        """Model reference, preset, dtype, device and every option (with defaults resolved), for reports."""
        return {
            **{k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self.options).items()},
            "model": self.model,
            "revision": self.revision,
            "preset": self.preset,
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": str(self.device),
            "num_layers": self.num_layers,
            "resolution": self.resolution,
            "grid": (self.resolution // self.token_factor,) * 2,
            "graph_layers": list(self.graph_layers),
            "seg4diff_layers": list(self.seg4diff_layers),
            "anchor_layers": "all",
            "recorded_step": self.options.recorded_step,
            "max_sequence_length": self.max_sequence_length,
            "default_mode": "invert",
            "default_steps": DEFAULT_STEPS,
            "default_gate_quantile": DEFAULT_GATE_QUANTILE,
            "mask_rule": "heatmap > mean(heatmap)",
            "cfg_recording": "conditional half",
            "concept_tokens": "content tokens only (no BOS/EOS/padding), mean over tokens",
        }

    # -- input checks ------------------------------------------------------------------------------------
    def _check_layers(self, layers: Any, *, what: str = "layers") -> tuple[int, ...]:
        if isinstance(layers, str):
            if layers == "all":
                return tuple(range(self.num_layers))
            raise ValueError(f"{what} must be a tuple of block indices or 'all', got {layers!r}")
        if isinstance(layers, int) and not isinstance(layers, bool):
            layers = (layers,)
        if not isinstance(layers, Iterable):
            raise TypeError(f"{what} must be a tuple of block indices or 'all', got {layers!r}")
        layers = tuple(layers)
        if not layers or not all(isinstance(x, int) and not isinstance(x, bool) for x in layers):
            raise ValueError(f"{what} must be a non-empty tuple of int block indices, got {layers!r}")
        bad = [x for x in layers if not 0 <= x < self.num_layers]
        if bad:
            raise ValueError(
                f"{what} {bad} out of range: this model has {self.num_layers} blocks (0..{self.num_layers - 1}); "
                "pass layers within that range (or graph_layers=... to from_pretrained)"
            )
        return tuple(sorted(set(layers)))

    @staticmethod
    def _check_concepts(concepts: Any) -> list[str]:
        if isinstance(concepts, str) or not isinstance(concepts, Sequence):
            raise TypeError(f"concepts must be a list of strings such as ['husky', 'wolf'], got {concepts!r}")
        if not concepts:
            raise ValueError("concepts is empty: pass at least one concept name, e.g. ['husky', 'wolf']")
        names = []
        for concept in concepts:
            if not isinstance(concept, str) or not concept.strip():
                raise ValueError(
                    f"every concept must be a non-empty string, got {concept!r} in {list(concepts)}"
                )
            names.append(concept.strip())
        seen: dict[str, str] = {}
        for name in names:
            if name.lower() in seen:
                raise ValueError(f"duplicate concept {name!r} in {names}: pass each concept once")
            seen[name.lower()] = name
        return names

    @staticmethod
    def _check_image(image: Any) -> Image.Image:
        if not isinstance(image, Image.Image):
            hint = " (convert with PIL.Image.fromarray(array))" if hasattr(image, "shape") else ""
            raise TypeError(
                f"image must be a PIL.Image.Image, got {type(image).__name__}{hint}; "
                "to read a file use PIL.Image.open(path).convert('RGB')"
            )
        if min(image.size) < 1:
            raise ValueError(f"image is empty: size {image.size}")
        return image.convert("RGB")

    @staticmethod
    def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
        if value not in allowed:
            raise ValueError(f"unknown {name} {value!r}: use one of {', '.join(allowed)}")
        return value

    @staticmethod
    def _check_graph_args(steps: Any, gate_quantile: Any) -> None:
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise ValueError(f"steps (propagation steps) must be a positive int, got {steps!r}")
        if not isinstance(gate_quantile, int | float) or not 0.0 < float(gate_quantile) < 1.0:
            raise ValueError(f"gate_quantile must be in (0, 1), got {gate_quantile!r}")

    def _check_prompt(self, prompt: Any, concepts: list[str]) -> str:
        if prompt is None:
            return self.options.prompt_template.format(concepts=self.options.concept_separator.join(concepts))
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"prompt must be a non-empty string or None (for the template), got {prompt!r}")
        return prompt

    # -- the method --------------------------------------------------------------------------------------
    def __call__(
        self,
        image: Image.Image,
        concepts: list[str],
        *,
        mode: str = "invert",
        prompt: str | None = None,
        method: str = "anchordiff",
        layers: Any = None,
        steps: int = DEFAULT_STEPS,
        gate_quantile: float = DEFAULT_GATE_QUANTILE,
        seed: int = 0,
        return_record: bool = False,
    ) -> AnchorDiffOutput:
        """Ground ``concepts`` in ``image``.

        Args:
            image: an RGB PIL image of any size (other modes are converted).
            concepts: K distinct concept names, e.g. ``["husky", "wolf", "malamute"]``.
            mode: "invert" (default: Euler inversion to the midpoint) or "noise" (seeded noise, one pass).
            prompt: the prompt of the recorded pass; None = the options' template over the concepts.
            method: "anchordiff" (default), "anchordiff_multi" (one anchor per instance), "cross_attention"
                (A_CI alone), "concept_attention" (ConceptAttention's output-space maps), "seg4diff" (Seg4Diff's
                image-to-text attention), "no_gate" (W = W_cos), "no_wcos" (W = W_attn * G).
            layers: for the graph methods the graph layers (None = ``ad.graph_layers``); for the baselines
                the blocks averaged (None = all; for seg4diff ``ad.seg4diff_layers``). Block indices or "all".
            steps: propagation steps N_diff. gate_quantile: quantile of the A_II gate tau_W.
            seed: seed of the noise (``mode="noise"``) and of a sampled VAE latent.
            return_record: keep the :class:`AttentionRecord` in ``output.record``.

        Returns:
            :class:`AnchorDiffOutput` with (K, H, W) heatmaps and masks at the input image's size.
        """
        started = time.perf_counter()
        image = self._check_image(image)
        concepts = self._check_concepts(concepts)
        self._check_choice("mode", mode, MODES)
        self._check_choice("method", method, tuple(MAP_BUILDERS))
        self._check_graph_args(steps, gate_quantile)
        graph = MAP_BUILDERS[method].needs_graph
        if layers is not None:
            layers = self._check_layers(layers)
        graph_layers = (layers or self.graph_layers) if graph else ()
        record = self.record(image, concepts, mode=mode, prompt=prompt, graph_layers=graph_layers, seed=seed)
        output = self.heatmaps_from_record(
            record, method=method, layers=layers, steps=steps, gate_quantile=gate_quantile
        )
        output.timings = {
            **record.timings,
            "heatmaps": output.timings["heatmaps"],
            "total": time.perf_counter() - started,
        }
        if return_record:
            output.record = record
        return output

    @torch.no_grad()
    def record(
        self,
        image: Image.Image,
        concepts: list[str],
        *,
        mode: str = "invert",
        prompt: str | None = None,
        graph_layers: Any = None,
        seed: int = 0,
    ) -> AttentionRecord:
        """Record A_II / O_II at ``graph_layers`` and A_CI / concept-stream outputs at every block.

        ``graph_layers``: None = ``ad.graph_layers``; "all" = every block (layer sweeps); () = none (the
        baselines need no A_II). The record is on ``ad.device``; build maps with :meth:`heatmaps_from_record`.
        """
        timings: dict[str, float] = {}
        clock = self._clock(timings)
        image = self._check_image(image)
        concepts = self._check_concepts(concepts)
        self._check_choice("mode", mode, MODES)
        if graph_layers is None:
            graph_layers = self.graph_layers
        elif not (isinstance(graph_layers, tuple | list) and len(graph_layers) == 0):
            graph_layers = self._check_layers(graph_layers, what="graph_layers")
        prompt = self._check_prompt(prompt, concepts)

        # 1. Text: the prompt (conditional only) and each concept on its own.
        prompt_embeds, pooled = self._encode_prompt(prompt)
        tokens = self.encode_concepts(concepts)
        prompt_tokens = self.prompt_tokens(prompt, concepts)
        clock("encode_text")

        # 2. Image -> clean latent at the native size.
        latents = self._encode_image(image, seed)
        clock("encode_image")

        # 3. The latent at the recorded timestep.
        scheduler, timesteps = self._schedule(latents)
        index = self.options.recorded_step
        if mode == "noise":
            generator = torch.Generator("cpu").manual_seed(seed)
            noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32).to(latents.device)
            noisy = scheduler.scale_noise(latents, timesteps[index].reshape(1), noise)
        else:
            noisy = self._invert(latents, scheduler, index, prompt_embeds, pooled)
        clock(mode)

        # 4. One recorded forward at the midpoint timestep.
        state = self._recorded_forward(
            noisy, timesteps[index], prompt_embeds, pooled, tokens, prompt_tokens, graph_layers
        )
        clock("forward")
        return self._assemble_record(
            state,
            tokens,
            prompt_tokens,
            grid=tuple(s // self.patch_size for s in latents.shape[-2:]),
            image_size=image.size,
            prompt=prompt,
            mode=mode,
            concepts=concepts,
            timestep=float(timesteps[index]),
            timings=timings,
        )

    def heatmaps_from_record(
        self,
        record: AttentionRecord,
        *,
        method: str = "anchordiff",
        layers: Any = None,
        steps: int = DEFAULT_STEPS,
        gate_quantile: float = DEFAULT_GATE_QUANTILE,
        anchor_layers: Any = None,
    ) -> AnchorDiffOutput:
        """Maps of ``method`` from a recording (sweeps over methods, layers and steps record once per image).

        ``layers``: graph layers for the graph methods (None = ``ad.graph_layers``; must have been recorded),
        averaged blocks for the baselines (None = all; seg4diff: ``ad.seg4diff_layers``). ``anchor_layers``: blocks whose A_CI is averaged for
        the anchors and ``cross_attention`` (None = all, as the paper).
        """
        started = time.perf_counter()
        self._check_choice("method", method, tuple(MAP_BUILDERS))
        self._check_graph_args(steps, gate_quantile)
        device = self.device
        all_layers = tuple(range(record.a_ci.shape[0]))
        anchor_layers = (
            all_layers if anchor_layers is None else self._check_layers(anchor_layers, what="anchor_layers")
        )
        a_ci = record.a_ci[list(anchor_layers)].to(device).mean(dim=0)  # (K, N)
        if layers is not None:
            layers = self._check_layers(layers)
        token_maps, anchors = MAP_BUILDERS[method].build(self, record, layers, a_ci, steps, gate_quantile)
        token_maps, degenerate = minmax(token_maps)
        return self._output(record, method, token_maps, anchors, degenerate, started)

    @torch.no_grad()
    def generate(
        self,
        prompt: str,
        concepts: list[str],
        *,
        num_inference_steps: int = 28,
        guidance_scale: float = 7.0,
        height: int | None = None,
        width: int | None = None,
        seed: int = 0,
        negative_prompt: str | None = None,
        method: str = "anchordiff",
        layers: Any = None,
        steps: int = DEFAULT_STEPS,
        gate_quantile: float = DEFAULT_GATE_QUANTILE,
    ) -> tuple[Image.Image, AnchorDiffOutput]:
        """Generate an image and ground ``concepts`` in it, recorded at step ``num_inference_steps // 2``.

        Under classifier-free guidance (``guidance_scale > 1``) the conditional half is recorded. Returns
        the PIL image and the maps at its size; ``output.record`` holds the recording.
        """
        started = time.perf_counter()
        concepts = self._check_concepts(concepts)
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"prompt must be a non-empty string, got {prompt!r}")
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be a positive int, got {num_inference_steps!r}")
        self._check_choice("method", method, tuple(MAP_BUILDERS))
        self._check_graph_args(steps, gate_quantile)
        height = height or self.resolution
        width = width or self.resolution
        for name, size in (("height", height), ("width", width)):
            if size % self.token_factor:
                raise ValueError(f"{name} must be a multiple of {self.token_factor}, got {size}")
        if layers is not None:
            layers = self._check_layers(layers)
        graph_layers = (layers or self.graph_layers) if MAP_BUILDERS[method].needs_graph else ()
        tokens = self.encode_concepts(concepts)
        prompt_tokens = self.prompt_tokens(prompt, concepts)
        step = num_inference_steps // 2
        recorder = AttentionRecorder(
            self.transformer,
            graph_layers=graph_layers,
            concepts=tokens,
            prompt_tokens=prompt_tokens,
            cfg=guidance_scale > 1.0,
            armed=step == 0,
            o_ii_mode=self.options.o_ii_heads,
            head_chunk_bytes=self.options.head_chunk_mb * 2**20,
        )

        def arm_before_recorded_step(pipe: Any, i: int, t: Any, callback_kwargs: dict) -> dict:
            if i + 1 == step:
                recorder.arm()
            return {}

        with recorder:
            result = self.pipe(
                prompt=prompt,
                negative_prompt=negative_prompt,
                num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale,
                height=height,
                width=width,
                generator=torch.Generator("cpu").manual_seed(seed),
                max_sequence_length=self.max_sequence_length,
                callback_on_step_end=arm_before_recorded_step,
                output_type="pil",
            )
        if recorder.state.recorded_forwards != 1:
            raise RuntimeError(f"expected one recorded step, got {recorder.state.recorded_forwards}")
        image = result.images[0]
        record = self._assemble_record(
            recorder.state,
            tokens,
            prompt_tokens,
            grid=(height // self.token_factor, width // self.token_factor),
            image_size=image.size,
            prompt=prompt,
            mode="generate",
            concepts=concepts,
            timestep=float(self.pipe.scheduler.timesteps[step]),
            timings={"generate": time.perf_counter() - started},
        )
        output = self.heatmaps_from_record(
            record, method=method, layers=layers, steps=steps, gate_quantile=gate_quantile
        )
        output.timings = {
            **record.timings,
            "heatmaps": output.timings["heatmaps"],
            "total": time.perf_counter() - started,
        }
        output.record = record
        return image, output

    # -- steps ---------------------------------------------------------------------------------------------
    def _clock(self, timings: dict[str, float]):
        """A function that stores the seconds since its last call under a name (CUDA synchronised)."""
        last = [time.perf_counter()]

        def clock(name: str) -> None:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            now = time.perf_counter()
            timings[name] = timings.get(name, 0.0) + now - last[0]
            last[0] = now

        return clock

    def _encode_prompt(self, prompt: str) -> tuple[Tensor, Tensor]:
        """(1, T, joint_attention_dim) prompt embeddings and (1, pooled_projection_dim) pooled, model dtype."""
        embeds, _, pooled, _ = self.pipe.encode_prompt(
            prompt=prompt,
            prompt_2=None,
            prompt_3=None,
            device=self.device,
            do_classifier_free_guidance=False,
            max_sequence_length=self.max_sequence_length,
        )
        return embeds.to(self.dtype), pooled.to(self.dtype)

    @torch.no_grad()
    def encode_concepts(self, concepts: list[str]) -> ConceptTokens:
        """Each concept encoded on its own by the pipeline's encoders; its content tokens through context_embedder.

        A concept's content tokens are its CLIP tokens without BOS / EOS / padding (the CLIP-L and CLIP-G
        hidden states share positions and are concatenated per position, as ``encode_prompt`` does) and its
        T5 tokens without EOS / padding. Raises ValueError for a concept with no content token.
        """
        concepts = self._check_concepts(concepts)
        pipe = self.pipe
        embeds, _, _, _ = pipe.encode_prompt(
            prompt=concepts,
            prompt_2=None,
            prompt_3=None,
            device=self.device,
            do_classifier_free_guidance=False,
            max_sequence_length=self.max_sequence_length,
        )  # (K, 77 + T, joint_attention_dim)
        clip_length = embeds.shape[1] - self.max_sequence_length
        clip = pipe.tokenizer(
            concepts, padding="max_length", max_length=clip_length, truncation=True, return_tensors="pt"
        )
        clip_real = clip.attention_mask.sum(dim=1).tolist()
        t5_real = [0] * len(concepts)
        if pipe.text_encoder_3 is not None:
            t5 = pipe.tokenizer_3(
                concepts,
                padding="max_length",
                max_length=self.max_sequence_length,
                truncation=True,
                add_special_tokens=True,
                return_tensors="pt",
            )
            t5_real = t5.attention_mask.sum(dim=1).tolist()
        rows, index = [], []
        for k, concept in enumerate(concepts):
            positions = list(range(1, clip_real[k] - 1))  # between BOS and EOS
            positions += [clip_length + j for j in range(max(0, t5_real[k] - 1))]  # before EOS
            if not positions:
                raise ValueError(f"concept {concept!r} has no content token after tokenization; use a word")
            rows.append(embeds[k, positions])
            index += [k] * len(positions)
        hidden = self.transformer.context_embedder(torch.cat(rows).to(self.dtype))[None]  # (1, M, D)
        return ConceptTokens(hidden, torch.tensor(index, device=self.device), len(concepts))

    def prompt_tokens(self, prompt: str, concepts: list[str]) -> PromptTokens:
        """Each concept's CLIP sub-word tokens in the prompt, as positions of the prompt's context (Seg4Diff).

        The prompt is tokenized as ``encode_prompt`` tokenizes it for CLIP (``pipe.tokenizer``, BOS at position
        0, ``tokenizer_max_length`` positions, truncated). Concept k's positions are the first run of its own
        token ids (no BOS / EOS) after concept k-1's, else the first anywhere; empty when the prompt does not
        hold it (a custom prompt without the concept, or truncated away).
        """
        tokenizer = self.pipe.tokenizer
        length = self.pipe.tokenizer_max_length
        ids = tokenizer(prompt, max_length=length, truncation=True).input_ids[:-1]  # BOS + content, no EOS

        def find(piece: list[int], start: int) -> int | None:
            for i in range(max(start, 1), len(ids) - len(piece) + 1):
                if ids[i : i + len(piece)] == piece:
                    return i
            return None

        positions, cursor = [], 1
        for concept in concepts:
            piece = tokenizer(concept, add_special_tokens=False).input_ids
            at = (find(piece, cursor) if piece else None) or (find(piece, 1) if piece else None)
            if at is None:
                positions.append(())
                continue
            positions.append(tuple(range(at, at + len(piece))))
            cursor = at + len(piece)
        return PromptTokens(tuple(positions), clip_length=length)

    def _encode_image(self, image: Image.Image, seed: int) -> Tensor:
        """(1, C, res/f, res/f) float32 clean latent ``(z - shift) * scale`` of the image stretched to res x res."""
        pipe = self.pipe
        pixels = pipe.image_processor.preprocess(image, height=self.resolution, width=self.resolution)
        pixels = pixels.to(device=self.device, dtype=pipe.vae.dtype)
        posterior = pipe.vae.encode(pixels).latent_dist
        if self.options.vae_latent == "mode":
            latent = posterior.mode()
        else:
            latent = posterior.sample(torch.Generator(self.device).manual_seed(seed))
        shift = pipe.vae.config.shift_factor or 0.0
        return (latent.float() - shift) * pipe.vae.config.scaling_factor

    def _schedule(self, latents: Tensor) -> tuple[Any, Tensor]:
        """A private copy of the pipeline's scheduler with ``num_inference_steps`` timesteps set."""
        from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift

        scheduler = type(self.pipe.scheduler).from_config(self.pipe.scheduler.config)
        kwargs = {}
        if scheduler.config.get("use_dynamic_shifting", False):
            seq_len = (latents.shape[-2] // self.patch_size) * (latents.shape[-1] // self.patch_size)
            kwargs["mu"] = calculate_shift(
                seq_len,
                scheduler.config.get("base_image_seq_len", 256),
                scheduler.config.get("max_image_seq_len", 4096),
                scheduler.config.get("base_shift", 0.5),
                scheduler.config.get("max_shift", 1.16),
            )
        scheduler.set_timesteps(self.options.num_inference_steps, device=self.device, **kwargs)
        return scheduler, scheduler.timesteps

    def _invert(
        self, latents: Tensor, scheduler: Any, index: int, prompt_embeds: Tensor, pooled: Tensor
    ) -> Tensor:
        """Deterministic Euler flow-matching inversion from sigma = 0 up to ``sigmas[index]``.

        ``x <- x + (sigma_next - sigma) * v(x, sigma * num_train_timesteps)`` over the scheduler's sigmas in
        reverse: ``num_inference_steps - index`` transformer calls (batch 2 when
        ``inversion_guidance_scale > 1``: ``v = v_uncond + scale * (v_cond - v_uncond)``).
        """
        scale = self.options.inversion_guidance_scale
        if scale > 1.0:
            negative_embeds, negative_pooled = self._encode_prompt("")
            prompt_embeds = torch.cat([negative_embeds, prompt_embeds])
            pooled = torch.cat([negative_pooled, pooled])
        sigmas = scheduler.sigmas.to(self.device, torch.float32)  # (n + 1,) descending, last = 0
        train_steps = scheduler.config.num_train_timesteps
        x = latents
        for i in range(len(sigmas) - 1, index, -1):
            sigma, sigma_next = sigmas[i], sigmas[i - 1]
            model_input = x.to(self.dtype).expand(len(prompt_embeds), -1, -1, -1)
            velocity = self.transformer(
                hidden_states=model_input,
                timestep=(sigma * train_steps).expand(len(model_input)),
                encoder_hidden_states=prompt_embeds,
                pooled_projections=pooled,
                return_dict=False,
            )[0].float()
            if scale > 1.0:
                uncond, cond = velocity.chunk(2)
                velocity = uncond + scale * (cond - uncond)
            x = x + (sigma_next - sigma) * velocity
        return x

    def _recorded_forward(
        self,
        latents: Tensor,
        timestep: Tensor,
        prompt_embeds: Tensor,
        pooled: Tensor,
        tokens: ConceptTokens,
        prompt_tokens: PromptTokens,
        graph_layers: tuple[int, ...],
    ):
        """One transformer forward under the recorder (two with ``concept_pass="separate"``); its state."""
        kwargs = {
            "o_ii_mode": self.options.o_ii_heads,
            "head_chunk_bytes": self.options.head_chunk_mb * 2**20,
        }
        inputs = {
            "hidden_states": latents.to(self.dtype),
            "timestep": timestep.reshape(1).to(self.device),
            "encoder_hidden_states": prompt_embeds,
            "pooled_projections": pooled,
            "return_dict": False,
        }
        if self.options.concept_pass == "joint":
            with AttentionRecorder(
                self.transformer, graph_layers=graph_layers, concepts=tokens, prompt_tokens=prompt_tokens,
                **kwargs,
            ) as rec:  # fmt: skip
                self.transformer(**inputs)
            return rec.state
        with AttentionRecorder(
            self.transformer, graph_layers=graph_layers, concepts=None, **kwargs
        ) as graph_rec:
            self.transformer(**inputs)
        with AttentionRecorder(
            self.transformer, graph_layers=(), concepts=tokens, prompt_tokens=prompt_tokens, **kwargs
        ) as rec:
            self.transformer(**inputs)
        rec.state.a_ii.update(graph_rec.state.a_ii)
        rec.state.o_ii.update(graph_rec.state.o_ii)
        return rec.state

    def _assemble_record(
        self, state: Any, tokens: ConceptTokens, prompt_tokens: PromptTokens, **record_fields: Any
    ) -> AttentionRecord:
        layers = range(self.num_layers)
        missing = [x for x in layers if x not in state.a_ci]
        if missing:
            raise RuntimeError(f"the concept stream did not reach blocks {missing}")
        return AttentionRecord(
            a_ii=dict(state.a_ii),
            o_ii=dict(state.o_ii),
            a_ci=torch.stack([state.a_ci[x] for x in layers]),
            concept_outputs=torch.stack([state.concept_outputs[x] for x in layers]),
            concept_maps=torch.stack([state.concept_maps[x] for x in layers]),
            concept_token_counts=tokens.token_counts().tolist(),
            i2t_joint=torch.stack([state.i2t_joint[x] for x in layers]),
            i2t_clip=torch.stack([state.i2t_clip[x] for x in layers]),
            prompt_positions=[list(p) for p in prompt_tokens.positions],
            **record_fields,
        )

    def _output(
        self,
        record: AttentionRecord,
        method: str,
        token_maps: Tensor,
        anchors: Tensor | list[Tensor],
        degenerate: Tensor,
        started: float,
    ) -> AnchorDiffOutput:
        """Token maps (K, N) -> the output at the input image's size (bilinear, min-max, mean threshold)."""
        gh, gw = record.grid
        width, height = record.image_size
        grid_maps = token_maps.reshape(-1, gh, gw)
        upsampled = F.interpolate(
            grid_maps[None], size=(height, width), mode="bilinear", align_corners=False
        )[0]
        heatmaps = minmax(upsampled.reshape(len(upsampled), -1))[0].reshape(upsampled.shape)
        masks = mean_threshold_masks(heatmaps)
        if isinstance(anchors, list):  # several anchors per concept
            flat_sets = [a.long().reshape(-1) for a in anchors]
        else:
            flat_sets = list(anchors.long()[:, None])
        anchor_sets = [torch.stack([a // gw, a % gw], dim=1).cpu() for a in flat_sets]
        anchors_rc = torch.stack([a[0] for a in anchor_sets])
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return AnchorDiffOutput(
            heatmaps=heatmaps.cpu(),
            masks=masks.cpu(),
            anchors=anchors_rc,
            anchor_sets=anchor_sets,
            token_heatmaps=grid_maps.cpu(),
            degenerate=degenerate.cpu(),
            timings={"heatmaps": time.perf_counter() - started},
            concepts=list(record.concepts),
            method=method,
        )
