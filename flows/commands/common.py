"""Options and output shared by every `mcc` command.

Commands that run a stage build the one configuration (``flows.config.PipelineConfig``)
from ``--profile``, their own flags and ``--set``: each command's ``FLAGS`` table says
which field of the profile each flag sets, so a flag and a profile key are the same thing.
Nothing heavy is imported here: `mcc --help` stays fast.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True)

WorkdirOption = Annotated[
    str,
    typer.Option(
        "--workdir",
        "-w",
        help="The work dir: a local folder or an fsspec URL (s3://...).",
        envvar="MCC_WORKDIR",
    ),
]
ProfileOption = Annotated[
    str | None,
    typer.Option(
        "--profile",
        help="smoke, full or a profile YAML file; the flags given and --set override it "
        "(default: the built-in defaults).",
    ),
]
SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        help="Override any profile field: section.field=value, the value as YAML "
        "(e.g. --set quality.min_area_fraction=0.01; repeatable).",
    ),
]

Flag = str | tuple[str, ...] | tuple[str, Callable[[Any], Any]]
"""Where a flag lands in the profile: a dotted path, several paths, or (path, convert)."""


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``message`` as an error and return the exit to raise."""
    err_console.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)


def flag_values(table: dict[str, Flag], values: dict[str, Any]) -> dict[str, Any]:
    """``{profile path: value}`` of the flags in ``table`` (a command's ``FLAGS``) from its arguments."""
    out: dict[str, Any] = {}
    for name, target in table.items():
        value = values[name]
        if isinstance(target, str):
            out[target] = value
        elif len(target) == 2 and callable(target[1]):
            out[target[0]] = None if value is None else target[1](value)
        else:
            out.update({path: value for path in target})
    return out


def load_config(profile: str | None, table: dict[str, Flag], values: dict[str, Any], sets: list[str] | None):
    """The ``PipelineConfig`` of a command: ``profile``, then its flags (``table``), then ``--set``; exits on errors."""
    from flows.config import cli_config

    try:
        return cli_config(profile, flag_values(table, values), sets)
    except ValueError as error:
        raise fail(str(error)) from None


class StageProgress:
    """A rich progress bar for ``manifests.stage.run_stage``: records stored, done / failed, rate."""

    def __init__(self, description: str):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("[green]{task.fields[ok]} done[/] [red]{task.fields[failed]} failed[/]"),
            TextColumn("{task.fields[rate]}/s"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("[yellow]{task.fields[detail]}"),
            console=console,
        )
        self.task = self.progress.add_task(description, total=None, ok=0, failed=0, rate="0.0", detail="")
        self.ok = self.failed = 0
        self.started = time.monotonic()
        self.detail = None

    def show_detail(self, describe) -> None:
        """Show ``describe()`` after the bar, refreshed with each record (the scraper: which
        per-host limit binds)."""
        self.detail = describe

    def __enter__(self) -> StageProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def start(self, total: int) -> None:
        self.progress.update(self.task, total=total)
        self.started = time.monotonic()

    def __call__(self, record) -> None:
        if record.state.value == "rejected":
            self.failed += 1
        else:
            self.ok += 1
        rate = (self.ok + self.failed) / max(time.monotonic() - self.started, 1e-9)
        detail = self.detail() if self.detail is not None else ""
        self.progress.update(
            self.task, advance=1, ok=self.ok, failed=self.failed, rate=f"{rate:.1f}", detail=detail
        )
