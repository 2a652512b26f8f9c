"""`mcc rebuild`: the rebuild-dataset flow run directly, without a Prefect server or worker."""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path
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
    with _prefect_api():
        result = rebuild_dataset(config)
    console.print(f"rebuild of {config.workdir} done: {result['states']}")


@contextlib.contextmanager
def _prefect_api():
    """``PREFECT_API_URL`` if set; else a local Prefect server for this command only, which ends
    with it however it ends (Prefect's own temporary server would outlive a ``kill -9``)."""
    import os

    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    from flows.commands.deploy import start_local_server

    if os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value():
        yield
        return
    try:
        api_url, process, _ = start_local_server(Path(PREFECT_HOME.value()), outlive=False)
    except RuntimeError as error:
        raise fail(str(error)) from None
    try:
        with temporary_settings({PREFECT_API_URL: api_url}):
            yield
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
