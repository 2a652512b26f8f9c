"""Options and output shared by every `mcc` command."""

from __future__ import annotations

from typing import Annotated

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


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``message`` as an error and return the exit to raise."""
    err_console.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)
