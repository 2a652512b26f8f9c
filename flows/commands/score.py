"""`mcc score` and `mcc sweep`: score a grounding method on MCC (or a standard benchmark).

Both build the one configuration (``--profile``, then the flags, then ``--set``): the
profile's ``score:`` and ``sweep:`` sections (``benchmark.config``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated

import typer

from flows.commands.common import Flag, ProfileOption, SetOption, console, fail, load_config

DatasetOption = Annotated[
    str | None,
    typer.Option(
        "--dataset",
        help="An MCC folder (built by `mcc publish`) or Hub repo id, a gtsegs_ijcv.mat file, or a VOC2012 folder.",
    ),
]
OutOption = Annotated[
    Path | None, typer.Option("--out", help="Output folder; run again with the same arguments to resume.")
]
PresetOption = Annotated[
    str | None, typer.Option(help="Backbone preset: sd3 (SD3-medium; default) or sd35 (SD3.5-large).")
]
ModelOption = Annotated[
    str | None,
    typer.Option(
        help="Diffusers repo id, local folder, or 'tiny' (offline test model). Default: the preset's repo."
    ),
]
ModeOption = Annotated[
    str | None, typer.Option(help="How existing images are read: invert (paper; default) or noise (fast).")
]
LimitOption = Annotated[
    int | None, typer.Option(help="Score only N images, sampled stratified by subset (fixed seed).", min=1)
]
BenchmarkOption = Annotated[
    str | None, typer.Option("--benchmark", help="auto (from --dataset; default), mcc, imagenet-seg or voc.")
]
ConfigOption = Annotated[
    str | None, typer.Option(help="MCC config: default, two_concepts or three_concepts.")
]
SeedOption = Annotated[int | None, typer.Option(help="Seed of the noise (mode noise) and of the tiny model.")]
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
DISPLAY_FLAGS = {"progress": "how the run is shown, not what it computes"}


def _int_list(text: str | None, what: str) -> list[int] | None:
    if text is None or text.strip() == "":
        return None
    try:
        return [int(part) for part in text.replace("+", ",").split(",") if part.strip()]
    except ValueError:
        raise fail(f"{what} must be comma-separated integers, got {text!r}") from None


def _float_list(text: str, what: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise fail(f"{what} must be comma-separated numbers, got {text!r}") from None


def _open(
    dataset: str | None,
    benchmark: str,
    config: str,
    class_names: str | None,
    split: str | None = None,
    missing_split_hint: str = "",
):
    from benchmark.datasets import MissingSplitError, open_dataset

    if dataset is None:
        raise fail("no dataset: give --dataset (or score.dataset / sweep.dataset in the profile)")
    try:
        return open_dataset(dataset, kind=benchmark, config=config, class_names=class_names, split=split)
    except MissingSplitError as error:
        raise fail(f"{error}{missing_split_hint}") from None
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


def _anchordiff(model: str, preset: str, device: str | None, dtype, revision: str | None):
    """AnchorDiff loaded once; ``dtype`` a torch dtype (from :func:`_dtype`) or None."""
    try:
        from anchordiff import AnchorDiff
    except ImportError as error:
        raise fail(f"the anchordiff package cannot be imported: {error}") from None
    try:
        return AnchorDiff.from_pretrained(model, preset=preset, device=device, dtype=dtype, revision=revision)
    except (OSError, ValueError) as error:
        raise fail(f"cannot load {model!r}: {error}") from None


def _model(model: str | None, preset: str) -> str:
    """The model to load: the one given, else the preset's repo (``anchordiff.backbones.PRESETS``)."""
    from anchordiff.backbones import check_preset

    return model or check_preset(preset).repo


def _pairs(text: str) -> list[tuple[int, int]]:
    try:
        pairs = [tuple(int(x) for x in item.split("+")) for item in text.split(",") if item.strip()]
    except ValueError:
        raise fail(f"--pairs must look like 9+18,5+9, got {text!r}") from None
    if any(len(p) != 2 for p in pairs):
        raise fail(f"--pairs must look like 9+18,5+9, got {text!r}")
    return pairs


def _pct(value: float | None) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"


SCORE_FLAGS: dict[str, Flag] = {
    "dataset": "score.dataset",
    "out": ("score.out", str),
    "method": ("score.methods", lambda text: [m.strip() for m in text.split(",") if m.strip()]),
    "preset": "score.preset",
    "model": "score.model",
    "mode": "score.mode",
    "limit": "score.limit",
    "benchmark": "score.benchmark",
    "config": "score.subset",
    "layers": ("score.layers", lambda text: _int_list(text, "--layers")),
    "steps": "score.steps",
    "gate_quantile": "score.gate_quantile",
    "seed": "score.seed",
    "prompt_template": "score.prompt_template",
    "device": "score.device",
    "dtype": "score.dtype",
    "revision": "score.revision",
    "class_names": ("score.class_names", str),
    "conceptattention_compat": "score.conceptattention_compat",
    "protocol_resolution": "score.protocol_resolution",
    "split": "score.split",
    "compare": ("score.compare", lambda folders: [str(f) for f in folders]),
    "retry_failed": "score.retry_failed",
    "qualitative": "score.qualitative",
}


def score(
    profile: ProfileOption = None,
    set_: SetOption = None,
    dataset: DatasetOption = None,
    out: OutOption = None,
    method: Annotated[
        str | None,
        typer.Option(
            help="anchordiff (default), anchordiff_multi, cross_attention, concept_attention, seg4diff, no_gate, "
            "no_wcos, or module:function; several, comma-separated, are scored together (one recording per "
            "image for the built-in ones), each into --out/<method>."
        ),
    ] = None,
    preset: PresetOption = None,
    model: ModelOption = None,
    mode: ModeOption = None,
    limit: LimitOption = None,
    benchmark: BenchmarkOption = None,
    config: ConfigOption = None,
    layers: Annotated[
        str | None, typer.Option(help="Graph layers, e.g. 9,18 (default: the preset's).")
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Propagation steps N_diff (default 160).", min=1)] = None,
    gate_quantile: Annotated[
        float | None, typer.Option(help="Quantile of the attention gate tau_W (default 0.98).")
    ] = None,
    seed: SeedOption = None,
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
    split: Annotated[
        str | None, typer.Option(help="Split: MCC test (default) or validation; VOC val (default).")
    ] = None,
    conceptattention_compat: Annotated[
        bool | None,
        typer.Option(
            help="ImageNet-Segmentation only: ConceptAttention's Acc/(2-Acc) as mIoU, Chefer's AP of constant maps."
        ),
    ] = None,
    protocol_resolution: Annotated[
        int | None,
        typer.Option(
            help="Score at NxN: masks nearest-neighbour, heatmaps bilinear (224 = Chefer et al.'s protocol).",
            min=1,
        ),
    ] = None,
    compare: Annotated[
        list[Path] | None,
        typer.Option(help="Other `mcc score` output folders to show beside this one in the grid."),
    ] = None,
    retry_failed: Annotated[
        bool | None, typer.Option(help="Score again the pairs an earlier run recorded as failed.")
    ] = None,
    qualitative: Annotated[
        int | None, typer.Option(help="Images kept for the qualitative figure (default 6).", min=0)
    ] = None,
    progress: ProgressOption = True,
) -> None:
    """Score grounding methods: writes pairs.jsonl, report.json, report.md and figures/ into --out
    (one method), or into --out/<method> for each of several methods scored together."""
    from anchordiff.pipeline import METHODS
    from benchmark.datasets import safe_name
    from benchmark.evaluate import (
        RunMismatchError,
        SharedRecording,
        evaluate_together,
        resolve_method,
        scored_anchordiff_methods,
    )
    from benchmark.figures import qualitative_grid

    c = load_config(profile, SCORE_FLAGS, locals(), set_).score
    if not c.methods:
        raise fail("no method: give --method (or score.methods in the profile)")
    if len(set(c.methods)) != len(c.methods):
        raise fail(f"--method names a method twice: {','.join(c.methods)}")
    if c.out is None:
        raise fail("no output folder: give --out (or score.out in the profile)")
    out = Path(c.out)
    torch_dtype = _dtype(c.dtype)
    data = _open(c.dataset, c.benchmark, c.subset, c.class_names, c.split)
    by_name: dict[str, object] = {}  # the user methods first: a bad reference fails before a model loads
    for method in c.methods:
        if method not in METHODS:
            try:
                by_name[method] = resolve_method(method)
            except ValueError as error:
                raise fail(f"{error}; --method is one of {', '.join(METHODS)} or module:function") from None
    built_in = [m for m in c.methods if m in METHODS]
    recording = None
    if built_in:
        model = _model(c.model, c.preset)
        recording = SharedRecording(_anchordiff(model, c.preset, c.device, torch_dtype, c.revision))
        by_name.update(zip(built_in, scored_anchordiff_methods(c, built_in, recording, model), strict=True))
    runners = [by_name[m] for m in c.methods]
    several = len(runners) > 1
    folders = [out / safe_name(method) if several else out for method in c.methods]
    try:
        reports = evaluate_together(
            runners, data, out_dirs=folders, limit=c.limit, progress=progress, qualitative=c.qualitative,
            conceptattention_compat=c.conceptattention_compat, retry_failed=c.retry_failed,
            protocol_resolution=c.protocol_resolution,
            names=[method if method not in METHODS else None for method in c.methods],
        )  # fmt: skip
    except (RunMismatchError, ValueError) as error:
        raise fail(str(error)) from None
    runs = [(report.method, folder / "heatmaps") for report, folder in zip(reports, folders, strict=True)]
    for compared in map(Path, c.compare or []):
        run_file = compared / "run.json"
        if not run_file.exists():
            raise fail(f"{compared} is not an `mcc score` output folder (no run.json)")
        runs.append((json.loads(run_file.read_text())["method"], compared / "heatmaps"))
    if len(runs) > 1:
        figure = out / "figures" / "qualitative.png"
        qualitative_grid(data, runs, figure, max_images=c.qualitative)

    for report, folder in zip(reports, folders, strict=True):
        _print_report(report, data.name, folder)
    if recording is not None and several:
        console.print(
            f"{recording.recordings} attention recordings served "
            f"{sum(m in METHODS for m in c.methods)} AnchorDiff methods (one per image)"
        )
    for report, folder in zip(reports, folders, strict=True):
        counts = report.counts["overall"]
        if counts["pairs"] and not counts["scored"]:
            raise fail(
                f"{report.method}: none of the {counts['pairs']} pairs could be scored (failed "
                f"{counts['failed']}, degenerate {counts['degenerate']}, invalid {counts['invalid']}); the "
                f"errors are in {folder / 'pairs.jsonl'}",
                code=1,
            )


def _print_report(report, dataset_name: str, folder: Path) -> None:
    """The run's headline table, pair counts and warnings, and where its files are."""
    from rich.table import Table

    table = Table(title=f"{report.method} on {dataset_name} ({report.counts['overall']['scored']} scored)")
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
    for warning in report.warnings:
        console.print(f"[bold yellow]warning:[/] {warning}")
    console.print(f"wrote {folder / 'report.md'}, {folder / 'report.json'}, {folder / 'figures'}")


SWEEP_FLAGS: dict[str, Flag] = {
    "dataset": "sweep.dataset",
    "out": ("sweep.out", str),
    "preset": "sweep.preset",
    "model": "sweep.model",
    "mode": "sweep.mode",
    "limit": "sweep.limit",
    "config": "sweep.subset",
    "method": "sweep.method",
    "layers": ("sweep.layers", lambda text: "all" if text == "all" else _int_list(text, "--layers") or []),
    "pair_layers": ("sweep.pair_layers", lambda text: _int_list(text, "--pair-layers")),
    "pairs": ("sweep.pairs", _pairs),
    "thresholds": ("sweep.thresholds", lambda text: _float_list(text, "--thresholds")),
    "steps": ("sweep.steps", lambda text: _int_list(text, "--steps") or []),
    "gate_quantile": "sweep.gate_quantile",
    "seed": "sweep.seed",
    "device": "sweep.device",
    "dtype": "sweep.dtype",
    "revision": "sweep.revision",
    "split": "sweep.split",
    "allow_test": "sweep.allow_test",
}


def sweep(
    profile: ProfileOption = None,
    set_: SetOption = None,
    dataset: DatasetOption = None,
    out: OutOption = None,
    preset: PresetOption = None,
    model: ModelOption = None,
    mode: ModeOption = None,
    limit: LimitOption = None,
    config: ConfigOption = None,
    method: Annotated[
        str | None,
        typer.Option(
            help="anchordiff (default), anchordiff_multi, no_gate, no_wcos (graph layers, pairs, steps), or "
            "seg4diff, concept_attention, cross_attention (the blocks they average)."
        ),
    ] = None,
    layers: Annotated[
        str | None, typer.Option(help="Single graph layers to sweep: 'all' (default) or e.g. 0,5,9.")
    ] = None,
    pair_layers: Annotated[
        str | None,
        typer.Option(help="Sweep every pair of these layers (default: the paper's top-8 for SD3/SD3.5)."),
    ] = None,
    pairs: Annotated[str | None, typer.Option(help="Explicit pairs instead, e.g. 9+18,5+9.")] = None,
    thresholds: Annotated[
        str | None,
        typer.Option(help="anchordiff_multi: anchor thresholds to sweep (default 0.3,0.4,...,0.9)."),
    ] = None,
    steps: Annotated[
        str | None,
        typer.Option(help="Propagation step counts (default 5,10,20,40,80,120,160,240,320,480,640)."),
    ] = None,
    gate_quantile: Annotated[
        float | None, typer.Option(help="Quantile of the attention gate tau_W (default 0.98).")
    ] = None,
    seed: SeedOption = None,
    device: DeviceOption = None,
    dtype: DtypeOption = None,
    revision: RevisionOption = None,
    split: Annotated[
        str | None, typer.Option(help="MCC split to tune on: validation (default); test needs --allow-test.")
    ] = None,
    allow_test: Annotated[
        bool | None,
        typer.Option(
            "--allow-test", help="Allow tuning on the test split (inflates every figure reported on it)."
        ),
    ] = None,
    progress: ProgressOption = True,
) -> None:
    """Sweep graph layers, layer pairs and propagation steps from one attention recording per image."""
    from benchmark.evaluate import RunMismatchError
    from benchmark.sweep import run_sweep

    c = load_config(profile, SWEEP_FLAGS, locals(), set_).sweep
    if c.out is None:
        raise fail("no output folder: give --out (or sweep.out in the profile)")
    out = Path(c.out)
    torch_dtype = _dtype(c.dtype)
    if c.split == "test" and not c.allow_test:
        raise fail(
            "mcc sweep tunes on the validation split; tuning on test makes every figure reported on test "
            "optimistic. Use --split validation, or pass --allow-test if you mean it"
        )
    data = _open(
        c.dataset, "mcc", c.subset, None, c.split,
        missing_split_hint=". Rebuild the dataset with `mcc publish` (it writes a validation split), or tune on "
        "test with --split test --allow-test, knowing that every figure reported on test becomes optimistic",
    )  # fmt: skip
    pipeline = _anchordiff(_model(c.model, c.preset), c.preset, c.device, torch_dtype, c.revision)
    try:
        report = run_sweep(
            pipeline, data, out_dir=out, limit=c.limit, method=c.method, mode=c.mode, layers=c.layers,
            pair_layers=c.pair_layers, pairs=c.pairs, steps=c.steps, gate_quantile=c.gate_quantile, seed=c.seed,
            thresholds=c.thresholds, progress=progress,
        )  # fmt: skip
    except (RunMismatchError, ValueError) as error:
        raise fail(str(error)) from None
    console.print(
        f"{len(report.settings)} settings over {data.name}; wrote {out / 'sweep.md'}, {out / 'figures'}"
    )
