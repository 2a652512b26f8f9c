"""Localisation: Qwen2.5-VL puts boxes on every concept of an image.

``QwenLocalizer(model).localize(records, store)`` takes records in state ``generated``
and leaves each one ``localized`` (every concept has at least one box) or ``rejected``
by stage ``localize`` with a reason:

- ``image_unreadable``: the stored image cannot be opened;
- ``unparseable``: no box with a label could be read from the model's answer;
- ``no_box``: the answer has no usable box for at least one concept (the detail names them);
- ``model_error``: generation failed for this image alone (the rest of its batch went on).

The raw model text is kept in the record's history either way
(``history[-1].params["raw_output"]``).

How an image reaches the model: ``qwen_vl_utils.process_vision_info`` resizes it to
multiples of 28 px within ``[min_pixels, max_pixels]``; the processor is called with the
*same* limits, so it keeps that size and the model's box frame is exactly
``(image_grid_thw[2] * 14, image_grid_thw[1] * 14)`` (width, height). Boxes are mapped
from that frame to the stored image's pixels (``annotators.grounding.map_box``).

Constrained decoding (``constrained=True``, the default): each image of a batch gets its
own xgrammar grammar compiled from ``grounding_schema`` (its concepts as the only labels,
coordinates inside its input frame), applied through ``xgrammar.contrib.hf.LogitsProcessor``
in ``generate``. The model cannot emit text outside the schema; ``parse_grounding`` reads
both constrained and free answers.

``model="tiny"`` is a seeded random Qwen2.5-VL built in code (``build_tiny_qwen``); its
boxes are noise, it proves the code path offline on a CPU.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import xgrammar as xgr
from PIL import Image
from qwen_vl_utils import process_vision_info
from transformers import (
    AutoConfig,
    AutoProcessor,
    GenerationConfig,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
)
from xgrammar.contrib.hf import LogitsProcessor as GrammarLogitsProcessor

from annotators.config import LocalizeConfig
from annotators.grounding import (
    GroundingParseError,
    extract_objects,
    frame_size,
    grounding_prompt,
    grounding_schema,
    parse_grounding,
)
from manifests.dtypes import torch_dtype
from manifests.record import Record, State
from manifests.store import ManifestStore
from manifests.tiny import tiny_qwen_tokenizer

logger = logging.getLogger(__name__)

STAGE = "localize"
DEFAULT_MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"
# Pixel limits of the model input (multiples of 28 x 28, the size of one merged vision token).
DEFAULT_MIN_PIXELS = 256 * 28 * 28
DEFAULT_MAX_PIXELS = 1280 * 28 * 28
TINY_MIN_PIXELS = 4 * 28 * 28
TINY_MAX_PIXELS = 64 * 28 * 28
# Weights of the tiny model ~ N(0, 0.5): with the usual 0.02 its logits are nearly flat and
# it repeats one token whatever the image; a wider spread makes answers differ per image.
TINY_INIT_STD = 0.5


def build_tiny_qwen(seed: int = 0) -> tuple[Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor]:
    """A seeded random Qwen2.5-VL (about 0.4 M parameters) and its processor, offline.

    Text model: 2 layers, hidden 64, 4 heads of 16 (``mrope_section`` sums to 8 = head_dim/2).
    Vision tower: 2 blocks, hidden 32, patch 14, merge 2, ``out_hidden_size`` 64 = text hidden.
    Token ids come from ``manifests.tiny.tiny_qwen_tokenizer()``; the processor is
    ``tiny_qwen_processor()`` (a private copy of that tokenizer, padding on the left).
    """
    processor = tiny_qwen_processor()
    tokenizer = processor.tokenizer
    token = tokenizer.convert_tokens_to_ids
    eos = [token("<|im_end|>"), token("<|endoftext|>")]
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=8192,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [2, 3, 3]},
        bos_token_id=token("<|endoftext|>"),
        eos_token_id=eos[0],
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=TINY_INIT_STD,
    )
    vision = dict(
        depth=2,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        out_hidden_size=64,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=56,
        fullatt_block_indexes=[1],
        initializer_range=TINY_INIT_STD,
    )
    config = qwen_config_for(tokenizer, text_config=text, vision_config=vision)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = Qwen2_5_VLForConditionalGeneration(config).eval()
    finally:
        torch.random.set_rng_state(generator_state)
    model.generation_config = GenerationConfig(
        eos_token_id=eos, pad_token_id=tokenizer.pad_token_id, bos_token_id=token("<|endoftext|>")
    )
    return model, processor


def tiny_qwen_processor(
    min_pixels: int = TINY_MIN_PIXELS, max_pixels: int = TINY_MAX_PIXELS
) -> Qwen2_5_VLProcessor:
    """A Qwen2.5-VL processor over a private copy of ``tiny_qwen_tokenizer()`` (left padding)."""
    tokenizer = copy.deepcopy(tiny_qwen_tokenizer())
    tokenizer.padding_side = "left"
    image_processor = Qwen2VLImageProcessor(size={"shortest_edge": min_pixels, "longest_edge": max_pixels})
    return Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=tokenizer.chat_template,
    )


def qwen_config_for(tokenizer, **sizes: Any) -> Qwen2_5_VLConfig:
    """A Qwen2.5-VL config whose special-token ids are ``tokenizer``'s; ``sizes`` holds
    ``text_config`` and ``vision_config`` dicts (the architecture's dimensions)."""
    token = tokenizer.convert_tokens_to_ids
    return Qwen2_5_VLConfig(
        **sizes,
        image_token_id=token("<|image_pad|>"),
        video_token_id=token("<|video_pad|>"),
        vision_start_token_id=token("<|vision_start|>"),
        vision_end_token_id=token("<|vision_end|>"),
    )


@dataclass(frozen=True)
class Generation:
    """One answer: the decoded text and the input frame (width, height) its boxes refer to."""

    text: str
    input_size: tuple[int, int]


class QwenLocalizer:
    """Boxes for every concept of an image from Qwen2.5-VL, optionally schema-constrained.

    Args:
      model: a Hub repo id, a local folder, or ``"tiny"``. Only Qwen2.5-VL checkpoints
        (``model_type == "qwen2_5_vl"``): Qwen2-VL and Qwen3-VL answer in a 0-1000
        frame that this class does not map.
      revision: the Hub revision (branch, tag or commit) to load.
      device: ``"cuda"``, ``"cpu"``...; default CUDA when available.
      dtype: the weights' dtype, one of ``manifests.dtypes.DTYPES`` or its torch dtype;
        default bfloat16 on CUDA, float32 on CPU.
      min_pixels, max_pixels: the model input's pixel limits (default 256*28*28 ..
        1280*28*28; for ``"tiny"`` 4*28*28 .. 64*28*28). Used by both
        ``process_vision_info`` and the processor.
      batch_size: images per ``generate`` call.
      constrained: decode under the grounding JSON schema (xgrammar).
      max_new_tokens: the answer's token budget.
      max_boxes_per_concept: the schema allows up to this many boxes per concept.
      box_frame: how the model writes boxes (``annotators.grounding.BOX_FRAMES``):
        ``input_pixels`` for Qwen2.5-VL (the default), ``relative_1000`` for the 0-1000 grid
        of Qwen2-VL / Qwen3-VL (for a backend that loads those models).
      require_every_concept: with ``constrained``, the schema makes the answer start with
        one box per concept (see ``grounding_schema(every_concept=True)``): for generated
        images whose prompt names every concept. Off by default: a concept the model
        does not find then rejects the record (``no_box``).
      seed: seed of the ``"tiny"`` weights.
      components: a prebuilt (model, processor) pair used instead of loading ``model``,
        which then only names it in the history (e.g. a random model of a real
        configuration, for benchmarks).
    """

    stage = STAGE

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        revision: str | None = None,
        device: str | None = None,
        dtype: torch.dtype | str | None = None,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        batch_size: int = 4,
        constrained: bool = True,
        max_new_tokens: int = 512,
        max_boxes_per_concept: int = 4,
        require_every_concept: bool = False,
        box_frame: str = "input_pixels",
        seed: int = 0,
        components: tuple[Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor] | None = None,
    ):
        tiny = model == "tiny"
        self.model_ref = model
        self.revision = revision
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = torch_dtype(dtype or (torch.bfloat16 if self.device.type == "cuda" else torch.float32))
        self.min_pixels = min_pixels or (TINY_MIN_PIXELS if tiny else DEFAULT_MIN_PIXELS)
        self.max_pixels = max_pixels or (TINY_MAX_PIXELS if tiny else DEFAULT_MAX_PIXELS)
        if self.min_pixels > self.max_pixels:
            raise ValueError(f"min_pixels ({self.min_pixels}) must not exceed max_pixels ({self.max_pixels})")
        if batch_size < 1 or max_new_tokens < 1 or max_boxes_per_concept < 1:
            raise ValueError("batch_size, max_new_tokens and max_boxes_per_concept must be at least 1")
        self.batch_size = batch_size
        self.constrained = constrained
        self.max_new_tokens = max_new_tokens
        self.max_boxes_per_concept = max_boxes_per_concept
        self.require_every_concept = require_every_concept
        frame_size(box_frame, (1, 1))  # an unknown frame fails here, before the model loads
        self.box_frame = box_frame

        # 1. the model and the processor, once
        if components is not None:
            self.model, self.processor = components
        elif tiny:
            self.model, self.processor = build_tiny_qwen(seed)
        else:
            self.model, self.processor = self._load(model, revision, self.dtype)
        self.model.to(device=self.device, dtype=self.dtype).eval()
        self.tokenizer = self.processor.tokenizer
        self.tokenizer.padding_side = "left"
        image_processor = self.processor.image_processor
        self.patch_size = int(image_processor.patch_size)
        self.eos_token_ids = self._eos_ids()
        if self.tokenizer.pad_token_id is None:
            raise ValueError(f"the tokenizer of {model} has no pad token; batched generation needs one")

        # 2. the grammar compiler (tokenizer info over the model's full output vocabulary)
        vocab_size = self.model.get_output_embeddings().weight.shape[0]
        info = xgr.TokenizerInfo.from_huggingface(
            self.tokenizer, vocab_size=vocab_size, stop_token_ids=self.eos_token_ids
        )
        self.compiler = xgr.GrammarCompiler(info)

    # -- loading ------------------------------------------------------------------------
    @staticmethod
    def _load(model: str, revision: str | None, dtype: torch.dtype):
        def cannot_load(error: Exception) -> OSError:
            return OSError(
                f"cannot load Qwen2.5-VL from {model!r} (revision {revision}): {error}. Give a local folder "
                "or a Hub id already in the Hugging Face cache (huggingface-cli download "
                f"{DEFAULT_MODEL}), or 'tiny' for the offline miniature."
            )

        try:
            config = AutoConfig.from_pretrained(model, revision=revision)
        except (OSError, ValueError) as error:  # missing folder or file, invalid repo id, not in the cache
            raise cannot_load(error) from error
        if config.model_type != "qwen2_5_vl":  # checked before loading gigabytes of weights
            raise ValueError(
                f"{model!r} is a {config.model_type!r} model; the localizer reads Qwen2.5-VL boxes "
                "(absolute pixels of the model input) only"
            )
        try:
            processor = AutoProcessor.from_pretrained(model, revision=revision)
            network = Qwen2_5_VLForConditionalGeneration.from_pretrained(
                model, revision=revision, dtype=dtype
            )
        except (OSError, ValueError) as error:
            raise cannot_load(error) from error
        return network, processor

    def _eos_ids(self) -> list[int]:
        ids = self.model.generation_config.eos_token_id
        ids = [ids] if isinstance(ids, int) else list(ids or [])
        for name in ("<|im_end|>", "<|endoftext|>"):
            token_id = self.tokenizer.convert_tokens_to_ids(name)
            # an unknown name maps to the unk id; Qwen2's unk token is <|endoftext|> itself, so ask the vocabulary
            known = isinstance(token_id, int) and self.tokenizer.convert_ids_to_tokens(token_id) == name
            if known and token_id not in ids:
                ids.append(token_id)
        return ids

    def params(self) -> dict[str, Any]:
        """What to record in each record's history."""
        return {
            "model": self.model_ref,
            "revision": self.revision,
            "constrained": self.constrained,
            "require_every_concept": self.require_every_concept,
            "box_frame": self.box_frame,
            "min_pixels": self.min_pixels,
            "max_pixels": self.max_pixels,
            "dtype": str(self.dtype),
        }

    # -- generation ---------------------------------------------------------------------
    def _messages(self, image: Image.Image, prompt: str) -> list[dict[str, Any]]:
        content = [
            {"type": "image", "image": image, "min_pixels": self.min_pixels, "max_pixels": self.max_pixels},
            {"type": "text", "text": prompt},
        ]
        return [{"role": "user", "content": content}]

    def input_size(self, image: Image.Image) -> tuple[int, int]:
        """(width, height) of the model input for ``image``: the frame of its boxes."""
        resized, _ = process_vision_info(self._messages(image, ""))
        return resized[0].size

    @torch.no_grad()
    def generate(
        self,
        images: Sequence[Image.Image],
        prompts: Sequence[str],
        grammars: Sequence[Any] | None = None,
        max_new_tokens: int | None = None,
    ) -> list[Generation]:
        """One greedy answer per (image, prompt), in one batched ``generate`` call.

        ``grammars``: per image, an xgrammar ``CompiledGrammar`` built from a callable
        ``grammars[i](input_size)`` or given directly, or None for free text.
        """
        conversations = [self._messages(image, prompt) for image, prompt in zip(images, prompts, strict=True)]
        resized, _ = process_vision_info(conversations)  # each image resized once, within the limits
        texts = [
            self.processor.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
            for c in conversations
        ]
        inputs = self.processor(
            text=texts,
            images=resized,
            padding=True,
            return_tensors="pt",
            size={"shortest_edge": self.min_pixels, "longest_edge": self.max_pixels},
        ).to(self.device)
        grid = inputs["image_grid_thw"].tolist()  # (B, 3): t, h, w in patches
        sizes = [(int(w) * self.patch_size, int(h) * self.patch_size) for _, h, w in grid]
        for image, size in zip(resized, sizes, strict=True):
            if image.size != size:  # the two resizes disagree: the grid is still what the model saw
                logger.warning(
                    "processor resized %s to %s; boxes use the model's frame %s", image.size, size, size
                )
        processors = []
        if grammars is not None:
            compiled = [g(size) if callable(g) else g for g, size in zip(grammars, sizes, strict=True)]
            processors = [GrammarLogitsProcessor(compiled)]
        output = self.model.generate(
            **inputs,
            do_sample=False,
            max_new_tokens=max_new_tokens or self.max_new_tokens,
            logits_processor=processors,
            eos_token_id=self.eos_token_ids,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        answers = self.tokenizer.batch_decode(
            output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True
        )
        return [Generation(text=a, input_size=s) for a, s in zip(answers, sizes, strict=True)]

    def grounding_grammar(self, concepts: Sequence[str], input_size: tuple[int, int]):
        """The compiled grammar of ``grounding_schema`` for one image (cached by the compiler)."""
        schema = grounding_schema(
            concepts,
            input_size,
            self.max_boxes_per_concept * len(concepts),
            every_concept=self.require_every_concept,
        )
        return self.compiler.compile_json_schema(json.dumps(schema), any_whitespace=False)

    def ground(self, images: Sequence[Image.Image], concepts: Sequence[Sequence[str]]) -> list[Generation]:
        """Grounding answers for a batch of images, each with its own concepts."""
        prompts = [grounding_prompt(c) for c in concepts]
        grammars = None
        if self.constrained:
            grammars = [
                lambda size, names=names: self.grounding_grammar(names, frame_size(self.box_frame, size))
                for names in concepts
            ]
        return self.generate(images, prompts, grammars)

    # -- the stage (manifests.stage) ----------------------------------------------------------
    name = STAGE
    accepts = (State.generated,)

    def run(self, batch: list[Record], store: ManifestStore) -> list[Record]:
        """Boxes for the concepts of a batch of ``generated`` records, in one ``generate`` call.

        A record becomes ``localized``, or rejected (``image_unreadable``, ``model_error``,
        ``unparseable``, ``no_box``); a failing batch is retried image by image.
        """
        loaded: list[tuple[Record, Image.Image]] = []
        for record in batch:
            try:
                loaded.append((record, store.open_image(record)))
            except Exception as error:  # missing file, truncated PNG, no image on the record
                record.reject(STAGE, "image_unreadable", f"{type(error).__name__}: {error}", self.params())
        for record, answer in self._answers(loaded):
            self._apply(record, answer)
        return batch

    def _answers(self, loaded: list[tuple[Record, Image.Image]]):
        """(record, Generation or exception) per loaded record; a failed batch is retried one by one."""
        if not loaded:
            return []
        try:
            answers = self.ground([image for _, image in loaded], [r.concept_names for r, _ in loaded])
            return list(zip([r for r, _ in loaded], answers, strict=True))
        except Exception as error:
            if len(loaded) == 1:
                return [(loaded[0][0], error)]
            logger.warning("batch of %d failed (%s); retrying image by image", len(loaded), error)
            return [pair for item in loaded for pair in self._answers([item])]

    def _apply(self, record: Record, answer: Generation | Exception) -> None:
        params = self.params()
        if isinstance(answer, Exception):
            record.reject(STAGE, "model_error", f"{type(answer).__name__}: {answer}", params)
            return
        image = record.image
        if image is None:  # open_image succeeded, so this does not happen; keep the type checker honest
            record.reject(STAGE, "image_unreadable", "the record has no image", params)
            return
        original = (image.width, image.height)
        params.update(raw_output=answer.text, input_size=list(answer.input_size), image_size=list(original))
        try:
            extract_objects(answer.text)
        except GroundingParseError as error:
            record.reject(STAGE, "unparseable", str(error), params)
            return
        frame = frame_size(self.box_frame, answer.input_size)
        boxes = parse_grounding(answer.text, record.concept_names, frame, original)
        for concept in record.concepts:  # kept on rejected records too, for inspection
            concept.boxes = boxes[concept.name]
        missing = [name for name, found in boxes.items() if not found]
        if missing:
            record.reject(STAGE, "no_box", f"no usable box for {missing}", params)
            return
        record.advance(State.localized, STAGE, params, note=f"{sum(map(len, boxes.values()))} boxes")

    # -- second look (used by the quality gate) ----------------------------------------------
    def verify(
        self, crops: Sequence[Image.Image], concepts: Sequence[str], others: Sequence[Sequence[str]]
    ) -> list[bool]:
        """For each crop, does the model say it shows ``concepts[i]`` and none of ``others[i]``?

        Answers are constrained to exactly ``yes`` or ``no`` (greedy); batched by ``batch_size``.
        """
        grammar = self.compiler.compile_grammar('root ::= "yes" | "no"')
        verdicts: list[bool] = []
        for start in range(0, len(crops), self.batch_size):
            chunk = slice(start, start + self.batch_size)
            prompts = [verification_prompt(c, o) for c, o in zip(concepts[chunk], others[chunk], strict=True)]
            answers = self.generate(crops[chunk], prompts, [grammar] * len(prompts), max_new_tokens=4)
            verdicts.extend(a.text.strip().lower() == "yes" for a in answers)
        return verdicts


def verification_prompt(concept: str, others: Sequence[str]) -> str:
    """The yes/no question of the second look."""
    alternatives = " or ".join(f'a "{o}"' for o in others)
    tail = f", not {alternatives}" if others else ""
    return f'Is the main object in this image a "{concept}"{tail}? Answer yes or no.'


def from_config(config: LocalizeConfig) -> QwenLocalizer:
    """The ``qwen2_5_vl`` backend of ``manifests.registry.LOCALIZERS``, from a profile's ``localize``."""
    return QwenLocalizer(
        config.model,
        revision=config.revision,
        device=config.device,
        dtype=config.dtype,
        batch_size=config.batch_size,
        max_new_tokens=config.max_new_tokens,
        constrained=config.constrained,
        require_every_concept=config.every_concept,
        min_pixels=config.min_pixels,
        max_pixels=config.max_pixels,
        box_frame=config.box_frame,
        **config.options,
    )
