"""`mcc plan`, `mcc status`, `mcc show`: the manifest itself."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows.commands.common import Flag, ProfileOption, SetOption, WorkdirOption, console, fail, load_config

PLAN_FLAGS: dict[str, Flag] = {
    "workdir": "workdir",
    "per_group": "plan.per_group",
    "seed": "plan.seed",
    "groups": ("plan.groups_file", str),
    "max_groups": "plan.max_groups",
}


def plan(
    workdir: WorkdirOption,
    profile: ProfileOption = None,
    set_: SetOption = None,
    per_group: Annotated[
        int | None, typer.Option(help="Scenes to plan per concept group (default 4).", min=1)
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed of the plan; the same seed plans the same scenes.")
    ] = None,
    groups: Annotated[
        Path | None, typer.Option(help="A groups YAML file (default: the packaged one).")
    ] = None,
    max_groups: Annotated[int | None, typer.Option(help="Use only the first N groups.", min=1)] = None,
) -> None:
    """Plan generated scenes for every concept group (idempotent: re-running creates nothing new)."""
    from manifests import GroupsFileError, ManifestStore, add_planned, load_groups, plan_scenes

    config = load_config(profile, PLAN_FLAGS, locals(), set_)
    try:
        concept_groups = load_groups(config.plan.groups_file)[: config.plan.max_groups]
        specs = plan_scenes(concept_groups, per_group=config.plan.per_group, seed=config.plan.seed)
    except GroupsFileError as error:
        raise fail(str(error)) from None
    created, existing = add_planned(ManifestStore(config.workdir), specs)
    console.print(
        f"planned {len(specs)} scenes from {len(concept_groups)} groups: "
        f"[green]{created} new[/], {existing} already in {config.workdir}"
    )


def status(
    workdir: WorkdirOption,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify",
            help="Re-read every record and check the record index (indexes/records.json) against them.",
        ),
    ] = False,
) -> None:
    """Counts of records by state and by rejection reason (from the record index, which opens
    only records that changed since the last use)."""
    from rich.table import Table

    from manifests.store import ManifestStore

    store = ManifestStore(workdir)
    if verify:
        drifted = store.verify_index()
        if drifted:
            console.print(
                f"[red]record index disagreed with {len(drifted)} records[/] (rebuilt): {', '.join(drifted[:10])}"
            )
        else:
            console.print("record index verified against every record: no difference")
    counts = store.counts()
    states = Table(title=f"records in {workdir}")
    states.add_column("state")
    states.add_column("records", justify="right")
    for state, n in sorted(counts.by_state.items()):
        states.add_row(state, str(n))
    states.add_row("[bold]total[/]", f"[bold]{counts.total}[/]")
    console.print(states)
    if counts.by_rejection:
        reasons = Table(title="rejections")
        reasons.add_column("stage")
        reasons.add_column("reason")
        reasons.add_column("records", justify="right")
        for (stage, reason), n in sorted(counts.by_rejection.items()):
            reasons.add_row(stage, reason, str(n))
        console.print(reasons)
    for error in counts.unreadable:
        console.print(f"[yellow]unreadable:[/] {error}", soft_wrap=True)


def show(
    record_id: Annotated[str, typer.Argument(help="The record id (see `mcc status` / records/*.json).")],
    workdir: WorkdirOption,
    out: Annotated[Path, typer.Option(help="PNG file to write the picture to.")],
) -> None:
    """Draw a record's image with its boxes and mask overlays, one colour per concept, with a legend."""
    from manifests.overlay import draw_record
    from manifests.store import ManifestStore

    store = ManifestStore(workdir)
    try:
        record = store.get(record_id)
    except KeyError as error:
        raise fail(str(error.args[0])) from None
    if record.image is None:
        raise fail(
            f"record {record_id} has no image yet (state {record.state.value}); run the generators first"
        )
    picture = draw_record(record, store.open_image(record))
    out.parent.mkdir(parents=True, exist_ok=True)
    picture.save(out)
    console.print(f"wrote {out} ({picture.width}x{picture.height})")
