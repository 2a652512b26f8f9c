"""One GPU check of every model of the project, with random weights of the REAL configurations (nothing is
downloaded): seconds per query / image, peak memory and the recorder's bf16 exactness, as one Markdown table.

    python scripts/gpu_check.py          # a CUDA machine: real architectures, bf16, 1024 x 1024 (H200: est. < 8 min)
    python scripts/gpu_check.py --tiny   # the same code paths on the tiny models, on the CPU, small sizes

Rows (each timed after one untimed warm-up of the same call; SAM2 on the CPU: none):
- AnchorDiff on ``random-sd3`` / ``random-sd35`` (SD3-medium / SD3.5-large transformers; ``--tiny``: the 4-block
  ``tiny`` miniature of each preset) at the native size in bfloat16: seconds per concept query in ``noise`` and
  ``invert`` mode (a one-concept call; the three-concept call per concept in the notes), peak memory of those
  calls (``torch.cuda.max_memory_allocated``; on the CPU the process's peak resident memory), and "recorder
  output unchanged in bf16": max |transformer output with the ``AttentionRecorder`` - without| / max |output|,
  which must stay within ``anchordiff.bench.RECORDER_TOLERANCE``;
- FLUX.1-dev's architecture (``generators.bench.random_flux_dev_pipeline``; ``--tiny``: the tiny FLUX), one
  image through ``FluxGenerator.generate`` with the production 28 steps: seconds per image;
- Qwen2.5-VL-7B's architecture (``annotators.bench.random_qwen_7b``, the tiny tokenizer; ``--tiny``: the tiny
  Qwen), one constrained grounding answer: seconds per image;
- SAM2.1 hiera-large (``--tiny``: hiera-tiny) with random weights, ``set_image`` + ``predict`` for 2 boxes;
- the AnchorDiff graph + 160 propagation steps (``anchordiff.bench.graph_benchmark``) at N = 4096 tokens
  (``--tiny``: N = 256): milliseconds, the max |difference| from the literal dense equations (also on the
  same gate, and how near tau_W the gate entries lie on which the two round differently) and, on CUDA,
  whether the 160-step loop synchronises with the host.

A row that raises, or whose check fails, shows its error in the table, and the script exits with status 1.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import resource
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from anchordiff import bench as anchordiff_bench

DTYPE = torch.bfloat16
FLUX_STEPS = 28  # FLUX.1-dev's production step count
SAM_BOXES = 2
ANCHORDIFF_MEASURES = ("noise", "invert", "peak memory", "recorder output unchanged in bf16")
FLUX_ROW = "FLUX.1-dev 1 image"
QWEN_ROW = "Qwen2.5-VL-7B 1 grounding answer"
SAM2_ROW = "SAM2.1 hiera-large set_image + predict"
GRAPH_ROW = f"AnchorDiff graph + {anchordiff_bench.STEPS} propagation steps"


@dataclass(frozen=True)
class Setup:
    """What one run measures: ``tiny`` (CPU, miniatures) or the real configurations on CUDA."""

    tiny: bool
    device: torch.device
    image_size: int  # px, square images of the FLUX / Qwen / SAM2 rows
    graph_grid: int  # token grid side of the graph row (N = grid^2)

    @classmethod
    def for_run(cls, tiny: bool) -> Setup:
        if tiny:
            return cls(True, torch.device("cpu"), 128, 16)
        if not torch.cuda.is_available():
            raise SystemExit(
                "no CUDA device: run this on a GPU machine, or pass --tiny to check the code paths"
            )
        return cls(False, torch.device("cuda"), 1024, 64)

    def label(self, what: str, dtype: str = "bf16") -> str:
        """The "what ran" cell: ``what``, the dtype it ran in and the device type."""
        return f"{what}, {dtype}, {self.device.type}"


@dataclass
class Row:
    """One line of the table. ``value`` in ``unit``; ``ok`` False when the check failed or raised."""

    check: str
    ran: str
    value: float | None
    unit: str
    notes: str = ""
    ok: bool = True


# -- memory --------------------------------------------------------------------------------------------
def _gib(n: float) -> float:
    return n / 2**30


def _peak_cpu_bytes() -> int:
    """Peak resident memory of this process (Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


# -- the checks ----------------------------------------------------------------------------------------
def anchordiff_rows(setup: Setup, name: str, model: str, preset: str) -> list[Row]:
    """s per concept query in noise / invert mode, peak memory, recorder exactness of one backbone."""
    from anchordiff import AnchorDiff

    reference = "tiny" if setup.tiny else model
    ad = AnchorDiff.from_pretrained(reference, preset=preset, device=setup.device, dtype=DTYPE)
    weights = torch.cuda.memory_allocated(setup.device) if setup.device.type == "cuda" else None
    ran = setup.label(f"{reference} ({preset}), {ad.resolution}x{ad.resolution}")
    queries = anchordiff_bench.query_benchmark(ad, repeats=1)
    change = anchordiff_bench.recorder_output_change(ad)
    noise, invert, memory, recorder = (f"AnchorDiff {name} {measure}" for measure in ANCHORDIFF_MEASURES)
    rows = []
    for row_name, mode in ((noise, "noise"), (invert, "invert")):
        one, three = (q for q in queries if q["mode"] == mode)
        stages = ", ".join(f"{k} {v:.3f}" for k, v in one["stages_s"].items() if k != "total")
        notes = f"3-concept call {three['per_concept_query_s']:.3f} s / concept; stages (s): {stages}"
        rows.append(Row(row_name, ran, one["per_concept_query_s"], "s / concept query", notes))
    if weights is None:
        peak, where = _peak_cpu_bytes(), "process peak RSS (CPU)"
    else:
        peak = max(q["peak_bytes"] for q in queries)
        where = f"torch.cuda.max_memory_allocated; weights {_gib(weights):.2f} GiB"
    rows.append(Row(memory, ran, _gib(peak), "GiB", where))
    tolerance = anchordiff_bench.RECORDER_TOLERANCE
    ok = change <= tolerance
    rows.append(Row(recorder, ran, change, "max |diff| / max |out|", f"tolerance {tolerance:g}", ok=ok))
    return rows


def flux_rows(setup: Setup) -> list[Row]:
    """One FLUX image at ``setup.image_size`` with the production step count."""
    from generators.bench import random_flux_dev_pipeline, seconds_per_image
    from generators.flux import FluxGenerator

    options = {"steps": FLUX_STEPS, "size": setup.image_size, "device": setup.device, "dtype": DTYPE}
    if setup.tiny:
        generator, what = FluxGenerator("tiny", **options), "tiny FLUX"
    else:
        pipe = random_flux_dev_pipeline(setup.device.type, DTYPE)
        generator = FluxGenerator.from_pipeline(pipe, model="random:FLUX.1-dev-config", **options)
        what = "FLUX.1-dev architecture, random weights"
    seconds, (record,) = seconds_per_image(generator, images=1)
    ran = setup.label(f"{what}, {setup.image_size}x{setup.image_size}, {FLUX_STEPS} steps")
    generated = record.state.value == "generated"
    notes = "prompt encoding, denoising, VAE decode, PNG store"
    if setup.device.type == "cuda":
        notes += f"; peak {_gib(torch.cuda.max_memory_allocated(setup.device)):.1f} GiB"
    if not generated:
        notes = (
            f"rejected: {record.rejection.reason}: {record.rejection.detail}"
            if record.rejection
            else "not generated"
        )
    return [Row(FLUX_ROW, ran, seconds, "s / image", notes, ok=generated)]


def qwen_rows(setup: Setup) -> list[Row]:
    """One constrained grounding answer of Qwen2.5-VL on an ``image_size`` noise image."""
    from annotators.bench import random_qwen_7b, test_images, timed
    from annotators.localize import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS, QwenLocalizer

    if setup.tiny:
        localizer, what = QwenLocalizer("tiny", device=setup.device, dtype=DTYPE), "tiny Qwen2.5-VL"
    else:
        pixels = {"min_pixels": DEFAULT_MIN_PIXELS, "max_pixels": DEFAULT_MAX_PIXELS}
        components = random_qwen_7b(setup.device, DTYPE, **pixels)
        localizer = QwenLocalizer(
            "Qwen2.5-VL-7B (random)", device=setup.device, dtype=DTYPE, components=components, **pixels
        )
        what = "Qwen2.5-VL-7B architecture, random weights, tiny tokenizer"
    images, concepts = test_images(2, setup.image_size)
    localizer.ground(images[:1], concepts[:1])  # warm-up (kernels, grammar compilation)
    seconds, (answer,) = timed(
        lambda: localizer.ground(images[1:], concepts[1:]), setup.device.type == "cuda"
    )
    tokens = len(localizer.tokenizer(answer.text)["input_ids"])
    ran = setup.label(f"{what}, {setup.image_size}x{setup.image_size}")
    notes = f"{tokens} tokens, input {answer.input_size[0]}x{answer.input_size[1]}"
    return [Row(QWEN_ROW, ran, seconds, "s / image", notes)]


def sam2_rows(setup: Setup) -> list[Row]:
    """SAM2.1 ``set_image`` + ``predict`` for ``SAM_BOXES`` boxes on an ``image_size`` noise image."""
    from annotators.bench import test_images, timed
    from annotators.segment import DEFAULT_CONFIG, TINY_CONFIG, Sam2Segmenter

    config = TINY_CONFIG if setup.tiny else DEFAULT_CONFIG
    segmenter = Sam2Segmenter(config, None, device=str(setup.device), dtype=DTYPE)
    images, _ = test_images(2, setup.image_size)
    side = setup.image_size
    boxes = np.array([[0, 0, side // 2, side // 2], [side // 4, side // 4, side, side]], dtype=np.float32)
    cuda = setup.device.type == "cuda"
    if cuda:  # warm-up (kernels); on the CPU one more set_image costs seconds and changes nothing
        segmenter.predict(np.array(images[0]), boxes)
    seconds, (masks, _) = timed(lambda: segmenter.predict(np.array(images[1]), boxes), cuda)
    dtype = "bf16 autocast" if cuda else "float32 (no autocast on the CPU)"
    ran = setup.label(f"{Path(config).stem} random weights, {side}x{side}", dtype)
    notes = f"{SAM_BOXES} boxes -> masks {tuple(masks.shape)}"
    return [Row(SAM2_ROW, ran, seconds, "s / image", notes, ok=masks.shape == (SAM_BOXES, side, side))]


def graph_rows(setup: Setup) -> list[Row]:
    """The graph + 160 propagation steps at N = graph_grid^2 tokens (median of 3), against the dense reference.

    Passes when ``anchordiff.bench.agrees_with_dense``: equal to the dense reference on the same gate, gate
    disagreements only within float32 rounding of tau_W, and on CUDA no host synchronisation in the loop.
    """
    grid = (setup.graph_grid, setup.graph_grid)
    with torch.no_grad():
        result = anchordiff_bench.graph_benchmark("random", setup.device, repeats=3, grid=grid)
    fast, diff, same_gate = result["fast_s"], result["max_abs_diff"], result["max_abs_diff_same_gate"]
    n, k, d = result["n_tokens"], result["concepts"], result["value_dim"]
    margin, syncs = result["gate_disagreement_margin"], result["loop_host_syncs"]
    ran = setup.label(f"N = {n} ({grid[0]}x{grid[1]}), K = {k}, D = {d}", "float32")
    notes = (
        f"graph {1000 * fast['graph']:.1f} ms + propagation {1000 * fast['propagation']:.1f} ms; "
        f"dense {1000 * result['dense_s']['total']:.1f} ms; max |diff| vs dense {diff:.1e}, "
        f"on the same gate {same_gate:.1e}; gate disagreements {result['gate_disagreements']} of "
        f"{result['gate_entries']} (max |W_attn - tau| {margin:.1e})"
    )
    if syncs is not None:
        notes += f"; host syncs in the {anchordiff_bench.STEPS}-step loop: {syncs}"
    ok = anchordiff_bench.agrees_with_dense(result)
    return [Row(GRAPH_ROW, ran, 1000 * fast["total"], "ms", notes, ok=ok)]


CHECKS: list[tuple[str, str, Callable[[Setup], list[Row]]]] = [
    ("sd3", "AnchorDiff SD3", lambda s: anchordiff_rows(s, "SD3", "random-sd3", "sd3")),
    ("sd35", "AnchorDiff SD3.5", lambda s: anchordiff_rows(s, "SD3.5", "random-sd35", "sd35")),
    ("flux", FLUX_ROW, flux_rows),
    ("qwen", QWEN_ROW, qwen_rows),
    ("sam2", SAM2_ROW, sam2_rows),
    ("graph", GRAPH_ROW, graph_rows),
]
"""(``--only`` name, check name, the check) in table order."""
ROW_NAMES = [
    *(f"AnchorDiff {backbone} {measure}" for backbone in ("SD3", "SD3.5") for measure in ANCHORDIFF_MEASURES),
    FLUX_ROW,
    QWEN_ROW,
    SAM2_ROW,
    GRAPH_ROW,
]
"""Every row of the table when every check runs, in order (the test of ``--tiny`` looks for each)."""


# -- the table -----------------------------------------------------------------------------------------
def run_checks(setup: Setup, only: list[str] | None = None, out: Path | None = None) -> list[Row]:
    """The checks in order (``only``: those ``--only`` names); one that raises becomes a failed row carrying
    its error. With ``out``, the table so far is rewritten there (atomically) after each check, so a run
    stopped by a time limit keeps the rows it finished."""
    rows: list[Row] = []
    run_started = time.perf_counter()
    for key, name, check in CHECKS:
        if only and key not in only:
            continue
        started = time.perf_counter()
        try:
            rows += check(setup)
        except Exception as error:  # a failing check must not hide the others
            traceback.print_exc()
            rows.append(
                Row(name, setup.device.type, None, "", f"FAILED {type(error).__name__}: {error}", ok=False)
            )
        print(f"{name}: {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
        _free(setup.device)
        if out is not None:
            partial = out.with_name(out.name + ".partial")
            partial.write_text(markdown(rows, setup, time.perf_counter() - run_started))
            partial.replace(out)
    return rows


def markdown(rows: list[Row], setup: Setup, seconds: float) -> str:
    def cell(text: str) -> str:
        return " ".join(str(text).split()).replace("|", "\\|")

    device = torch.cuda.get_device_name(setup.device) if setup.device.type == "cuda" else platform.machine()
    lines = [
        f"GPU check ({'--tiny: tiny models, CPU' if setup.tiny else 'real configurations, random weights'}), "
        f"{device}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
        f"{seconds:.0f} s in all",
        "",
        "| check | what ran | value | unit | notes | ok |",
        "|---|---|---:|---|---|---|",
    ]
    for r in rows:
        value = "–" if r.value is None else f"{r.value:.4g}"
        ok = "yes" if r.ok else "FAILED"
        lines.append(
            f"| {cell(r.check)} | {cell(r.ran)} | {value} | {cell(r.unit)} | {cell(r.notes)} | {ok} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--tiny", action="store_true", help="the tiny models on the CPU (checks the code paths)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads with --tiny (default 1: tiny models are fastest so)",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=[key for key, _, _ in CHECKS],
        metavar="CHECK",
        help=f"run only these checks (of {', '.join(key for key, _, _ in CHECKS)}); default all",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="also write the table here, rewritten after each check (kept if the run is cut)",
    )
    args = parser.parse_args(argv)
    setup = Setup.for_run(args.tiny)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded: every model is built in code
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if setup.tiny:
        torch.set_num_threads(max(1, args.threads))
    started = time.perf_counter()
    rows = run_checks(setup, args.only, args.out)
    print(markdown(rows, setup, time.perf_counter() - started), end="")
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
