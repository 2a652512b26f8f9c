"""The `mcc` command line: one app, each area's commands in `flows/commands/`."""

from __future__ import annotations

import typer

from flows.commands import dataset

app = typer.Typer(
    name="mcc",
    help="Build and score the Multi-Concept Confusion (MCC) benchmark.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

app.command()(dataset.plan)
app.command()(dataset.status)
app.command()(dataset.show)

if __name__ == "__main__":
    app()
