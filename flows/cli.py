"""The `mcc` command line: one app, each area's commands in `flows/commands/`."""

from __future__ import annotations

import typer

from flows.commands import annotate as annotation
from flows.commands import dataset, deploy, publish, rebuild
from flows.commands import generate as generation
from flows.commands import review as reviewing
from flows.commands import score as scoring

app = typer.Typer(
    name="mcc",
    help="Build and score the Multi-Concept Confusion (MCC) benchmark.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

app.command()(dataset.plan)
app.command()(dataset.status)
app.command()(dataset.show)
app.command()(generation.generate)
app.command()(generation.scrape)
app.command()(annotation.annotate)
app.command()(publish.publish)
app.command()(scoring.score)
app.command()(scoring.sweep)
app.command()(rebuild.rebuild)
app.command()(deploy.deploy)
app.add_typer(reviewing.labelstudio_app, name="labelstudio")
app.add_typer(reviewing.review_app, name="review")

if __name__ == "__main__":
    app()
