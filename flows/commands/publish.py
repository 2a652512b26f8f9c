"""`mcc publish`: build the Hugging Face dataset folder (and COCO) from the manifest, optionally push it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows.commands.common import Flag, ProfileOption, SetOption, WorkdirOption, console, fail, load_config

PUBLISH_FLAGS: dict[str, Flag] = {
    "workdir": "workdir",
    "out": ("publish.out", str),
    "include_unreviewed": "publish.include_unreviewed",
    "version": "publish.version",
    "shard_size": "publish.shard_size",
    "validation_fraction": "publish.validation_fraction",
    "push": "publish.push",
    "tag": "publish.tag",
    "private": "publish.private",
}


def publish(
    workdir: WorkdirOption,
    profile: ProfileOption = None,
    set_: SetOption = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Folder to write the dataset to (Hub repository layout)."),
    ] = None,
    include_unreviewed: Annotated[
        bool | None,
        typer.Option(
            "--include-unreviewed/--reviewed-only",
            help="Also publish segmented / in-review records (machine masks), for offline runs.",
        ),
    ] = None,
    version: Annotated[
        str | None,
        typer.Option(help="Dataset version written into the card and manifest.json (default 0.1.0)."),
    ] = None,
    shard_size: Annotated[
        int | None, typer.Option(help="At most this many images per parquet shard (default 200).", min=1)
    ] = None,
    validation_fraction: Annotated[
        float | None,
        typer.Option(
            help="Share of the images in the validation split (default 0.2; 0: test only).", min=0.0, max=0.99
        ),
    ] = None,
    push: Annotated[
        str | None,
        typer.Option(
            "--push",
            help="Upload the folder to this Hub dataset repo (e.g. my-org/multi-concept-confusion); "
            "needs HF_TOKEN. Without it nothing leaves the machine.",
        ),
    ] = None,
    tag: Annotated[str | None, typer.Option(help="Tag of the pushed commit (default: v<version>).")] = None,
    private: Annotated[
        bool | None, typer.Option(help="Create the Hub repo as private if it does not exist.")
    ] = None,
) -> None:
    """Build the dataset folder: parquet shards with embedded images and masks, the dataset card, COCO, manifest.json."""
    from manifests.publish import PublishError, build_dataset, hub_token, push_dataset
    from manifests.publish.selection import REVIEWED_ONLY, WITH_UNREVIEWED
    from manifests.store import ManifestStore

    config = load_config(profile, PUBLISH_FLAGS, locals(), set_)
    c = config.publish
    out, push, version = Path(c.out), c.push, c.version
    if push is not None:
        try:
            hub_token()  # fail before the build, not after it
        except PublishError as error:
            raise fail(str(error)) from None
    include = WITH_UNREVIEWED if c.include_unreviewed else REVIEWED_ONLY
    try:
        summary = build_dataset(
            ManifestStore(config.workdir),
            out,
            include=include,
            version=version,
            shard_size=c.shard_size,
            repo_id=push,
            validation_fraction=c.validation_fraction,
        )
    except PublishError as error:
        raise fail(str(error)) from None
    print_summary(summary)
    if push is None:
        console.print(
            f"load it with: datasets.load_dataset({str(out)!r}, split='test')"
            + (" (tune on split='validation')" if "validation" in summary.rows_by_split else "")
        )
        return
    try:
        result = push_dataset(out, push, tag=c.tag or f"v{version}", private=c.private)
    except PublishError as error:
        raise fail(str(error)) from None
    except Exception as error:  # network and Hub errors: say what failed, keep the built folder
        raise fail(
            f"upload to {push} failed: {type(error).__name__}: {error}. The folder {out} is intact; "
            "run the same command again to retry.",
            code=1,
        ) from None
    console.print(
        f"pushed to https://huggingface.co/datasets/{result.repo_id} (commit {result.commit}, tag {result.tag})"
    )


def print_summary(summary) -> None:
    """The build summary (a ``manifests.publish.BuildSummary``): what was written, and every record left out."""
    from rich.table import Table

    table = Table(title=f"MCC {summary.version} in {summary.out_dir}")
    table.add_column("subset")
    table.add_column("images", justify="right")
    for name, n in summary.rows_by_subset.items():
        table.add_row(name, str(n))
    table.add_row("[bold]total[/]", f"[bold]{summary.rows}[/]")
    for split, n in summary.rows_by_split.items():
        table.add_row(f"split {split}", str(n))
    console.print(table)
    console.print(
        f"{summary.masks} masks, {len(summary.shards)} shard(s), {summary.folder_bytes / 1e6:.1f} MB, "
        f"{summary.seconds:.1f} s; admitted states: {', '.join(summary.include)}"
    )
    if summary.skipped:
        console.print("not admitted (by state): " + ", ".join(f"{s} {n}" for s, n in summary.skipped.items()))
    if not summary.excluded:
        console.print("excluded: 0")
        return
    excluded = Table(title=f"[yellow]excluded: {len(summary.excluded)} record(s)[/]")
    excluded.add_column("record")
    excluded.add_column("reason")
    excluded.add_column("detail")
    for e in summary.excluded:
        excluded.add_row(e.record_id, e.reason, e.detail)
    console.print(excluded)
    console.print(
        "excluded by reason: " + ", ".join(f"{r} {n}" for r, n in summary.excluded_by_reason.items())
    )
