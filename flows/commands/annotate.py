"""`mcc annotate`: boxes (Qwen2.5-VL), masks (SAM2) and the quality gate on a work dir."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from flows.commands.common import WorkdirOption, console, fail
from manifests import ManifestStore, State


class GateProfile(StrEnum):
    default = "default"
    permissive = "permissive"


def parse_segmenter(value: str) -> tuple[str, str | None]:
    """``tiny`` -> (hiera-tiny config, no checkpoint); ``CONFIG:CHECKPOINT`` -> both."""
    from annotators.segment import TINY_CONFIG

    if value == "tiny":
        return TINY_CONFIG, None
    config, sep, checkpoint = value.partition(":")
    if not sep or not config or not checkpoint:
        raise ValueError(
            f"--segmenter {value!r}: give 'tiny' or CONFIG:CHECKPOINT, e.g. "
            "configs/sam2.1/sam2.1_hiera_l.yaml:/models/sam2.1_hiera_large.pt"
        )
    return config, checkpoint


def annotate(
    workdir: WorkdirOption,
    localizer: Annotated[str, typer.Option(help="Qwen2.5-VL: 'tiny', a Hub repo id or a local folder.")],
    segmenter: Annotated[
        str,
        typer.Option(
            help="SAM2: 'tiny' or CONFIG:CHECKPOINT "
            "(configs/sam2.1/sam2.1_hiera_l.yaml:/path/sam2.1_hiera_large.pt)."
        ),
    ],
    revision: Annotated[str | None, typer.Option(help="Hub revision of the localizer.")] = None,
    device: Annotated[
        str | None, typer.Option(help="cuda, cuda:1, cpu... (default: CUDA when available).")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Images per Qwen2.5-VL generate call.", min=1)] = 4,
    constrained: Annotated[bool, typer.Option(help="Constrain answers to the grounding JSON schema.")] = True,
    min_pixels: Annotated[int | None, typer.Option(help="Least pixels of the VLM input.")] = None,
    max_pixels: Annotated[int | None, typer.Option(help="Most pixels of the VLM input.")] = None,
    gate: Annotated[
        GateProfile,
        typer.Option(
            help="Quality thresholds: 'default', or 'permissive' (only "
            "empty masks reject; for random tiny models)."
        ),
    ] = GateProfile.default,
    every_concept: Annotated[
        bool,
        typer.Option(
            "--every-concept/--any-concept",
            help="Constrained answers start with one box per concept (for generated images, whose prompt "
            "names them all); by default a concept the model does not find rejects the record.",
        ),
    ] = False,
    second_look: Annotated[bool, typer.Option(help="Ask the VLM to confirm each concept's crop.")] = False,
    limit: Annotated[int | None, typer.Option(help="Annotate at most this many records.", min=1)] = None,
) -> None:
    """Localise every concept (Qwen2.5-VL boxes), segment it (SAM2 masks) and gate the result.

    Reads records in state `generated`, leaves them `segmented` or `rejected` with the stage
    and reason; re-running resumes (finished records are skipped).
    """
    from annotators.localize import QwenLocalizer
    from annotators.quality import QualityConfig, QualityGate
    from annotators.segment import Sam2Segmenter

    store = ManifestStore(workdir)
    try:
        sam_config, checkpoint = parse_segmenter(segmenter)
    except ValueError as error:
        raise fail(str(error)) from None
    config = QualityConfig.permissive() if gate == GateProfile.permissive else QualityConfig()
    config = config.model_copy(update={"second_look": second_look})
    if gate == GateProfile.default and (localizer == "tiny" or segmenter == "tiny"):
        console.print(
            "[yellow]note:[/] random tiny models give noise masks; the default gate rejects most of "
            "them (use --gate permissive for a smoke run)"
        )

    generated = list(store.iter(State.generated))[:limit]
    room = None if limit is None else max(0, limit - len(generated))
    waiting = list(store.iter(State.localized))[:room]
    if not generated and not waiting:
        console.print(f"nothing to annotate in {workdir}: no records in state generated or localized")
        return

    qwen = None
    try:
        if generated or second_look:
            console.print(f"loading Qwen2.5-VL [bold]{localizer}[/] ...")
            qwen = QwenLocalizer(
                localizer,
                revision=revision,
                device=device,
                batch_size=batch_size,
                constrained=constrained,
                require_every_concept=every_concept,
                min_pixels=min_pixels,
                max_pixels=max_pixels,
            )
    except (OSError, ValueError) as error:
        raise fail(f"cannot load the localizer: {error}") from None

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        if generated and qwen is not None:
            task = progress.add_task("localize", total=len(generated))
            qwen.localize(generated, store, progress=lambda n: progress.advance(task, n))
        to_segment = [r for r in generated + waiting if r.state == State.localized]
        if to_segment:
            progress.console.print(f"loading SAM2 [bold]{sam_config}[/] ...")
            try:
                sam = Sam2Segmenter(
                    sam_config,
                    checkpoint,
                    device=device,
                    gate=QualityGate(config, verifier=qwen if second_look else None),
                )
            except (OSError, ValueError) as error:
                raise fail(f"cannot load the segmenter: {error}") from None
            task = progress.add_task("segment + gate", total=len(to_segment))
            sam.segment(to_segment, store, progress=lambda n: progress.advance(task, n))
            report = sam.gate.report.as_dict()
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + f"-{uuid.uuid4().hex[:6]}"
            path = store.write_bytes(f"reports/quality-{stamp}.json", json.dumps(report, indent=1).encode())
            progress.console.print(f"quality gate: kept {report['kept']} of {report['seen']}; report {path}")

    _summary(generated + waiting)


def _summary(records) -> None:
    table = Table(title="annotate")
    table.add_column("outcome")
    table.add_column("records", justify="right")
    outcomes: dict[str, int] = {}
    for record in records:
        key = record.state.value
        if record.rejection is not None:
            key = f"rejected ({record.rejection.stage}: {record.rejection.reason})"
        outcomes[key] = outcomes.get(key, 0) + 1
    for key, n in sorted(outcomes.items()):
        table.add_row(key, str(n))
    console.print(table)
