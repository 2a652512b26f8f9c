"""Throughput of the metrics on one CPU core: ``python -m benchmark.bench``.

Prints a table of image-concept pairs scored per second for typical and worst cases at
1024 x 1024 masks (the target is at least 20 pairs/s). The worst case is masks covering the
whole image (every pixel enters the exact AP, a sort of ~1M keys); the 8-bit case has mostly
tied scores. Figures are medians over ``--pairs`` calls after a warm-up call (which also
allocates the metrics' reusable work buffers). BLAS / OpenMP threads are pinned to
one before numpy loads (unless the environment already sets them). The metrics are numpy on
the CPU by design, so there is no GPU variant.
"""

from __future__ import annotations

import os

for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import argparse  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import numpy as np  # noqa: E402

from benchmark.metrics import binary_image_scores, fg_scores  # noqa: E402


def _discs(size: int, k: int) -> np.ndarray:
    """K overlapping discs covering about a third of the image (a typical MCC scene)."""
    yy, xx = np.mgrid[:size, :size]
    centres = [(0.5, 0.3), (0.5, 0.68), (0.22, 0.5)]
    radius = 0.2 * size
    return np.stack([(yy - cy * size) ** 2 + (xx - cx * size) ** 2 < radius**2 for cy, cx in centres[:k]])


def _halves(size: int) -> np.ndarray:
    """Two masks covering the whole image: R = every pixel (the worst case of the fg metrics)."""
    masks = np.zeros((2, size, size), dtype=bool)
    masks[0, :, : size // 2] = True
    masks[1, :, size // 2 :] = True
    return masks


def _time(score: Callable[[int], object], pairs: int) -> tuple[list[float], list[float]]:
    """Wall-clock and CPU seconds of each of ``pairs`` calls (after one warm-up call)."""
    score(0)  # warm-up (interpolation weights are cached)
    wall, cpu = [], []
    for index in range(pairs):
        started, started_cpu = time.perf_counter(), time.process_time()
        score(index)
        wall.append(time.perf_counter() - started)
        cpu.append(time.process_time() - started_cpu)
    return wall, cpu


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=1024, help="mask side in pixels (default 1024)")
    parser.add_argument("--pairs", type=int, default=40, help="pairs timed per case (default 40)")
    args = parser.parse_args(argv)
    size = args.size
    rng = np.random.default_rng(0)
    grid = rng.random((8, 64, 64)).astype(np.float32)  # token-grid heatmaps (SD3: 64 x 64)
    full = rng.random((4, size, size)).astype(np.float32)  # heatmaps already at the image size
    levels = np.round(full * 255) / 255  # 8-bit heatmaps: most pixels tie (the run-by-run AP path)
    discs2, discs3, halves = _discs(size, 2), _discs(size, 3), _halves(size)
    cases: list[tuple[str, Callable[[int], object]]] = [
        ("fg, 2 concepts, 64x64 heatmap", lambda i: fg_scores(grid[i % 8], discs2, i % 2)),
        ("fg, 3 concepts, 64x64 heatmap", lambda i: fg_scores(grid[i % 8], discs3, i % 3)),
        (f"fg, 2 concepts, {size}x{size} heatmap", lambda i: fg_scores(full[i % 4], discs2, i % 2)),
        ("fg, worst case: R = whole image", lambda i: fg_scores(grid[i % 8], halves, i % 2)),
        (f"fg, R = whole image, {size}x{size} 8-bit", lambda i: fg_scores(levels[i % 4], halves, i % 2)),
        ("binary (standard protocol), 64x64", lambda i: binary_image_scores(grid[i % 8], discs2[0])),
    ]
    try:
        from threadpoolctl import threadpool_info

        blas_threads = sorted({pool["num_threads"] for pool in threadpool_info()})
    except ImportError:
        blas_threads = ["unknown (threadpoolctl not installed)"]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"metrics throughput, masks {size}x{size}, numpy {np.__version__}, BLAS threads {blas_threads}, "
          f"{os.cpu_count()} CPUs, load average {load:.1f} ({platform.machine()})")  # fmt: skip
    print("one thread; CPU ms = process CPU time (less sensitive to other processes than wall time)")
    header = (
        f"{'case':<40} {'pairs':>6} {'wall ms':>8} {'CPU ms':>8} {'pairs/s (wall)':>15} {'pairs/s (CPU)':>14}"
    )
    print(header)
    print("-" * len(header))
    for name, score in cases:
        wall, cpu = _time(score, args.pairs)
        wall_ms, cpu_ms = 1000 * statistics.median(wall), 1000 * statistics.median(cpu)
        print(
            f"{name:<40} {len(wall):>6} {wall_ms:>8.1f} {cpu_ms:>8.1f} {1000 / wall_ms:>15.1f} {1000 / cpu_ms:>14.1f}"
        )


if __name__ == "__main__":
    main()
