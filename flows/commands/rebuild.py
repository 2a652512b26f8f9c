"""`mcc rebuild`: the rebuild-dataset flow run directly, without a Prefect server or worker."""

from __future__ import annotations

from typing import Annotated

import typer

from flows.commands.common import console, fail


def rebuild(
    profile: Annotated[str, typer.Option(help="smoke, full, or the path of a profile YAML file.")] = "smoke",
    workdir: Annotated[
        str | None, typer.Option("--workdir", "-w", help="Override the profile's work dir.")
    ] = None,
) -> None:
    """Plan, generate, scrape, localise, segment, gate and push to review, as the flow does.

    Runs in Prefect's local mode (a temporary API in this process unless PREFECT_API_URL
    points at a server), so the run, its tasks and artifacts show up like any other.
    """
    from flows.config import load_profile
    from flows.pipeline import rebuild_dataset

    try:
        config = load_profile(profile, **({"workdir": workdir} if workdir else {}))
    except ValueError as error:
        raise fail(str(error)) from None
    result = rebuild_dataset(config)
    console.print(f"rebuild of {config.workdir} done: {result['states']}")
