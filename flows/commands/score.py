"""`mcc score` and `mcc sweep`: score a grounding method on MCC (or a standard benchmark)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from flows.commands.common import console, fail

PRESET_MODELS = {
    "sd3": "stabilityai/stable-diffusion-3-medium-diffusers",
    "sd35": "stabilityai/stable-diffusion-3.5-large",
}
ANCHORDIFF_METHODS = ("anchordiff", "cross_attention", "concept_attention", "no_gate", "no_wcos")

DatasetOption = Annotated[
    str,
    typer.Option(
        "--dataset",
        help="An MCC folder (built by `mcc publish`) or Hub repo id, a gtsegs_ijcv.mat file, or a VOC2012 folder.",
    ),
]
OutOption = Annotated[
    Path, typer.Option("--out", help="Output folder; run again with the same arguments to resume.")
]
PresetOption = Annotated[str, typer.Option(help="Backbone preset: sd3 (SD3-medium) or sd35 (SD3.5-large).")]
ModelOption = Annotated[
    str | None,
    typer.Option(
        help="Diffusers repo id, local folder, or 'tiny' (offline test model). Default: the preset's repo."
    ),
]
ModeOption = Annotated[
    str, typer.Option(help="How existing images are read: invert (paper) or noise (fast).")
]
LimitOption = Annotated[int | None, typer.Option(help="Score only the first N images.", min=1)]
BenchmarkOption = Annotated[
    str, typer.Option("--benchmark", help="auto (from --dataset), mcc, imagenet-seg or voc.")
]
ConfigOption = Annotated[str, typer.Option(help="MCC config: default, two_concepts or three_concepts.")]
SeedOption = Annotated[int, typer.Option(help="Seed of the noise (mode noise) and of the tiny model.")]
DeviceOption = Annotated[
    str | None, typer.Option(help="Torch device, e.g. cuda or cpu (default: automatic).")
]
DtypeOption = Annotated[
    str | None,
    typer.Option(
        help="bfloat16, float16 or float32 (default: bfloat16 on CUDA, float32 on CPU and for tiny)."
    ),
]
RevisionOption = Annotated[str | None, typer.Option(help="Model revision (git ref on the Hub).")]
ProgressOption = Annotated[bool, typer.Option("--progress/--no-progress", help="Show the progress bar.")]


def _int_list(text: str | None, what: str) -> list[int] | None:
    if text is None or text.strip() == "":
        return None
    try:
        return [int(part) for part in text.replace("+", ",").split(",") if part.strip()]
    except ValueError:
        raise fail(f"{what} must be comma-separated integers, got {text!r}") from None


def _open(dataset: str, benchmark: str, config: str, class_names: Path | None):
    from benchmark.datasets import open_dataset

    if benchmark not in ("auto", "mcc", "imagenet-seg", "voc"):
        raise fail(f"--benchmark must be auto, mcc, imagenet-seg or voc, got {benchmark!r}")
    try:
        return open_dataset(dataset, kind=benchmark, config=config, class_names=class_names)
    except (ValueError, FileNotFoundError, OSError) as error:
        raise fail(str(error)) from None


def _dtype(dtype: str | None):
    """The torch dtype named by --dtype (None: the model's default), or exit naming the allowed values."""
    if dtype is None:
        return None
    from manifests.dtypes import torch_dtype

    try:
        return torch_dtype(dtype)
    except ValueError as error:
        raise fail(f"--{error}") from None


def _anchordiff(model: str | None, preset: str, device: str | None, dtype, revision: str | None):
    """AnchorDiff loaded once; ``dtype`` a torch dtype (from :func:`_dtype`) or None."""
    if preset not in PRESET_MODELS:
        raise fail(f"--preset must be sd3 or sd35, got {preset!r}")
    try:
        from anchordiff import AnchorDiff
    except ImportError as error:
        raise fail(f"the anchordiff package cannot be imported: {error}") from None
    try:
        return AnchorDiff.from_pretrained(
            model or PRESET_MODELS[preset], preset=preset, device=device, dtype=dtype, revision=revision
        )
    except (OSError, ValueError) as error:
        raise fail(f"cannot load {model or PRESET_MODELS[preset]!r}: {error}") from None


def _pct(value: float | None) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"


def score(
    dataset: DatasetOption,
    out: OutOption,
    method: Annotated[
        str,
        typer.Option(
            help="anchordiff, cross_attention, concept_attention, no_gate, no_wcos, or module:function."
        ),
    ] = "anchordiff",
    preset: PresetOption = "sd3",
    model: ModelOption = None,
    mode: ModeOption = "invert",
    limit: LimitOption = None,
    benchmark: BenchmarkOption = "auto",
    config: ConfigOption = "default",
    layers: Annotated[
        str | None, typer.Option(help="Graph layers, e.g. 9,18 (default: the preset's).")
    ] = None,
    steps: Annotated[int, typer.Option(help="Propagation steps N_diff.", min=1)] = 160,
    gate_quantile: Annotated[float, typer.Option(help="Quantile of the attention gate tau_W.")] = 0.98,
    seed: SeedOption = 0,
    prompt_template: Annotated[
        str | None,
        typer.Option(help="Prompt for existing images, with {concepts} (default: 'a photo of {concepts}')."),
    ] = None,
    device: DeviceOption = None,
    dtype: DtypeOption = None,
    revision: RevisionOption = None,
    class_names: Annotated[
        Path | None, typer.Option(help="ImageNet-Segmentation / VOC: JSON {class id: queried name}.")
    ] = None,
    conceptattention_compat: Annotated[
        bool,
        typer.Option(
            help="Standard benchmarks: report ConceptAttention's Acc/(2-Acc) as mIoU (not default)."
        ),
    ] = False,
    compare: Annotated[
        list[Path] | None,
        typer.Option(help="Other `mcc score` output folders to show beside this one in the grid."),
    ] = None,
    retry_failed: Annotated[
        bool, typer.Option(help="Score again the pairs an earlier run recorded as failed.")
    ] = False,
    qualitative: Annotated[int, typer.Option(help="Images kept for the qualitative figure.", min=0)] = 6,
    progress: ProgressOption = True,
) -> None:
    """Score a grounding method: writes pairs.jsonl, report.json, report.md and figures/ into --out."""
    from benchmark.evaluate import AnchorDiffMethod, RunMismatchError, evaluate, resolve_method
    from benchmark.figures import qualitative_grid

    if mode not in ("invert", "noise"):
        raise fail(f"--mode must be invert or noise, got {mode!r}")
    torch_dtype = _dtype(dtype)
    data = _open(dataset, benchmark, config, class_names)
    if method in ANCHORDIFF_METHODS:
        pipeline = _anchordiff(model, preset, device, torch_dtype, revision)
        runner = AnchorDiffMethod(
            model or PRESET_MODELS[preset], preset=preset, method=method, mode=mode,
            layers=_int_list(layers, "--layers"), steps=steps, gate_quantile=gate_quantile, seed=seed,
            prompt_template=prompt_template, revision=revision, pipeline=pipeline,
        )  # fmt: skip
    else:
        try:
            runner = resolve_method(method)
        except ValueError as error:
            raise fail(
                f"{error}; --method is one of {', '.join(ANCHORDIFF_METHODS)} or module:function"
            ) from None
    try:
        report = evaluate(
            runner, data, out_dir=out, limit=limit, progress=progress, qualitative=qualitative,
            conceptattention_compat=conceptattention_compat, retry_failed=retry_failed,
            name=method if method not in ANCHORDIFF_METHODS else None,
        )  # fmt: skip
    except RunMismatchError as error:
        raise fail(str(error)) from None
    if compare:
        runs = [(report.method, out / "heatmaps")]
        for folder in compare:
            run_file = folder / "run.json"
            if not run_file.exists():
                raise fail(f"{folder} is not an `mcc score` output folder (no run.json)")
            runs.append((json.loads(run_file.read_text())["method"], folder / "heatmaps"))
        qualitative_grid(data, runs, out / "figures" / "qualitative.png", max_images=qualitative)

    table = Table(title=f"{report.method} on {data.name} ({report.counts['overall']['scored']} scored)")
    metrics = (
        ("miou_fg", "map_fg", "nar", "acc_fg", "iou_target")
        if report.protocol == "fg"
        else ("acc", "miou", "map")
    )
    table.add_column("subset")
    for metric in metrics:
        table.add_column(metric, justify="right")
    for label, means in [("all", report.overall), *report.subsets.items()]:
        table.add_row(label, *(_pct(means.get(m)) for m in metrics))
    console.print(table)
    counts = report.counts["overall"]
    console.print(
        f"pairs {counts['pairs']}: scored {counts['scored']}, degenerate {counts['degenerate']}, "
        f"[red]failed {counts['failed']}[/], invalid {counts['invalid']}"
    )
    console.print(f"wrote {out / 'report.md'}, {out / 'report.json'}, {out / 'figures'}")


def sweep(
    dataset: DatasetOption,
    out: OutOption,
    preset: PresetOption = "sd3",
    model: ModelOption = None,
    mode: ModeOption = "invert",
    limit: LimitOption = None,
    config: ConfigOption = "default",
    method: Annotated[str, typer.Option(help="anchordiff, no_gate or no_wcos.")] = "anchordiff",
    layers: Annotated[str, typer.Option(help="Single graph layers to sweep: 'all' or e.g. 0,5,9.")] = "all",
    pair_layers: Annotated[
        str | None,
        typer.Option(help="Sweep every pair of these layers (default: the paper's top-8 for SD3/SD3.5)."),
    ] = None,
    pairs: Annotated[str | None, typer.Option(help="Explicit pairs instead, e.g. 9+18,5+9.")] = None,
    steps: Annotated[str, typer.Option(help="Propagation step counts, e.g. 10,40,160,640.")] = ",".join(
        map(str, (5, 10, 20, 40, 80, 120, 160, 240, 320, 480, 640))
    ),
    gate_quantile: Annotated[float, typer.Option(help="Quantile of the attention gate tau_W.")] = 0.98,
    seed: SeedOption = 0,
    device: DeviceOption = None,
    dtype: DtypeOption = None,
    revision: RevisionOption = None,
    progress: ProgressOption = True,
) -> None:
    """Sweep graph layers, layer pairs and propagation steps from one attention recording per image."""
    from benchmark.evaluate import RunMismatchError
    from benchmark.sweep import run_sweep

    if method not in ("anchordiff", "no_gate", "no_wcos"):
        raise fail(f"--method must be anchordiff, no_gate or no_wcos, got {method!r}")
    if mode not in ("invert", "noise"):
        raise fail(f"--mode must be invert or noise, got {mode!r}")
    torch_dtype = _dtype(dtype)
    data = _open(dataset, "mcc", config, None)
    pipeline = _anchordiff(model, preset, device, torch_dtype, revision)
    pair_list = None
    if pairs:
        try:
            pair_list = [tuple(int(x) for x in item.split("+")) for item in pairs.split(",") if item.strip()]
        except ValueError:
            raise fail(f"--pairs must look like 9+18,5+9, got {pairs!r}") from None
        if any(len(p) != 2 for p in pair_list):
            raise fail(f"--pairs must look like 9+18,5+9, got {pairs!r}")
    try:
        report = run_sweep(
            pipeline, data, out_dir=out, limit=limit, method=method, mode=mode,
            layers="all" if layers == "all" else _int_list(layers, "--layers") or [],
            pair_layers=_int_list(pair_layers, "--pair-layers"), pairs=pair_list,
            steps=_int_list(steps, "--steps") or [], gate_quantile=gate_quantile, seed=seed, progress=progress,
        )  # fmt: skip
    except (RunMismatchError, ValueError) as error:
        raise fail(str(error)) from None
    console.print(
        f"{len(report.settings)} settings over {data.name}; wrote {out / 'sweep.md'}, {out / 'figures'}"
    )
