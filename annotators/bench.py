"""Throughput of the annotators: images per second for localisation and segmentation.

    python -m annotators.bench                      # tiny models on the CPU
    python -m annotators.bench --images 32          # on a CUDA machine: the real architectures

On a CPU it measures the tiny miniatures (seeded random Qwen2.5-VL and SAM2.1 hiera-tiny).
With CUDA it builds the *real* configurations with random weights, in bfloat16 (nothing is
downloaded): Qwen2.5-VL-7B-Instruct's dimensions (the tiny tokenizer stands in for the real
one; Qwen writes digits one token each in both) and SAM2.1 hiera-large, at the pipeline's
image sizes, and sweeps the localizer's batch size. Random weights make answers noise, so
constrained decoding is what bounds their length; the table reports the tokens generated.

SAM2 computes one image embedding per image and decodes all boxes of the image in one
prompt-decoder call: the table shows the embedding time, the decoder time for all boxes,
and the number of embeddings computed per image (1).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from rich.console import Console
from rich.table import Table

from annotators.localize import QwenLocalizer, qwen_config_for, tiny_qwen_processor
from annotators.segment import DEFAULT_CONFIG, TINY_CONFIG, Sam2Segmenter
from manifests.groups import load_groups

# Qwen2.5-VL-7B-Instruct's architecture (its config.json), for random-weight benchmarks.
QWEN_7B_TEXT = dict(
    hidden_size=3584,
    intermediate_size=18944,
    num_hidden_layers=28,
    num_attention_heads=28,
    num_key_value_heads=4,
    vocab_size=152064,
    max_position_embeddings=128000,
    rms_norm_eps=1e-6,
    rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [16, 24, 24]},
)
QWEN_7B_VISION = dict(
    depth=32,
    hidden_size=1280,
    intermediate_size=3420,
    num_heads=16,
    out_hidden_size=3584,
    patch_size=14,
    spatial_merge_size=2,
    temporal_patch_size=2,
    window_size=112,
    fullatt_block_indexes=[7, 15, 23, 31],
    tokens_per_second=2,
)


def random_qwen_7b(device: torch.device, dtype: torch.dtype, min_pixels: int, max_pixels: int):
    """Qwen2.5-VL-7B's architecture with random weights, built on ``device``, and a processor."""
    from transformers import GenerationConfig, Qwen2_5_VLForConditionalGeneration

    processor = tiny_qwen_processor(min_pixels, max_pixels)
    tokenizer = processor.tokenizer
    eos = [tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")]
    config = qwen_config_for(
        tokenizer,
        text_config={
            **QWEN_7B_TEXT,
            "bos_token_id": eos[1],
            "eos_token_id": eos[0],
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config=QWEN_7B_VISION,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype).eval()
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)
    return model, processor


def test_images(count: int, size: int, seed: int = 0) -> tuple[list[Image.Image], list[list[str]]]:
    """``count`` noise images of ``size`` x ``size`` and the concepts of successive groups."""
    rng = np.random.default_rng(seed)
    groups = load_groups()
    images = [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(count)]
    return images, [list(groups[i % len(groups)].concepts) for i in range(count)]


def timed(fn: Callable[[], object], sync: bool) -> tuple[float, object]:
    if sync:
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if sync:
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def bench_localize(localizer: QwenLocalizer, images, concepts, batch_sizes, sync: bool, table: Table) -> None:
    localizer.ground(images[:1], concepts[:1])  # warm-up (kernels, grammar cache)
    for batch_size in batch_sizes:
        tokens = 0
        total = 0.0
        for start in range(0, len(images), batch_size):
            chunk = slice(start, start + batch_size)
            seconds, answers = timed(lambda c=chunk: localizer.ground(images[c], concepts[c]), sync)
            total += seconds
            tokens += sum(len(localizer.tokenizer(a.text)["input_ids"]) for a in answers)
        table.add_row(
            "localize",
            localizer.model_ref,
            f"batch {batch_size}",
            f"{len(images) / total:.2f}",
            f"{total / len(images):.3f}",
            f"{tokens / len(images):.0f} tokens/answer",
        )


def bench_segment(segmenter: Sam2Segmenter, images, boxes_per_image: int, sync: bool, table: Table) -> None:
    arrays = [np.array(image) for image in images]
    size = arrays[0].shape[0]
    rng = np.random.default_rng(1)
    boxes = []
    for _ in arrays:
        corners = rng.uniform(0, size, (boxes_per_image, 2, 2))
        boxes.append(np.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=1).astype(np.float32))
    embeddings = []
    hook = segmenter.model.image_encoder.register_forward_hook(lambda *_: embeddings.append(1))
    try:
        segmenter.predict(arrays[0], boxes[0])  # warm-up
        embeddings.clear()
        embed = decode = 0.0
        with torch.inference_mode(), segmenter._autocast():
            for array, prompt in zip(arrays, boxes, strict=True):
                seconds, _ = timed(lambda a=array: segmenter.predictor.set_image(a), sync)
                embed += seconds
                seconds, _ = timed(
                    lambda p=prompt: segmenter.predictor.predict(box=p, multimask_output=False), sync
                )
                decode += seconds
    finally:
        hook.remove()
    n = len(arrays)
    table.add_row(
        "segment",
        segmenter.config.rsplit("/", 1)[-1],
        f"{boxes_per_image} boxes/image",
        f"{n / (embed + decode):.2f}",
        f"{(embed + decode) / n:.3f}",
        f"embed {embed / n:.3f} s, all boxes {decode / n:.4f} s, {len(embeddings) / n:.0f} embedding/image",
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=None, help="images per measurement (CPU 8, CUDA 32)")
    parser.add_argument("--size", type=int, default=None, help="image side in pixels (CPU 128, CUDA 1024)")
    parser.add_argument(
        "--batch-sizes", default=None, help="localizer batch sizes, e.g. 1,4,8 (CPU 1,4; CUDA 1,4,8,16)"
    )
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (CPU runs only)")
    parser.add_argument(
        "--cpu", action="store_true", help="measure the tiny models on the CPU even with CUDA"
    )
    args = parser.parse_args(argv)

    cuda = torch.cuda.is_available() and not args.cpu
    count = args.images or (32 if cuda else 8)
    size = args.size or (1024 if cuda else 128)
    batch_sizes = [int(b) for b in (args.batch_sizes or ("1,4,8,16" if cuda else "1,4")).split(",")]
    images, concepts = test_images(count, size)
    table = Table(title=f"annotators throughput, {count} images of {size} x {size}")
    for column in ("stage", "model", "setting", "images/s", "s/image", "notes"):
        table.add_column(column, justify="right" if column in ("images/s", "s/image") else "left")

    if cuda:
        device, dtype = torch.device("cuda"), torch.bfloat16
        table.title += f", {torch.cuda.get_device_name()}, bf16, random weights"
        min_pixels, max_pixels = 256 * 28 * 28, 1280 * 28 * 28
        qwen = QwenLocalizer(
            "Qwen2.5-VL-7B (random)",
            device="cuda",
            dtype=dtype,
            min_pixels=min_pixels,
            max_pixels=max_pixels,
            components=random_qwen_7b(device, dtype, min_pixels, max_pixels),
        )
        bench_localize(qwen, images, concepts, batch_sizes, sync=True, table=table)
        del qwen
        torch.cuda.empty_cache()
        segmenter = Sam2Segmenter(DEFAULT_CONFIG, None, device="cuda", dtype=dtype)
        for boxes in (2, 6):
            bench_segment(segmenter, images, boxes, sync=True, table=table)
    else:
        torch.set_num_threads(args.threads)
        table.title += f", CPU ({args.threads} threads), tiny models"
        qwen = QwenLocalizer("tiny", device="cpu")
        bench_localize(qwen, images, concepts, batch_sizes, sync=False, table=table)
        segmenter = Sam2Segmenter(TINY_CONFIG, None, device="cpu")
        for boxes in (2, 6):
            bench_segment(segmenter, images[: max(2, count // 2)], boxes, sync=False, table=table)
    Console(width=170).print(table)


if __name__ == "__main__":
    main()
