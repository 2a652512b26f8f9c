"""`mcc annotate`: boxes (a localiser backend), masks (a segmenter backend) and the quality gate.

Builds the one configuration (``--profile``, then the flags, then ``--set``) and runs the
localise and segment stages through ``manifests.stage.run_stage``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer

from flows.commands.common import (
    Flag,
    ProfileOption,
    SetOption,
    StageProgress,
    WorkdirOption,
    console,
    fail,
    load_config,
)


class GateProfile(StrEnum):
    default = "default"
    permissive = "permissive"


ANNOTATE_FLAGS: dict[str, Flag] = {
    "workdir": "workdir",
    "localizer": "localize.model",
    "localizer_backend": "localize.backend",
    "segmenter": "segment.model",
    "segmenter_backend": "segment.backend",
    "revision": "localize.revision",
    "device": ("localize.device", "segment.device"),
    "batch_size": "localize.batch_size",
    "constrained": "localize.constrained",
    "min_pixels": "localize.min_pixels",
    "max_pixels": "localize.max_pixels",
    "gate": ("quality.preset", str),
    "every_concept": "localize.every_concept",
    "second_look": "quality.second_look",
    "limit": "localize.limit",
}


def annotate(
    workdir: WorkdirOption,
    profile: ProfileOption = None,
    set_: SetOption = None,
    localizer: Annotated[
        str | None,
        typer.Option(
            help="Localiser model: 'tiny', a Hub repo id or a local folder (default Qwen2.5-VL-7B)."
        ),
    ] = None,
    localizer_backend: Annotated[
        str | None,
        typer.Option(help="Localiser backend: qwen2_5_vl (default) or a registered / module:factory one."),
    ] = None,
    segmenter: Annotated[
        str | None,
        typer.Option(
            help="SAM2: 'tiny' or CONFIG:CHECKPOINT "
            "(configs/sam2.1/sam2.1_hiera_l.yaml:/path/sam2.1_hiera_large.pt)."
        ),
    ] = None,
    segmenter_backend: Annotated[
        str | None,
        typer.Option(help="Segmenter backend: sam2 (default) or a registered / module:factory one."),
    ] = None,
    revision: Annotated[str | None, typer.Option(help="Hub revision of the localizer.")] = None,
    device: Annotated[
        str | None, typer.Option(help="cuda, cuda:1, cpu... for both models (default: CUDA when available).")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Images per localiser call (default 4).", min=1)
    ] = None,
    constrained: Annotated[
        bool | None, typer.Option(help="Constrain answers to the grounding JSON schema (default on).")
    ] = None,
    min_pixels: Annotated[int | None, typer.Option(help="Least pixels of the VLM input.")] = None,
    max_pixels: Annotated[int | None, typer.Option(help="Most pixels of the VLM input.")] = None,
    gate: Annotated[
        GateProfile | None,
        typer.Option(
            help="Quality thresholds: 'default', or 'permissive' (only "
            "empty masks reject; for random tiny models). Single thresholds: --set quality.NAME=VALUE."
        ),
    ] = None,
    every_concept: Annotated[
        bool | None,
        typer.Option(
            "--every-concept/--any-concept",
            help="Constrained answers start with one box per concept (for generated images, whose prompt "
            "names them all); by default a concept the model does not find rejects the record.",
        ),
    ] = None,
    second_look: Annotated[
        bool | None, typer.Option(help="Ask the VLM to confirm each concept's crop.")
    ] = None,
    limit: Annotated[
        int | None, typer.Option(help="Localise, and segment, at most this many records.", min=1)
    ] = None,
) -> None:
    """Localise every concept (boxes), segment it (masks) and gate the result.

    Reads records in state `generated` (and `localized` ones left by an interrupted run),
    leaves them `segmented` or `rejected` with the stage and reason; re-running resumes.
    """
    from manifests import ManifestStore, State
    from manifests.registry import LOCALIZERS, SEGMENTERS
    from manifests.stage import run_stage, select

    config = load_config(profile, ANNOTATE_FLAGS, locals(), set_)
    store = ManifestStore(config.workdir)
    tiny_models = "tiny" in (config.localize.model, config.segment.model)
    if config.quality.preset == "default" and tiny_models:
        console.print(
            "[yellow]note:[/] random tiny models give noise masks; the default gate rejects most of "
            "them (use --gate permissive for a smoke run)"
        )
    limit = config.localize.limit
    generated = select(store, (State.generated,))[:limit]
    if not generated and not select(store, (State.localized,)):
        console.print(f"nothing to annotate in {config.workdir}: no records in state generated or localized")
        return

    localizer = None
    if generated or config.quality.second_look:
        console.print(f"loading the localiser [bold]{config.localize.model}[/] ...")
        try:
            localizer = LOCALIZERS.build(config.localize)
        except (OSError, ValueError) as error:
            raise fail(f"cannot load the localizer: {error}") from None
    outcomes = {}
    if generated:
        with StageProgress("localize") as progress:
            outcomes.update(
                {r.id: r for r in run_stage(localizer, store, generated, progress=progress).records}
            )
    to_segment = select(store, (State.localized,))[:limit]
    if to_segment:
        console.print(f"loading the segmenter [bold]{config.segment.model}[/] ...")
        verifier = localizer if config.quality.second_look else None
        try:
            segmenter = SEGMENTERS.build(config.segment, quality=config.quality, verifier=verifier)
        except (OSError, ValueError) as error:
            raise fail(f"cannot load the segmenter: {error}") from None
        with StageProgress("segment + gate") as progress:
            outcomes.update(
                {r.id: r for r in run_stage(segmenter, store, to_segment, progress=progress).records}
            )
        gate = getattr(segmenter, "gate", None)
        if gate is not None:
            report = gate.last_report.as_dict()
            console.print(
                f"quality gate: kept {report['kept']} of {report['seen']}; report in {config.workdir}/reports/"
            )
    _summary(list(outcomes.values()))


def _summary(records) -> None:
    from rich.table import Table

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
