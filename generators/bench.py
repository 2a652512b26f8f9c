"""Performance of the two generators; prints tables (no assertions).

Scraper throughput on loopback, side by side with img2dataset on the same URL list::

    python -m generators.bench scrape --img2dataset /tmp/i2d-venv/bin/img2dataset [--images 2000] [--more]

2,000 distinct JPEGs of about 86 KB (768 x 576) are served by a threaded HTTP/1.1 server in a
separate process on 127.0.0.1. Both tools run as whole commands in new processes with 64
downloads in flight and no rate limit: ``mcc scrape --rate 0 --concurrency 64
--per-host-connections 64`` (the full stage: robots.txt, address guard, download, sniff,
decode, pHash and sha256 dedupe against the store, metadata removal, one JSON record per
image, group commit) and img2dataset 1.47 (its own venv: ``pip install img2dataset==1.47.0``;
not a dependency of this project) with ``--processes_count 2 --thread_count 32
--resize_mode no``, which decodes and re-encodes. The runs alternate, ``--repeats`` times
(median). ``--more`` adds ``mcc scrape --reencode-png`` and img2dataset's defaults (resize
to 256 px).

FLUX seconds per image and images per hour::

    python -m generators.bench flux [--images 4]

With CUDA: random weights in the real FLUX.1-dev configuration (12 B transformer,
T5-XXL and CLIP-L shaped text encoders, the 16-channel VAE) in bfloat16, 1024 x 1024,
28 steps, through ``FluxGenerator`` (text encoding, denoising, decoding, PNG storage).
Without CUDA: the tiny pipeline on the CPU (128 px, 28 steps), labelled as such.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import multiprocessing
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console
from rich.table import Table

console = Console(width=150)


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its children that have ended."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


# -- scraper ----------------------------------------------------------------------------
def make_jpegs(folder: Path, count: int, size: tuple[int, int] = (640, 512)) -> list[str]:
    """``count`` distinct JPEGs (smooth random colours plus noise; ~86 KB at 768 x 576) in ``folder``; their names."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for index in range(count):
        rng = np.random.default_rng(index)
        coarse = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).resize(
            size, Image.Resampling.BICUBIC
        )
        noise = rng.integers(-14, 15, (size[1], size[0], 3))
        pixels = np.clip(np.asarray(coarse, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
        name = f"{index:05d}.jpg"
        Image.fromarray(pixels).save(folder / name, format="JPEG", quality=85)
        names.append(name)
    return names


class _FileHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    files: dict[str, bytes] = {}

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        body = self.files.get(self.path.lstrip("/"))
        status = 200 if body is not None else 404
        body = body if body is not None else b"not found"
        self.send_response(status)
        self.send_header("Content-Type", "image/jpeg" if status == 200 else "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(OSError):
            self.wfile.write(body)


class _FileServer(ThreadingHTTPServer):
    request_queue_size = 1024  # the default backlog of 5 drops connections under 64 concurrent clients
    daemon_threads = True


def _serve_folder(folder: str, port_queue) -> None:
    _FileHandler.files = {p.name: p.read_bytes() for p in Path(folder).iterdir()}
    server = _FileServer(("127.0.0.1", 0), _FileHandler)
    port_queue.put(server.server_address[1])
    server.serve_forever()


@contextlib.contextmanager
def served_folder(folder: Path):
    """Serve ``folder`` from a separate process on 127.0.0.1; yields the base URL."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_serve_folder, args=(str(folder), queue), daemon=True)
    process.start()
    try:
        yield f"http://127.0.0.1:{queue.get(timeout=60)}"
    finally:
        process.terminate()
        process.join(10)


def run_mcc_scrape(url_csv: Path, workdir: Path, args, reencode: bool = False) -> dict:
    """``mcc scrape`` as a user runs it, in a new process; counts from the store afterwards."""
    from manifests import ManifestStore, State

    command = [
        sys.executable, "-m", "flows.cli", "scrape", "--workdir", str(workdir), "--urls", str(url_csv),
        "--allow-private-networks", "--rate", "0", "--concurrency", str(args.concurrency),
        "--per-host-connections", str(args.concurrency),
        *(["--reencode-png"] if reencode else []),
    ]  # fmt: skip
    started, cpu = time.perf_counter(), _cpu_seconds()
    completed = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "COLUMNS": "120"})
    wall, cpu = time.perf_counter() - started, _cpu_seconds() - cpu
    if completed.returncode != 0:
        raise RuntimeError(f"mcc scrape failed ({completed.returncode}): {completed.stderr[-2000:]}")
    records = list(ManifestStore(workdir).iter())
    failures = Counter(r.rejection.reason for r in records if r.state == State.rejected and r.rejection)
    accepted = sum(r.state == State.generated for r in records)
    return {"accepted": accepted, "failures": dict(failures), "wall": wall, "cpu": cpu}


def run_img2dataset(executable: str, url_csv: Path, output: Path, args, extra: list[str]) -> dict:
    """img2dataset in its own process: ``args.i2d_processes`` processes of ``concurrency /
    processes`` threads (the same downloads in flight as mcc), files output."""
    command = [
        executable,
        "--url_list",
        str(url_csv),
        "--input_format",
        "csv",
        "--url_col",
        "url",
        "--output_folder",
        str(output),
        "--output_format",
        "files",
        "--processes_count",
        str(args.i2d_processes),
        "--thread_count",
        str(max(1, args.concurrency // args.i2d_processes)),
        "--number_sample_per_shard",
        "10000",
        "--timeout",
        "10",
        *extra,
    ]
    started, cpu = time.perf_counter(), _cpu_seconds()
    completed = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    )
    wall, cpu = time.perf_counter() - started, _cpu_seconds() - cpu
    if completed.returncode != 0:
        raise RuntimeError(f"img2dataset failed ({completed.returncode}): {completed.stderr[-2000:]}")
    stats = [json.loads(p.read_text()) for p in output.glob("*_stats.json")]
    successes = sum(s.get("successes", 0) for s in stats)
    failures: Counter[str] = Counter()
    for s in stats:
        for status, n in (s.get("status_dict") or {}).items():
            if status != "success":
                failures[status] += n
    return {"accepted": successes, "failures": dict(failures), "wall": wall, "cpu": cpu}


def bench_scrape(args) -> None:
    executable = args.img2dataset or shutil.which("img2dataset")
    if not executable:
        raise SystemExit(
            "img2dataset not found: pass --img2dataset PATH (install img2dataset==1.47.0 in its own venv)"
        )
    root = Path(tempfile.mkdtemp(prefix="mcc-bench-scrape-"))
    try:
        width, height = args.size
        names = make_jpegs(root / "site", args.images, (width, height))
        mean_kb = np.mean([(root / "site" / n).stat().st_size for n in names]) / 1024
        console.print(f"{len(names)} JPEGs of {width}x{height}, mean {mean_kb:.1f} KiB, served on 127.0.0.1")
        rows: dict[str, list[dict]] = {}
        with served_folder(root / "site") as base:
            url_csv = root / "urls.csv"
            with url_csv.open("w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["url", "group", "licence", "attribution", "page_url"])
                for name in names:
                    writer.writerow([f"{base}/{name}", "lemon-lime", "CC0", "", ""])
            runs = [
                (
                    "mcc scrape (original bytes, metadata removed)",
                    lambda out: run_mcc_scrape(url_csv, out, args),
                ),
                (
                    "img2dataset --resize_mode no",
                    lambda out: run_img2dataset(executable, url_csv, out, args, ["--resize_mode", "no"]),
                ),
            ]
            if args.more:
                runs += [
                    (
                        "mcc scrape --reencode-png",
                        lambda out: run_mcc_scrape(url_csv, out, args, reencode=True),
                    ),
                    (
                        "img2dataset defaults (resize 256, jpg)",
                        lambda out: run_img2dataset(executable, url_csv, out, args, []),
                    ),
                ]
            for repeat in range(args.repeats):  # alternate the tools: drifts in load hit both
                for n, (label, run) in enumerate(runs):
                    output = root / f"run-{repeat}-{n}"
                    rows.setdefault(label, []).append(run(output))
                    shutil.rmtree(output, ignore_errors=True)
        load = os.getloadavg()[0]
        table = Table(
            title=f"scraper, whole-process wall time: {args.images} x {mean_kb:.0f} KiB JPEGs on loopback, "
            f"{args.concurrency} downloads in flight, {os.cpu_count()} CPUs, median of {args.repeats} "
            f"(alternating), load average {load:.1f} at the end"
        )
        for column in (
            "tool",
            "accepted",
            "failures",
            "wall s (median)",
            "images/s",
            "CPU ms / image",
            "img2dataset wall / this",
        ):
            table.add_column(column, justify="left" if column in ("tool", "failures") else "right")
        reference = statistics.median(r["wall"] for r in rows["img2dataset --resize_mode no"])
        for label, results in rows.items():
            wall = statistics.median(r["wall"] for r in results)
            last = results[-1]
            failures = ", ".join(f"{k}: {v}" for k, v in sorted(last["failures"].items())) or "none"
            table.add_row(
                label,
                str(last["accepted"]),
                failures,
                f"{wall:.2f}",
                f"{last['accepted'] / wall:.1f}",
                f"{1000 * statistics.median(r['cpu'] for r in results) / max(last['accepted'], 1):.1f}",
                f"{reference / wall:.2f}x",
            )
        console.print(table)
        console.print(
            "wall: the whole command, start-up and imports included. mcc: --rate 0 --concurrency C "
            f"--per-host-connections C; img2dataset {args.i2d_processes} processes x C/{args.i2d_processes} "
            "threads. The local server's CPU is not counted."
        )
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


def random_flux_dev_pipeline(
    device: str, dtype, layers: int = 19, single_layers: int = 38, text_layers: int = 24
):
    """A ``FluxPipeline`` with FLUX.1-dev's architecture and random weights (for timing only).

    Transformer, VAE and text encoders have the released configurations (layer counts
    can be lowered to check the code path on a small machine); the tokenizers are the
    tiny in-memory ones, so only the embedding tables are smaller than the real ones.
    """
    import torch
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from generators.flux import assemble_flux_pipeline
    from manifests.tiny import tiny_clip_tokenizer, tiny_t5_tokenizer

    clip_tokenizer, t5_tokenizer = tiny_clip_tokenizer(), tiny_t5_tokenizer(model_max_length=512)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build straight in the target dtype: no float32 copy of 12 B weights
    try:
        with torch.device(device):
            transformer = FluxTransformer2DModel(
                patch_size=1,
                in_channels=64,
                num_layers=layers,
                num_single_layers=single_layers,
                attention_head_dim=128,
                num_attention_heads=24,
                joint_attention_dim=4096,
                pooled_projection_dim=768,
                guidance_embeds=True,
                axes_dims_rope=(16, 56, 56),
            )
            vae = AutoencoderKL(
                in_channels=3,
                out_channels=3,
                down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4,
                block_out_channels=(128, 256, 512, 512),
                layers_per_block=2,
                latent_channels=16,
                norm_num_groups=32,
                sample_size=1024,
                use_quant_conv=False,
                use_post_quant_conv=False,
                shift_factor=0.1159,
                scaling_factor=0.3611,
            )
            text_encoder = CLIPTextModel(
                CLIPTextConfig(
                    vocab_size=len(clip_tokenizer),
                    hidden_size=768,
                    intermediate_size=3072,
                    num_attention_heads=12,
                    num_hidden_layers=min(12, text_layers),
                    projection_dim=768,
                    hidden_act="quick_gelu",
                    bos_token_id=clip_tokenizer.bos_token_id,
                    eos_token_id=clip_tokenizer.eos_token_id,
                    pad_token_id=clip_tokenizer.pad_token_id,
                )
            )
            text_encoder_2 = T5EncoderModel(
                T5Config(
                    vocab_size=len(t5_tokenizer),
                    d_model=4096,
                    d_kv=64,
                    d_ff=10240,
                    num_layers=text_layers,
                    num_heads=64,
                    feed_forward_proj="gated-gelu",
                    pad_token_id=0,
                    eos_token_id=1,
                    decoder_start_token_id=0,
                )
            )
    finally:
        torch.set_default_dtype(previous)
    for module in (transformer, vae, text_encoder, text_encoder_2):
        module.eval()
    return assemble_flux_pipeline(
        transformer, vae, text_encoder, text_encoder_2, clip_tokenizer, t5_tokenizer
    )


def seconds_per_image(generator, images: int) -> tuple[float, list]:
    """Wall seconds per image of the generate stage (prompt encoding, denoising, VAE decode, PNG store).

    Plans ``images`` scenes plus one warm-up batch (``generator.batch_size`` scenes, not timed: kernels,
    allocator) in a temporary work dir. With CUDA the peak-memory counter is reset after the warm-up.
    Returns the seconds per image and the timed records (``generated``, or ``rejected`` with the reason).
    """
    import torch

    from manifests import ManifestStore, add_planned, load_groups, plan_scenes
    from manifests.stage import run_stage

    cuda = generator.device.type == "cuda"
    with tempfile.TemporaryDirectory(prefix="mcc-bench-flux-") as workdir:
        store = ManifestStore(workdir)
        add_planned(store, plan_scenes(load_groups(), per_group=1)[: images + generator.batch_size])
        records = list(store.iter())
        run_stage(generator, store, records[: generator.batch_size])  # warm-up, not timed
        timed = records[generator.batch_size : generator.batch_size + images]
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        timed = run_stage(generator, store, timed).records
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
    return seconds / max(len(timed), 1), timed


def bench_flux(args) -> None:
    import torch

    from generators.flux import FluxGenerator

    torch.set_num_threads(max(1, args.threads))
    cuda = torch.cuda.is_available() and not args.cpu
    if cuda or args.dev_config:
        device = "cuda" if cuda else "cpu"
        size, steps = args.size or 1024, args.steps or 28
        started = time.perf_counter()
        pipe = random_flux_dev_pipeline(
            device, torch.bfloat16, args.transformer_layers, args.single_layers, args.text_layers
        )
        build_s = time.perf_counter() - started
        label = f"FLUX.1-dev architecture, random weights, bfloat16, {device}" + (
            f" ({args.transformer_layers}+{args.single_layers} blocks)"
            if (args.transformer_layers, args.single_layers) != (19, 38)
            else ""
        )
        generator = FluxGenerator.from_pipeline(
            pipe,
            model="random:FLUX.1-dev-config",
            steps=steps,
            size=size,
            batch_size=args.batch_size,
            device=device,
            dtype=torch.bfloat16,
        )
    else:
        size, steps = args.size or 128, args.steps or 28
        started = time.perf_counter()
        generator = FluxGenerator("tiny", steps=steps, size=size, batch_size=args.batch_size, device="cpu")
        build_s = time.perf_counter() - started
        label = f"tiny FLUX pipeline, float32, CPU ({torch.get_num_threads()} threads)"

    per_image, timed = seconds_per_image(generator, args.images)
    ok = sum(r.state.value == "generated" for r in timed)
    table = Table(
        title="FLUX generation (FluxGenerator.generate: prompt encoding, denoising, VAE decode, PNG store)"
    )
    for column in (
        "pipeline",
        "size",
        "steps",
        "batch",
        "images",
        "s / image",
        "images / hour",
        "build s",
        "peak GPU GiB",
    ):
        table.add_column(column, justify="left" if column == "pipeline" else "right")
    peak = f"{torch.cuda.max_memory_allocated() / 2**30:.1f}" if cuda else "-"
    table.add_row(
        label,
        f"{size}x{size}",
        str(steps),
        str(args.batch_size),
        f"{ok}/{len(timed)}",
        f"{per_image:.3f}",
        f"{3600 / per_image:.0f}",
        f"{build_s:.1f}",
        peak,
    )
    console.print(table)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m generators.bench", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    scrape = commands.add_parser("scrape", help="scraper throughput on loopback vs img2dataset")
    scrape.add_argument("--images", type=int, default=2000)
    scrape.add_argument(
        "--size", type=lambda v: tuple(int(x) for x in v.split("x")), default=(768, 576), help="WxH"
    )
    scrape.add_argument(
        "--concurrency",
        type=int,
        default=64,
        help="downloads in flight (mcc: also per host, as img2dataset has no limit)",
    )
    scrape.add_argument("--i2d-processes", type=int, default=2, help="img2dataset --processes_count")
    scrape.add_argument("--repeats", type=int, default=3)
    scrape.add_argument("--more", action="store_true", help="also --reencode-png and img2dataset's defaults")
    scrape.add_argument("--img2dataset", help="img2dataset executable (default: on PATH)")
    scrape.add_argument("--keep", action="store_true", help="keep the temporary folders")
    flux = commands.add_parser("flux", help="FLUX seconds per image and images per hour")
    flux.add_argument("--images", type=int, default=4)
    flux.add_argument("--batch-size", type=int, default=1)
    flux.add_argument("--size", type=int)
    flux.add_argument("--steps", type=int)
    flux.add_argument("--threads", type=int, default=2)
    flux.add_argument("--cpu", action="store_true", help="ignore CUDA")
    flux.add_argument("--dev-config", action="store_true", help="use the FLUX.1-dev architecture even on CPU")
    flux.add_argument("--transformer-layers", type=int, default=19)
    flux.add_argument("--single-layers", type=int, default=38)
    flux.add_argument("--text-layers", type=int, default=24)
    args = parser.parse_args(argv)
    {"scrape": bench_scrape, "flux": bench_flux}[args.command](args)


if __name__ == "__main__":
    main()
