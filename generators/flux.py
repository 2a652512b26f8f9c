"""FLUX.1 image generation for planned scene records (diffusers' ``FluxPipeline``).

``FluxGenerator(model=...)`` loads the pipeline once; it is a stage (``manifests.stage``):
``run_stage(generator, store)`` turns each ``planned`` generated record into a
``generated`` one with its image stored and
the provenance on ``record.source`` (model, revision, prompt, seed, steps, guidance,
width, height). Records in other states pass through untouched, so a re-run only does
what is left.

Reproducibility: every image gets its own ``torch.Generator`` on the CPU seeded with the
record's seed, so its initial noise does not depend on the batch it is in, on the other
records, or on the GPU model; an image can be regenerated alone from its record.
(Batched matrix products may still differ from unbatched ones in the last bits.)

``model="tiny"`` builds a seeded random miniature of the same pipeline class (FLUX
transformer, 16-channel VAE, CLIP and T5 text encoders with the tokenizers of
``manifests.tiny``) offline in well under a second; its images are noise.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from generators.config import GenerateConfig
from generators.prompts import prompt_for_record
from manifests.dtypes import torch_dtype
from manifests.reasons import GenerateReason
from manifests.record import GeneratedSource, Record, State
from manifests.stage import Output, with_image
from manifests.store import ManifestStore

logger = logging.getLogger(__name__)

STAGE = "generate"
DEFAULT_MODEL = "black-forest-labs/FLUX.1-dev"
TINY = "tiny"
TINY_REVISION = "tiny-seed0"
GENERATE_FAILURE_REASONS = tuple(GenerateReason)  # manifests.reasons holds what each code means


def build_tiny_flux_pipeline(seed: int = 0, dtype: torch.dtype = torch.float32):
    """A random miniature ``FluxPipeline`` (about 0.3 M parameters), identical for a given ``seed``.

    Same classes and data flow as FLUX.1-dev: ``FluxTransformer2DModel`` with guidance
    embedding and 2x2-packed 16-channel latents (``in_channels = 4 * 16``), an
    ``AutoencoderKL`` with 16 latent channels and 4 blocks (8x downsampling) and no
    quant convs, CLIP (pooled, 32-d) and T5 (64-d) text encoders,
    ``FlowMatchEulerDiscreteScheduler`` with dynamic shifting. Weights are drawn in float32
    (the same numbers for every ``dtype``) and then cast to ``dtype``.
    """
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from manifests.tiny import tiny_clip_tokenizer, tiny_t5_tokenizer

    clip_tokenizer, t5_tokenizer = tiny_clip_tokenizer(), tiny_t5_tokenizer()
    latent_channels = 16
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = FluxTransformer2DModel(
            patch_size=1,
            in_channels=4 * latent_channels,
            num_layers=2,
            num_single_layers=2,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=64,
            pooled_projection_dim=32,
            guidance_embeds=True,
            axes_dims_rope=(4, 6, 6),
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(16, 16, 16, 16),
            layers_per_block=1,
            latent_channels=latent_channels,
            norm_num_groups=8,
            use_quant_conv=False,
            use_post_quant_conv=False,
            shift_factor=0.1159,
            scaling_factor=0.3611,
            sample_size=128,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(clip_tokenizer),
                hidden_size=32,
                intermediate_size=64,
                num_attention_heads=2,
                num_hidden_layers=2,
                max_position_embeddings=clip_tokenizer.model_max_length,
                projection_dim=32,
                bos_token_id=clip_tokenizer.bos_token_id,
                eos_token_id=clip_tokenizer.eos_token_id,
                pad_token_id=clip_tokenizer.pad_token_id,
            )
        )
        text_encoder_2 = T5EncoderModel(
            T5Config(
                vocab_size=len(t5_tokenizer),
                d_model=64,
                d_kv=32,
                d_ff=128,
                num_layers=2,
                num_heads=2,
                pad_token_id=t5_tokenizer.pad_token_id,
                eos_token_id=t5_tokenizer.eos_token_id,
                decoder_start_token_id=0,
            )
        )
    for module in (transformer, vae, text_encoder, text_encoder_2):
        module.eval()
        if dtype != torch.float32:
            module.to(dtype)
    return assemble_flux_pipeline(
        transformer, vae, text_encoder, text_encoder_2, clip_tokenizer, t5_tokenizer
    )


def assemble_flux_pipeline(transformer, vae, text_encoder, text_encoder_2, clip_tokenizer, t5_tokenizer):
    """A ``FluxPipeline`` from built parts, with FLUX.1-dev's scheduler settings (dynamic shifting)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    return FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=t5_tokenizer,
        transformer=transformer,
    )


def _hub_commit(model: str, revision: str | None) -> str | None:
    """The commit hash of a Hub model's cached snapshot, or None (local folder, not cached)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    path = try_to_load_from_cache(model, "model_index.json", revision=revision)
    if isinstance(path, str) and "/snapshots/" in path:
        return path.split("/snapshots/", 1)[1].split("/", 1)[0]
    return None


class FluxGenerator:
    """Generates the images of planned scene records with a FLUX.1 pipeline.

    ``model``: a Hub repo id (``black-forest-labs/FLUX.1-dev``, gated: accept its licence
    and ``hf auth login`` once), a local folder in diffusers layout, or ``"tiny"``.
    ``size``: int (square) or (width, height) in pixels, a multiple of 16 (of
    ``2 * vae_scale_factor``); default 1024, 128 for tiny. ``dtype``: one of
    ``manifests.dtypes.DTYPES`` or its torch dtype, default bfloat16 (float32 for tiny). ``device`` default CUDA when available. ``cpu_offload`` keeps only
    the active sub-model on the GPU (about 3x slower, fits 24 GB cards); ``vae_tiling``
    decodes large images in tiles. ``max_sequence_length``: T5 tokens (512 for FLUX.1-dev,
    128 for tiny).
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        revision: str | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        steps: int = 28,
        guidance: float = 3.5,
        size: int | tuple[int, int] | None = None,
        batch_size: int = 1,
        cpu_offload: bool = False,
        vae_tiling: bool = False,
        max_sequence_length: int | None = None,
        local_files_only: bool = False,
        pipeline: Any | None = None,
    ):
        self.model = str(model)
        self.tiny = self.model == TINY
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.dtype = torch_dtype(dtype or (torch.float32 if self.tiny else torch.bfloat16))
        self.device = (
            torch.device(device)
            if device is not None
            else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        )
        if cpu_offload and self.device.type != "cuda":
            raise ValueError("cpu_offload needs a CUDA device; drop --cpu-offload on a CPU machine")
        self.steps = steps
        self.guidance = float(guidance)
        size = size if size is not None else (128 if self.tiny else 1024)
        self.width, self.height = (size, size) if isinstance(size, int) else size
        self.batch_size = batch_size
        self.cpu_offload = cpu_offload
        self.vae_tiling = vae_tiling
        self.max_sequence_length = max_sequence_length or (128 if self.tiny else 512)

        if pipeline is not None:
            self.pipe = pipeline
            self.revision = revision
        elif self.tiny:
            self.pipe = build_tiny_flux_pipeline(seed=0, dtype=self.dtype)
            self.revision = revision or TINY_REVISION
        else:
            self.pipe = self._load(revision, local_files_only)
            self.revision = revision or _hub_commit(self.model, revision)
        self._prepare_pipeline()

    @classmethod
    def from_pipeline(
        cls, pipeline: Any, model: str, revision: str | None = None, **options
    ) -> FluxGenerator:
        """Wrap an already built ``FluxPipeline`` (e.g. random weights for a benchmark); ``model`` is recorded."""
        return cls(model=model, revision=revision, pipeline=pipeline, **options)

    def _load(self, revision: str | None, local_files_only: bool):
        from diffusers import FluxPipeline

        if not Path(self.model).exists() and self.model.count("/") != 1:
            raise ValueError(
                f"model {self.model!r} is neither a local folder, a Hub repo id (owner/name) nor 'tiny'"
            )
        try:
            return FluxPipeline.from_pretrained(
                self.model, revision=revision, torch_dtype=self.dtype, local_files_only=local_files_only
            )
        except (OSError, ValueError) as error:
            raise RuntimeError(
                f"cannot load FLUX pipeline {self.model!r} (revision {revision or 'main'}): {error}. "
                "FLUX.1-dev is gated: accept its licence on huggingface.co, run `hf auth login`, and download it "
                "once (`hf download black-forest-labs/FLUX.1-dev`); or pass a local folder, or --model tiny."
            ) from error

    def _prepare_pipeline(self) -> None:
        pipe = self.pipe
        multiple = 2 * pipe.vae_scale_factor
        if self.width % multiple or self.height % multiple or self.width <= 0 or self.height <= 0:
            raise ValueError(
                f"size {self.width}x{self.height} must be positive multiples of {multiple} "
                f"for this pipeline (e.g. {max(multiple, self.width // multiple * multiple)})"
            )
        if self.cpu_offload:
            pipe.enable_model_cpu_offload(device=self.device)
        else:
            pipe.to(self.device)
        if pipe.dtype != self.dtype:
            pipe.to(dtype=self.dtype)
        if self.vae_tiling:
            pipe.vae.enable_tiling()
        pipe.set_progress_bar_config(disable=True)

    # -- the stage (manifests.stage) -------------------------------------------------------
    name = STAGE
    accepts = (State.planned,)

    def takes(self, record: Record) -> bool:
        """Only planned scenes; planned web records belong to the scraper."""
        return isinstance(record.source, GeneratedSource)

    def run(self, batch: list[Record], store: ManifestStore) -> list[Output]:
        """The images of a batch of planned scenes, in one pipeline call (the runner cuts ``batch_size``).

        A failing image rejects only its record (a failing batch is retried one image at a time).
        """
        outputs: list[Output] = []
        for record, result in zip(batch, self._run_batch(batch), strict=True):
            if isinstance(result, Image.Image):
                outputs.append(self._accept(record, result))
            else:
                reason, detail = result
                outputs.append(Output(record.reject(STAGE, reason, detail, params=self._params(record))))
        return outputs

    def generate_one(self, record: Record) -> Image.Image:
        """The image of one record, without storing anything (to check reproducibility)."""
        result = self._run_batch([record])[0]
        if not isinstance(result, Image.Image):
            raise RuntimeError(f"generation of {record.id} failed: {result[0]}: {result[1]}")
        return result

    def _run_batch(self, batch: list[Record]) -> list[Image.Image | tuple[str, str]]:
        """Images, or (reason, detail) for each record of ``batch``."""
        prompts: list[str] = []
        for record in batch:
            prompts.append(prompt_for_record(record))
            record.source.prompt = prompts[-1]
        try:
            return list(self._call(prompts, [r.source.seed for r in batch]))
        except torch.OutOfMemoryError as error:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if len(batch) > 1:
                return [self._run_batch([record])[0] for record in batch]
            return [("out_of_memory", f"{error}; lower --batch-size or use --cpu-offload / --vae-tiling")]
        except (RuntimeError, ValueError) as error:
            if len(batch) > 1:
                return [self._run_batch([record])[0] for record in batch]
            return [("generation_error", f"{type(error).__name__}: {error}")]

    def _call(self, prompts: list[str], seeds: list[int]) -> list[Image.Image | tuple[str, str]]:
        generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
        with torch.inference_mode():
            output = self.pipe(
                prompt=prompts,
                generator=generators,
                num_inference_steps=self.steps,
                guidance_scale=self.guidance,
                height=self.height,
                width=self.width,
                max_sequence_length=self.max_sequence_length,
                output_type="pil",
            )
        results: list[Image.Image | tuple[str, str]] = []
        for image in output.images:
            low, high = zip(*image.convert("RGB").getextrema(), strict=True)
            if max(high) == min(low):  # one flat colour: NaNs in half precision decode to black
                results.append(
                    ("blank_image", f"the image is one flat colour {low}; try dtype float16/float32")
                )
            else:
                results.append(image.convert("RGB"))
        return results

    def _params(self, record: Record) -> dict[str, Any]:
        return {
            "model": self.model,
            "revision": self.revision,
            "seed": record.source.seed,
            "steps": self.steps,
            "guidance": self.guidance,
            "width": self.width,
            "height": self.height,
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": str(self.device),
            "batch_size": self.batch_size,
            "max_sequence_length": self.max_sequence_length,
            "scheduler": type(self.pipe.scheduler).__name__,
            "pipeline": type(self.pipe).__name__,
            "cpu_offload": self.cpu_offload,
            "vae_tiling": self.vae_tiling,
            "generator_device": "cpu",
        }

    def _accept(self, record: Record, image: Image.Image) -> Output:
        source = record.source
        source.model = self.model
        source.revision = self.revision
        source.steps = self.steps
        source.guidance = self.guidance
        source.width, source.height = image.size
        record.source = source  # re-validate
        output = with_image(record, image)
        record.advance(State.generated, STAGE, params=self._params(record))
        return output


def from_config(config: GenerateConfig) -> FluxGenerator:
    """The ``flux`` backend of ``manifests.registry.GENERATORS``: a ``FluxGenerator`` from a profile's ``generate``."""
    return FluxGenerator(
        config.model,
        revision=config.revision,
        device=config.device,
        dtype=config.dtype,
        steps=config.steps,
        guidance=config.guidance,
        size=config.size,
        batch_size=config.batch_size,
        cpu_offload=config.cpu_offload,
        vae_tiling=config.vae_tiling,
        **config.options,
    )
