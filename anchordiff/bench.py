"""Performance of AnchorDiff's graph and propagation, and (with CUDA) of a whole query.

    python -m anchordiff.bench [--out DIR] [--repeats 3] [--threads 1,2] [--no-gpu]

Writes ``DIR/anchordiff_bench.json`` and ``DIR/anchordiff_bench.md`` (default DIR:
``bench-results/anchordiff``) and prints the Markdown tables. Figures only, no assertions.

CPU section (always): the graph and propagation of ``anchordiff.graph`` (blockwise symmetric
``W_attn``, screened in bfloat16 where the CPU has bfloat16 dot products, exact quantile by
selection, ``W_cos`` only on the gated pairs, sparse ``W_hat``,
all K concepts propagated together) against a literal dense implementation of eqs. 8-13
written here (dense ``W_attn``, the percentile by sorting all ``N^2`` entries, dense ``W_cos``,
``G``, ``W`` and ``W_hat``, 160 dense products ``W_hat^T s`` for the ``N x K`` seeds, ``W_hat^T`` made contiguous once), on the
same inputs in the same run: N = 4096 tokens (64 x 64 grid), K = 3 concepts, D = 1536
(SD3-medium's 24 heads x 64, heads concatenated). Two input sets: a synthetic scene with
three look-alike objects (:mod:`anchordiff.synthetic`) and unstructured random attention
(softmax of random 64-d queries and keys). The runs alternate dense / fast; each time is the
median of ``--repeats`` runs. Reported: both times (with the stages), their ratio (target
>= 10x) and the max |heatmap difference| (target <= 1e-4).

GPU section (only when ``torch.cuda.is_available()``): ``AnchorDiff.from_pretrained("random-sd3",
preset="sd3", device="cuda", dtype=torch.bfloat16)`` (random weights of the real SD3-medium
transformer, offline), a 1024 x 1024 image, seconds per concept query in ``noise`` and ``invert``
mode (a call with one concept; and a call with three concepts divided by three), and peak GPU
memory (``torch.cuda.max_memory_allocated``) against the memory held after loading (the
weights). Also the graph + propagation alone on the GPU, fast and dense.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from anchordiff.graph import (
    anchordiff_heatmaps,
    attention_gate,
    build_graph,
    cosine_affinity,
    gate_threshold,
    propagate,
    propagation_start,
    propagation_steps,
    select_anchors,
)
from anchordiff.synthetic import synthetic_scene

GRID = (64, 64)
NUM_CONCEPTS = 3
VALUE_DIM = 1536  # SD3-medium: 24 heads x 64, concatenated
STEPS = 160
GATE_QUANTILE = 0.98
SPEEDUP_TARGET = 10.0  # issue 17: >= 10x the literal dense form on CPU at N = 4096, K = 3
DIFF_TARGET = 1e-4
GATE_ROUNDING = 64 * torch.finfo(torch.float32).eps
"""How far from tau_W an entry of W_attn (a cosine, |w| <= 1) may be and still fall on different sides of
the gate in two float32 implementations: the blocked and the full matrix product (other kernels, other
summation orders, on CUDA split-K) round each 4096-term dot product differently by a few ulps."""


# -- the literal dense implementation of eqs. 8-13 ----------------------------------------------------------
def dense_reference(
    a_ii: torch.Tensor,
    o_ii: torch.Tensor,
    a_ci: torch.Tensor,
    *,
    gate_quantile: float = GATE_QUANTILE,
    steps: int = STEPS,
    clock: Callable[[str], None] = lambda stage: None,
    gate: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eqs. 7-13 with dense matrices throughout; ``clock(stage)`` is called after each stage.

    a_ii (N, N), o_ii (N, D), a_ci (K, N) float32 -> (K, N) float32 heatmaps and the (N, N)
    bool gate G. ``gate``: an (N, N) bool G to use instead of eqs. 8-9 (to compare the rest of the
    arithmetic with an implementation whose W_attn rounds differently near tau_W).
    """
    n = a_ii.shape[0]
    anchors = a_ci.argmax(dim=1)  # eq. 7
    if gate is None:
        a_norm = a_ii / a_ii.norm(dim=1, keepdim=True).clamp_min(1e-12)
        w_attn = a_norm @ a_norm.T  # eq. 8
        clock("w_attn")
        ordered = w_attn.reshape(-1).sort().values  # eq. 9: the percentile of all N^2 entries
        pos = gate_quantile * (ordered.numel() - 1)
        lo = int(pos)
        hi = min(lo + 1, ordered.numel() - 1)
        tau = float(ordered[lo]) + (pos - lo) * (float(ordered[hi]) - float(ordered[lo]))
        gate = w_attn.double() > tau
        clock("quantile_gate")
    gate = gate.float()
    o_norm = o_ii / o_ii.norm(dim=1, keepdim=True).clamp_min(1e-12)
    w_cos = o_norm @ o_norm.T  # eq. 10
    w = w_cos.clamp(min=0) * gate  # eq. 11 (negative cosines clamped)
    row_sum = w.sum(dim=1)
    empty = row_sum == 0
    loops = empty.nonzero().squeeze(1)
    w[loops, loops] = 1.0  # self-loops
    row_sum[empty] = 1.0
    w_hat = w / row_sum[:, None]
    clock("w_cos_normalise")
    seeds = torch.zeros(n, len(anchors), device=a_ii.device)
    seeds[anchors, torch.arange(len(anchors), device=a_ii.device)] = 1.0
    s = seeds
    w_hat_t = w_hat.T.contiguous()  # once, so that each product reads memory in order
    for _ in range(steps):  # eq. 12
        s = w_hat_t @ s
    s = s.T
    lo_v, hi_v = s.amin(dim=1, keepdim=True), s.amax(dim=1, keepdim=True)  # eq. 13
    heat = torch.where(hi_v > lo_v, (s - lo_v) / (hi_v - lo_v).clamp_min(1e-30), torch.zeros_like(s))
    clock("propagation")
    return heat, gate.bool()


# -- timing helpers -----------------------------------------------------------------------------------------
def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Clock:
    """Stage timer (wall seconds; CUDA synchronised before each reading) plus process CPU seconds."""

    def __init__(self, device: torch.device):
        self.device = device
        self.stages: dict[str, float] = {}
        self._sync()
        self._cpu = time.process_time()
        self._last = time.perf_counter()

    def _sync(self) -> None:
        _synchronize(self.device)

    def __call__(self, stage: str) -> None:
        self._sync()
        now = time.perf_counter()
        self.stages[stage] = self.stages.get(stage, 0.0) + now - self._last
        self._last = now

    def totals(self) -> dict[str, float]:
        return {**self.stages, "total": sum(self.stages.values()), "cpu": time.process_time() - self._cpu}


def _median_stages(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def _inputs(
    kind: str, device: torch.device, grid: tuple[int, int] = GRID
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seeded (a_ii (N, N), o_ii (N, VALUE_DIM), a_ci (K, N)) float32 on ``device``."""
    if kind == "synthetic":
        scene = synthetic_scene(grid, NUM_CONCEPTS, seed=0, dim=VALUE_DIM)
        tensors = scene.a_ii, scene.o_ii, scene.a_ci
    else:
        g = torch.Generator().manual_seed(0)
        n = grid[0] * grid[1]
        q, k = torch.randn(n, 64, generator=g), torch.randn(n, 64, generator=g)
        a_ii = torch.softmax(q @ k.T / 8.0, dim=1)
        o_ii = a_ii @ torch.randn(n, VALUE_DIM, generator=g)
        a_ci = torch.softmax(torch.randn(NUM_CONCEPTS, n, generator=g), dim=1)
        tensors = a_ii, o_ii, a_ci
    return tuple(t.to(device) for t in tensors)


def graph_benchmark(
    kind: str, device: torch.device, repeats: int, grid: tuple[int, int] = GRID
) -> dict[str, Any]:
    """Fast vs dense graph + propagation on one input set; medians of ``repeats`` alternating runs."""
    a_ii, o_ii, a_ci = _inputs(kind, device, grid)
    fast_runs, dense_runs = [], []
    for _ in range(repeats):
        clock = _Clock(device)
        dense, dense_gate = dense_reference(a_ii, o_ii, a_ci, clock=clock)
        dense_runs.append(clock.totals())
        del dense_gate
        clock = _Clock(device)
        w_hat = build_graph(a_ii, o_ii, gate_quantile=GATE_QUANTILE)
        clock("graph")
        fast = propagate(w_hat, select_anchors(a_ci), steps=STEPS)
        clock("propagation")
        fast_runs.append(clock.totals())
    fast_t, dense_t = _median_stages(fast_runs), _median_stages(dense_runs)

    # Not timed: the one-call API, and how many gate entries the two implementations disagree
    # on (entries within float32 rounding of tau_W, where the blocked and the full matrix
    # product may round differently).
    one_call = anchordiff_heatmaps(a_ii, o_ii, a_ci)
    _, dense_gate = dense_reference(a_ii, o_ii, a_ci, steps=0)
    rows, cols, _, _ = attention_gate(a_ii, GATE_QUANTILE)
    fast_gate = torch.zeros_like(dense_gate)
    fast_gate[rows, cols] = True
    # The rest of the arithmetic (W_cos, W_hat, 160 steps, eq. 13) on the fast path's own gate, and how
    # close to tau_W the entries lie on which the gates disagree.
    same_gate, _ = dense_reference(a_ii, o_ii, a_ci, gate=fast_gate)
    disagree = fast_gate != dense_gate
    w_attn = cosine_affinity(a_ii)
    margin = (
        float((w_attn[disagree] - gate_threshold(w_attn, GATE_QUANTILE)).abs().max())
        if disagree.any()
        else 0.0
    )
    return {
        "inputs": kind,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "grid": list(grid),
        "n_tokens": a_ii.shape[0],
        "concepts": a_ci.shape[0],
        "value_dim": o_ii.shape[1],
        "repeats": repeats,
        "fast_s": fast_t,
        "dense_s": dense_t,
        "speedup": dense_t["total"] / fast_t["total"],
        "speedup_cpu_time": dense_t["cpu"] / fast_t["cpu"],
        "max_abs_diff": float((fast - dense).abs().max()),
        "max_abs_diff_same_gate": float((fast - same_gate).abs().max()),
        "one_call_max_abs_diff": float((one_call - fast).abs().max()),
        "gate_entries": int(dense_gate.sum()),
        "gate_disagreements": int(disagree.sum()),
        "gate_disagreement_margin": margin,
        "loop_host_syncs": loop_host_syncs(w_hat, select_anchors(a_ci)),
        "w_hat_nonzeros": int(w_hat.values().numel()),
    }


def agrees_with_dense(result: dict[str, Any]) -> bool:
    """Whether a :func:`graph_benchmark` result meets the equality target: heatmaps within ``DIFF_TARGET`` of
    the dense reference on the same gate, the whole comparison within it too unless every gate entry the two
    disagree on is within ``GATE_ROUNDING`` of tau_W, and (CUDA) no host synchronisation in the loop."""
    return (
        result["max_abs_diff_same_gate"] <= DIFF_TARGET
        and (result["max_abs_diff"] <= DIFF_TARGET or result["gate_disagreement_margin"] <= GATE_ROUNDING)
        and result["loop_host_syncs"] in (None, "none")
    )


def loop_host_syncs(w_hat: torch.Tensor, anchors: torch.Tensor) -> str | None:
    """On CUDA, whether the 160-step propagation loop waits for the GPU: ``"none"``, or the error that
    ``torch.cuda.set_sync_debug_mode("error")`` raised at the first synchronising call. None on the CPU."""
    if w_hat.device.type != "cuda":
        return None
    w_hat_t, seeds = propagation_start(w_hat, anchors)
    torch.cuda.synchronize(w_hat.device)
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        propagation_steps(w_hat_t, seeds, STEPS)
    except RuntimeError as error:
        return f"synchronises: {error}"
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    return "none"


# -- whole queries --------------------------------------------------------------------------------------------
CONCEPT_SETS = {"1 concept": ["husky"], "3 concepts": ["husky", "wolf", "malamute"]}
RECORDER_TOLERANCE = 1.6e-2
"""Largest change of the transformer output under the recorder, relative to max |output| (torch.testing's
bfloat16 rtol): the recorder recomputes the joint attention, so only rounding may differ."""


def query_benchmark(ad: Any, repeats: int) -> list[dict[str, Any]]:
    """Seconds per concept query of a loaded ``AnchorDiff`` on a random image of its native size.

    For each mode (``noise``, ``invert``): one warm-up call (kernels, cuBLAS workspaces), then the median of
    ``repeats`` calls with one concept and with three (``per_concept_query_s`` = call seconds / concepts).
    ``peak_bytes``: ``torch.cuda.max_memory_allocated`` over the timed calls (None on the CPU).
    """
    import numpy as np
    from PIL import Image

    device = ad.device
    side = ad.resolution
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8))
    rows = []
    for mode in ("noise", "invert"):
        ad(image, CONCEPT_SETS["3 concepts"], mode=mode)  # warm-up
        for label, concepts in CONCEPT_SETS.items():
            _synchronize(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            times, stage_runs = [], []
            for _ in range(repeats):
                t0 = time.perf_counter()
                out = ad(image, concepts, mode=mode)
                _synchronize(device)
                times.append(time.perf_counter() - t0)
                stage_runs.append(dict(out.timings))
            call_s = statistics.median(times)
            rows.append(
                {
                    "mode": mode,
                    "concepts": label,
                    "call_s": call_s,
                    "per_concept_query_s": call_s / len(concepts),
                    "peak_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
                    "stages_s": _median_stages(stage_runs),
                }
            )
    return rows


@torch.no_grad()
def recorder_output_change(
    ad: Any, concepts: tuple[str, ...] = ("husky", "wolf", "malamute"), seed: int = 0
) -> float:
    """How much the ``AttentionRecorder`` changes one transformer forward: max |with - without| / max |without|.

    One forward of ``ad.transformer`` in its dtype at ``ad``'s native size (random (1, C, res/f, res/f)
    latents, random (1, CLIP length + max_sequence_length, joint_attention_dim) prompt embeddings (the
    layout of SD3's ``encode_prompt``) and pooled projections, timestep 500), without and then with the
    recorder (A_II / O_II at ``ad.graph_layers``, the concept stream of ``concepts`` at every block).
    Compare with :data:`RECORDER_TOLERANCE`. Raises RuntimeError when the recorder recorded nothing.
    """
    from anchordiff.attention import AttentionRecorder

    transformer, config = ad.transformer, ad.transformer.config
    side = ad.resolution // ad.pipe.vae_scale_factor
    g = torch.Generator().manual_seed(seed)
    shapes = {
        "hidden_states": (1, config.in_channels, side, side),
        "encoder_hidden_states": (
            1,
            ad.pipe.tokenizer_max_length + ad.max_sequence_length,
            config.joint_attention_dim,
        ),
        "pooled_projections": (1, config.pooled_projection_dim),
    }
    inputs = {name: torch.randn(shape, generator=g).to(ad.device, ad.dtype) for name, shape in shapes.items()}
    inputs.update(timestep=torch.full((1,), 500.0, device=ad.device), return_dict=False)
    plain = transformer(**inputs)[0].float()
    tokens = ad.encode_concepts(list(concepts))
    with AttentionRecorder(transformer, graph_layers=ad.graph_layers, concepts=tokens) as recorder:
        recorded = transformer(**inputs)[0].float()
    state = recorder.state
    if state.recorded_forwards != 1 or sorted(state.a_ii) != sorted(ad.graph_layers):
        raise RuntimeError(
            f"the recorder recorded {state.recorded_forwards} forwards, A_II at {sorted(state.a_ii)}"
        )
    return float((recorded - plain).abs().max() / plain.abs().max().clamp_min(1e-30))


def gpu_query_benchmark(repeats: int) -> dict[str, Any]:
    """Seconds per concept query at 1024 x 1024 with random SD3-medium weights in bf16 (offline)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from anchordiff.pipeline import AnchorDiff

    device = torch.device("cuda")
    torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    ad = AnchorDiff.from_pretrained("random-sd3", preset="sd3", device="cuda", dtype=torch.bfloat16)
    torch.cuda.synchronize(device)
    load_s = time.perf_counter() - started
    weights_bytes = torch.cuda.memory_allocated(device)
    return {
        "device_name": torch.cuda.get_device_name(device),
        "model": ad.config,
        "load_s": load_s,
        "weights_bytes": weights_bytes,
        "queries": query_benchmark(ad, repeats),
    }


# -- reporting ----------------------------------------------------------------------------------------------
def _gib(n: float) -> str:
    return f"{n / 2**30:.2f}"


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [
        "## AnchorDiff graph + propagation: fast vs literal dense (eqs. 8-13)",
        "",
        f"{env['cpu']}, torch {env['torch']}, load average {env['load_before']} before / "
        f"{env['load_after']} after (a shared machine: wall times stretch with the load, CPU times less). "
        f"N = {env['grid'][0]}x{env['grid'][1]} = {env['grid'][0] * env['grid'][1]} tokens, "
        f"K = {NUM_CONCEPTS}, D = {VALUE_DIM}, "
        f"{STEPS} steps, gate quantile {GATE_QUANTILE}, clamp_negative=True, empty_row=self_loop; "
        "medians of alternating runs. Dense stages: W_attn / sort + gate / W_cos + W_hat / 160 products. "
        f"Targets: speedup >= {SPEEDUP_TARGET:g}x, max abs diff <= {DIFF_TARGET:g}. "
        "Gate disagreements: entries of G that differ between the two (W_attn within float32 rounding "
        "of tau_W: the blocked and the full matrix product round differently), with their largest "
        f"|W_attn - tau_W| in brackets; 'agrees': within {DIFF_TARGET:g} on the same gate, and overall "
        f"unless every disagreement is within {GATE_ROUNDING:.0e} of tau_W.",
        "",
        "| device | threads | inputs | dense s (stages) | fast s (graph / propagation) | speedup wall "
        "| CPU s dense / fast | max abs diff | gate disagreements / entries |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["graph"]:
        d, f = row["dense_s"], row["fast_s"]
        speed_ok = f"({'>=' if row['speedup'] >= SPEEDUP_TARGET else '<'} {SPEEDUP_TARGET:g}x)"
        diff_ok = "(agrees)" if agrees_with_dense(row) else "(DIFFERS)"
        lines.append(
            f"| {row['device']} | {row['threads']} | {row['inputs']} | {d['total']:.3f} ({d['w_attn']:.3f} / "
            f"{d['quantile_gate']:.3f} / {d['w_cos_normalise']:.3f} / {d['propagation']:.3f}) | "
            f"{f['total']:.3f} ({f['graph']:.3f} / {f['propagation']:.3f}) | {row['speedup']:.1f}x {speed_ok} | "
            f"{d['cpu']:.2f} / {f['cpu']:.2f} ({row['speedup_cpu_time']:.1f}x) | {row['max_abs_diff']:.1e}, same gate {row['max_abs_diff_same_gate']:.1e} {diff_ok} | "
            f"{row['gate_disagreements']} / {row['gate_entries']} ({row['gate_disagreement_margin']:.0e}) |"
        )
    gpu = report.get("gpu_queries")
    if gpu is None:
        lines += ["", f"GPU end-to-end: not run ({report.get('gpu_skipped', 'no CUDA device')})."]
    else:
        lines += [
            "",
            f"## End-to-end concept queries, {gpu['device_name']}, random SD3-medium weights, bf16, 1024x1024",
            "",
            f"Memory held after loading (weights): {_gib(gpu['weights_bytes'])} GiB; load {gpu['load_s']:.1f} s.",
            "",
            "Targets (issue 3): <= 0.15 s per concept query in noise mode on an H100; peak <= weights + 3 GB.",
            "",
            "| mode | call | s per call | s per concept query | peak GiB | peak - weights GiB |",
            "|---|---|---|---|---|---|",
        ]
        for q in gpu["queries"]:
            lines.append(
                f"| {q['mode']} | {q['concepts']} | {q['call_s']:.3f} | {q['per_concept_query_s']:.3f} | "
                f"{_gib(q['peak_bytes'])} | {_gib(q['peak_bytes'] - gpu['weights_bytes'])} |"
            )
    return "\n".join(lines) + "\n"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m anchordiff.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench-results/anchordiff"), help="output folder")
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement (median reported)")
    parser.add_argument(
        "--grid", type=int, default=GRID[0], help="token grid side of the CPU section (64: N=4096)"
    )
    parser.add_argument(
        "--threads",
        default=None,
        help="comma-separated torch CPU thread counts to run the CPU section with (default: 1 and torch's default)",
    )
    parser.add_argument(
        "--no-gpu", action="store_true", help="skip the CUDA section even if a GPU is present"
    )
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if args.grid < 8:
        parser.error("--grid must be >= 8")
    grid = (args.grid, args.grid)
    default_threads = torch.get_num_threads()
    try:
        threads = (
            sorted({int(t) for t in args.threads.split(",")})
            if args.threads
            else sorted({1, default_threads})
        )
    except ValueError:
        parser.error(f"--threads must be comma-separated integers, got {args.threads!r}")
    if min(threads) < 1:
        parser.error("--threads must be >= 1")

    report: dict[str, Any] = {
        "environment": {
            "cpu": _cpu_name(),
            "torch": torch.__version__,
            "grid": list(grid),
            "load_before": round(os.getloadavg()[0], 2),
        },
        "graph": [],
    }
    with torch.no_grad():
        for count in threads:
            torch.set_num_threads(count)
            for kind in ("synthetic", "random"):
                report["graph"].append(graph_benchmark(kind, torch.device("cpu"), args.repeats, grid))
        torch.set_num_threads(default_threads)
        if torch.cuda.is_available() and not args.no_gpu:
            for kind in ("synthetic", "random"):
                report["graph"].append(graph_benchmark(kind, torch.device("cuda"), args.repeats))
            report["gpu_queries"] = gpu_query_benchmark(args.repeats)
        else:
            report["gpu_skipped"] = "--no-gpu" if args.no_gpu else "no CUDA device"
    report["environment"]["load_after"] = round(os.getloadavg()[0], 2)

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "anchordiff_bench.json").write_text(json.dumps(report, indent=2, default=str))
    table = markdown(report)
    (args.out / "anchordiff_bench.md").write_text(table)
    print(table)
    return report


if __name__ == "__main__":
    main()
