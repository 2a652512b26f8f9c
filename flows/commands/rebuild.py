"""`mcc rebuild`: the rebuild-dataset flow run directly, without a Prefect server or worker."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows.commands.common import console, fail
from flows.commands.deploy import own_prefect_api


def rebuild(
    profile: Annotated[str, typer.Option(help="smoke, full, or the path of a profile YAML file.")] = "smoke",
    workdir: Annotated[
        str | None, typer.Option("--workdir", "-w", help="Override the profile's work dir.")
    ] = None,
) -> None:
    """Plan, generate, scrape, localise, segment, gate and push to review, as the flow does.

    Runs against PREFECT_API_URL, or a local Prefect server started for this command and
    stopped with it, so the run, its tasks and artifacts show up like any other. A relative
    work dir is relative to the current folder.
    """
    from flows.config import load_profile
    from flows.pipeline import rebuild_dataset

    try:
        config = load_profile(profile, **({"workdir": workdir} if workdir else {}))
    except ValueError as error:
        raise fail(str(error)) from None
    if (
        "://" not in config.workdir
    ):  # a flow run needs an absolute one; here it is relative to the shell's folder
        config = config.model_copy(update={"workdir": str(Path(config.workdir).resolve())})
    with own_prefect_api():
        result = rebuild_dataset(config)
    console.print(f"rebuild of {config.workdir} done: {result['states']}")
