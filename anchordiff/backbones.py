"""The SD3 / SD3.5 backbones AnchorDiff runs on: presets, real configurations, offline miniatures.

- ``PRESETS``: the paper's backbones (``method.md``, "Backbones"): their Hub repos and graph layers.
- ``SD3_MEDIUM_TRANSFORMER`` / ``SD35_LARGE_TRANSFORMER``: the published ``transformer/config.json`` values
  of stabilityai/stable-diffusion-3-medium-diffusers and stabilityai/stable-diffusion-3.5-large (written
  here because nothing can be downloaded; SD3-medium's pos_embed of 192^2 = 36864 positions and SD3.5-large's
  38 blocks match diffusers' single-file checkpoint detection).
- :func:`build_tiny_pipeline`: a seeded random miniature ``StableDiffusion3Pipeline`` (same classes and block
  structure, a few blocks, 128 px native size) with the tiny tokenizers of ``manifests.tiny``: offline, CPU,
  well under a second per forward.
- :func:`build_random_pipeline`: random weights of the REAL transformer configuration with tiny text encoders
  and a small random VAE of the real latent channels and downsampling factor, for offline GPU timing.
- :func:`load_pipeline`: any of the above, or a Hub repo id / local folder via ``from_pretrained``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch

from manifests.dtypes import torch_dtype

TINY = "tiny"
RANDOM_PREFIX = "random-"


@dataclass(frozen=True)
class Preset:
    """A backbone of the paper. ``graph_layers``: the blocks whose A_II / O_II build the graph;
    ``seg4diff_layers``: the "semantic grounding expert" blocks the Seg4Diff baseline reads."""

    name: str
    repo: str
    num_layers: int
    graph_layers: tuple[int, ...]
    transformer_config: dict
    seg4diff_layers: tuple[int, ...]


SD3_MEDIUM_TRANSFORMER: dict = {
    "sample_size": 128,
    "patch_size": 2,
    "in_channels": 16,
    "out_channels": 16,
    "num_layers": 24,
    "attention_head_dim": 64,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "caption_projection_dim": 1536,
    "pooled_projection_dim": 2048,
    "pos_embed_max_size": 192,
}

SD35_LARGE_TRANSFORMER: dict = {
    **SD3_MEDIUM_TRANSFORMER,
    "num_layers": 38,
    "num_attention_heads": 38,
    "caption_projection_dim": 2432,
    "qk_norm": "rms_norm",
}

# The SD3 / SD3.5 VAE's latent normalisation and the scheduler (shared by both releases).
SD3_VAE_SCALING_FACTOR = 1.5305
SD3_VAE_SHIFT_FACTOR = 0.0609
SD3_SCHEDULER = {"num_train_timesteps": 1000, "shift": 3.0}

# Seg4Diff's expert blocks (docs/seg4diff.md): SD3-medium block 9 (``configs/eval_ovss.yaml``,
# ``ATTENTION_LAYERS: [9]``). Its code names no block for SD3.5 (``eval_sd35.sh`` passes an unset
# ``$layer``) and loads only SD3.5-medium: for SD3.5-large [decision] block 14, SD3's relative depth
# 9 / 24 on 38 blocks (9 * 38 / 24 = 14.25); `mcc sweep --method seg4diff` measures the others.
PRESETS: dict[str, Preset] = {
    "sd3": Preset(
        "sd3", "stabilityai/stable-diffusion-3-medium-diffusers", 24, (9, 18), SD3_MEDIUM_TRANSFORMER, (9,)
    ),
    "sd35": Preset(
        "sd35", "stabilityai/stable-diffusion-3.5-large", 38, (23, 31), SD35_LARGE_TRANSFORMER, (14,)
    ),
}

# The miniatures: 4 blocks, 2 heads x 16, a 16 x 16 token grid at the native 128 px.
TINY_TRANSFORMER: dict = {
    "sample_size": 32,
    "patch_size": 2,
    "in_channels": 16,
    "out_channels": 16,
    "num_layers": 4,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "joint_attention_dim": 64,
    "caption_projection_dim": 32,
    "pooled_projection_dim": 64,
    "pos_embed_max_size": 32,
}
TINY_SD35_EXTRA: dict = {"dual_attention_layers": (0, 1), "qk_norm": "rms_norm"}
# Graph layers of the 4-block miniatures: blocks 1 and 2 (both inside, neither the first nor the
# context_pre_only last block), the relative depths of SD3's {9, 18} of 24 rounded to 4 blocks.
TINY_GRAPH_LAYERS: tuple[int, ...] = (1, 2)
# Seg4Diff's block of the miniatures: SD3's 9 of 24 on 4 blocks (1.5), the inner block 1.
TINY_SEG4DIFF_LAYERS: tuple[int, ...] = (1,)
TINY_MAX_SEQUENCE_LENGTH = 32


def check_preset(preset: str) -> Preset:
    """The preset named ``preset``, or a ValueError listing the known ones."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}: use one of {sorted(PRESETS)}")
    return PRESETS[preset]


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device):
    """Seed torch's generators inside the block and restore the caller's RNG state afterwards."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _tiny_text_encoders(clip_projection_dim: int, t5_dim: int) -> dict:
    """Two tiny CLIP text encoders with projection and a tiny T5 encoder, with the manifests.tiny tokenizers.

    ``pooled_projection_dim`` of the transformer = 2 * ``clip_projection_dim``; its ``joint_attention_dim`` =
    ``t5_dim`` (the concatenated CLIP hidden states, 2 x 32, are zero-padded to it by the pipeline).
    """
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    from manifests.tiny import tiny_clip_tokenizer, tiny_t5_tokenizer

    clip_tokenizer = tiny_clip_tokenizer()
    t5_tokenizer = tiny_t5_tokenizer()
    components = {}
    for name in ("text_encoder", "text_encoder_2"):
        config = CLIPTextConfig(
            vocab_size=len(clip_tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            projection_dim=clip_projection_dim,
            max_position_embeddings=clip_tokenizer.model_max_length,
            bos_token_id=clip_tokenizer.bos_token_id,
            eos_token_id=clip_tokenizer.eos_token_id,
            pad_token_id=clip_tokenizer.pad_token_id,
        )
        components[name] = CLIPTextModelWithProjection(config).eval()
    t5_config = T5Config(
        vocab_size=len(t5_tokenizer),
        d_model=t5_dim,
        d_ff=64,
        d_kv=8,
        num_layers=1,
        num_heads=2,
        relative_attention_num_buckets=8,
        dropout_rate=0.0,
        pad_token_id=t5_tokenizer.pad_token_id,
        eos_token_id=t5_tokenizer.eos_token_id,
        decoder_start_token_id=t5_tokenizer.pad_token_id,
    )
    components["text_encoder_3"] = T5EncoderModel(t5_config).eval()
    components.update(tokenizer=clip_tokenizer, tokenizer_2=clip_tokenizer, tokenizer_3=t5_tokenizer)
    return components


def _small_vae(num_down_blocks: int, channels: tuple[int, ...], latent_channels: int):
    """A small random AutoencoderKL with SD3's latent normalisation; downsampling 2^(num_down_blocks - 1)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * num_down_blocks,
        up_block_types=("UpDecoderBlock2D",) * num_down_blocks,
        block_out_channels=channels,
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=8,
        scaling_factor=SD3_VAE_SCALING_FACTOR,
        shift_factor=SD3_VAE_SHIFT_FACTOR,
        use_quant_conv=False,
        use_post_quant_conv=False,
        mid_block_add_attention=False,
    ).eval()


def build_tiny_pipeline(preset: str = "sd3", seed: int = 0):
    """A seeded random miniature ``StableDiffusion3Pipeline`` on the CPU in float32.

    ``preset="sd3"``: 4 plain MMDiT blocks; ``"sd35"``: SD3.5-style blocks with ``qk_norm="rms_norm"`` and
    image-only dual attention (``attn2``) in blocks 0 and 1. Native size 128 x 128 px (VAE factor 4, patch 2:
    a 16 x 16 token grid).
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    check_preset(preset)
    config = dict(TINY_TRANSFORMER, **(TINY_SD35_EXTRA if preset == "sd35" else {}))
    with _seeded(seed, torch.device("cpu")):
        transformer = SD3Transformer2DModel(**config).eval()
        vae = _small_vae(3, (8, 16, 16), config["in_channels"])
        encoders = _tiny_text_encoders(clip_projection_dim=32, t5_dim=config["joint_attention_dim"])
    return StableDiffusion3Pipeline(
        transformer=transformer,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(**SD3_SCHEDULER),
        **encoders,
    )


def build_random_pipeline(preset: str, device: torch.device, dtype: torch.dtype, seed: int = 0):
    """Random weights of the real SD3-medium / SD3.5-large transformer, built directly on ``device``.

    Text encoders are tiny (T5 width 4096 = joint_attention_dim, CLIP projections 2 x 1024 = 2048 pooled);
    the VAE is small and random with 16 latent channels and the real downsampling factor 8, so a
    1024 x 1024 image gives the real 64 x 64 token grid. For timing and memory checks only: outputs are noise.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    dtype = torch_dtype(dtype)
    config = check_preset(preset).transformer_config
    previous = torch.get_default_dtype()
    with _seeded(seed, device), device:
        torch.set_default_dtype(dtype)  # build every weight in its final dtype, on its final device
        try:
            transformer = SD3Transformer2DModel(**config).eval()
            vae = _small_vae(4, (8, 8, 16, 16), config["in_channels"])
            encoders = _tiny_text_encoders(
                clip_projection_dim=config["pooled_projection_dim"] // 2,
                t5_dim=config["joint_attention_dim"],
            )
        finally:
            torch.set_default_dtype(previous)
    return StableDiffusion3Pipeline(
        transformer=transformer,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(**SD3_SCHEDULER),
        **encoders,
    )


def load_pipeline(
    model: str,
    preset: str,
    device: torch.device,
    dtype: torch.dtype,
    revision: str | None = None,
    local_files_only: bool | None = None,
):
    """The ``StableDiffusion3Pipeline`` for a model reference, on ``device`` in ``dtype``.

    Args:
        model: ``"tiny"``, ``"random-sd3"`` / ``"random-sd35"``, a diffusers Hub repo id (read from the local
            Hugging Face cache when offline) or a local folder in the diffusers layout.
        preset: the architecture of ``"tiny"`` (``"sd3"`` or ``"sd35"``); ignored for the others.
        local_files_only: passed to ``from_pretrained`` when not None.
    """
    from diffusers import StableDiffusion3Pipeline

    check_preset(preset)
    if model == TINY:
        pipe = build_tiny_pipeline(preset)
        return pipe.to(device) if dtype == torch.float32 else pipe.to(device=device, dtype=dtype)
    if model.startswith(RANDOM_PREFIX):
        return build_random_pipeline(check_preset(model.removeprefix(RANDOM_PREFIX)).name, device, dtype)
    kwargs: dict = {"dtype": dtype}
    if revision is not None:
        kwargs["revision"] = revision
    if local_files_only is not None:
        kwargs["local_files_only"] = local_files_only
    is_folder = Path(model).expanduser().is_dir()
    try:
        pipe = StableDiffusion3Pipeline.from_pretrained(
            str(Path(model).expanduser()) if is_folder else model, **kwargs
        )
    except (OSError, ValueError) as error:
        where = "the folder" if is_folder else "the Hub repo (or its copy in the Hugging Face cache)"
        raise OSError(
            f"could not load an SD3 pipeline from {where} {model!r}: {error}. Pass a diffusers SD3/SD3.5 repo id "
            "you have access to (SD3 is gated: accept its licence and run `hf auth login` once, then download it "
            "on a connected machine), a local folder in the diffusers layout, 'tiny', 'random-sd3' or "
            "'random-sd35'."
        ) from error
    return pipe.to(device)
