"""`mcc generate` (images of planned scenes) and `mcc scrape` (images from the web).

Both build the one configuration (``--profile``, then the flags, then ``--set``) and run
their stage through ``manifests.stage.run_stage``.
"""

from __future__ import annotations

from collections import Counter
from enum import StrEnum
from pathlib import Path
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


def _summary(title: str, records, stage: str, extra: dict[str, int] | None = None) -> None:
    from rich.table import Table

    finished = [r for r in records if r.history and r.history[-1].stage == stage]
    table = Table(title=title)
    table.add_column("outcome")
    table.add_column("records", justify="right")
    table.add_row("[green]stored[/]", str(sum(r.state.value == "generated" for r in finished)))
    reasons = Counter(r.rejection.reason for r in finished if r.state.value == "rejected" and r.rejection)
    for reason, n in sorted(reasons.items()):
        table.add_row(f"[red]rejected: {reason}[/]", str(n))
    for label, n in (extra or {}).items():
        table.add_row(label, str(n))
    console.print(table)


GENERATE_FLAGS: dict[str, Flag] = {
    "workdir": "workdir",
    "backend": "generate.backend",
    "model": "generate.model",
    "revision": "generate.revision",
    "steps": "generate.steps",
    "guidance": "generate.guidance",
    "size": "generate.size",
    "device": "generate.device",
    "dtype": "generate.dtype",
    "batch_size": "generate.batch_size",
    "limit": "generate.limit",
    "group": "generate.groups",
    "cpu_offload": "generate.cpu_offload",
    "vae_tiling": "generate.vae_tiling",
}


def generate(
    workdir: WorkdirOption,
    profile: ProfileOption = None,
    set_: SetOption = None,
    backend: Annotated[
        str | None,
        typer.Option(help="Generator backend: flux (default) or a registered / module:factory one."),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="Hub repo id, local folder, or 'tiny' (offline random miniature); default black-forest-labs/FLUX.1-dev."
        ),
    ] = None,
    revision: Annotated[str | None, typer.Option(help="Hub revision (branch, tag or commit).")] = None,
    steps: Annotated[int | None, typer.Option(help="Denoising steps (default 28).", min=1)] = None,
    guidance: Annotated[
        float | None, typer.Option(help="FLUX guidance (distilled guidance scale; default 3.5).")
    ] = None,
    size: Annotated[
        int | None, typer.Option(help="Image side in pixels, a multiple of 16 (default 1024; 128 for tiny).")
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="cuda, cuda:1, cpu (default: cuda when available).")
    ] = None,
    dtype: Annotated[
        str | None, typer.Option(help="bfloat16 (default), float16 or float32 (tiny: float32).")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Images per pipeline call (default 1).", min=1)
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Generate at most this many records.", min=1)] = None,
    group: Annotated[list[str] | None, typer.Option(help="Only these group ids (repeatable).")] = None,
    cpu_offload: Annotated[
        bool | None, typer.Option(help="Keep only the active sub-model on the GPU (24 GB cards).")
    ] = None,
    vae_tiling: Annotated[bool | None, typer.Option(help="Decode the VAE in tiles (less memory).")] = None,
) -> None:
    """Generate the images of planned scenes (records already generated are skipped)."""
    from manifests import GeneratedSource, ManifestStore, State
    from manifests.registry import GENERATORS
    from manifests.stage import run_stage, select

    config = load_config(profile, GENERATE_FLAGS, locals(), set_)
    c = config.generate
    store = ManifestStore(config.workdir)
    records = select(
        store,
        (State.planned,),
        lambda r: isinstance(r.source, GeneratedSource) and (not c.groups or r.group in c.groups),
    )[: c.limit]
    if not records:
        console.print(f"nothing to generate in {config.workdir}: no planned scenes (run `mcc plan` first)")
        return
    try:
        generator = GENERATORS.build(c)
    except (RuntimeError, ValueError) as error:
        raise fail(str(error)) from None
    with StageProgress("generate") as progress:
        run = run_stage(generator, store, records, progress=progress)
    size = f"{generator.width}x{generator.height}, " if hasattr(generator, "width") else ""
    _summary(f"generate with {c.model} ({size}{c.steps} steps)", run.records, "generate")


class SearchService(StrEnum):
    openverse = "openverse"
    wikimedia = "wikimedia"


def _licences(values: list[str]) -> list[str]:
    from generators.licences import licence_codes

    try:
        return sorted(licence_codes(values))
    except ValueError as error:
        raise fail(str(error)) from None


SCRAPE_FLAGS: dict[str, Flag] = {
    "workdir": "workdir",
    "urls": ("scrape.urls", str),
    "source": ("scrape.source", str),
    "group": "scrape.groups",
    "per_group": "scrape.per_group",
    "query": "scrape.query",
    "api_url": "scrape.api_url",
    "groups_file": ("plan.groups_file", str),
    "allow_private_networks": "scrape.download.allow_private_networks",
    "allow_unknown_licence": "scrape.allow_unknown_licence",
    "licence": ("scrape.allowed_licences", _licences),
    "min_side": "scrape.min_side",
    "concurrency": "scrape.concurrency",
    "per_host_connections": "scrape.download.per_host_connections",
    "rate": "scrape.download.per_host_rate",
    "timeout": "scrape.download.read_timeout",
    "retries": "scrape.download.retries",
    "max_mb": ("scrape.download.max_bytes", lambda mb: int(mb * 2**20)),
    "keep_original_bytes": "scrape.keep_original_bytes",
    "retry_failed": "scrape.retry_failed",
    "contact": "scrape.contact",
}
SECRET_FLAGS = {"openverse_token": "a secret: from --openverse-token or MCC_OPENVERSE_TOKEN, never a profile"}


def scrape(
    workdir: WorkdirOption,
    profile: ProfileOption = None,
    set_: SetOption = None,
    urls: Annotated[
        Path | None,
        typer.Option(help="URL list: CSV (url,group,licence,attribution,page_url), TSV, JSONL or Parquet."),
    ] = None,
    source: Annotated[
        SearchService | None, typer.Option(help="Search an image API instead of a URL list.")
    ] = None,
    group: Annotated[
        list[str] | None,
        typer.Option(
            help="Group ids to search for (repeatable; default all). "
            "With --urls: the group of rows without one."
        ),
    ] = None,
    per_group: Annotated[
        int | None, typer.Option(help="Candidates to take per group from the API (default 20).", min=1)
    ] = None,
    query: Annotated[
        str | None, typer.Option(help="Search text (default: the group's concept names).")
    ] = None,
    api_url: Annotated[
        str | None, typer.Option(help="Base URL of the API (a mirror or a test server).")
    ] = None,
    openverse_token: Annotated[
        str | None, typer.Option(envvar="MCC_OPENVERSE_TOKEN", help="Openverse API token (higher limits).")
    ] = None,
    groups_file: Annotated[
        Path | None, typer.Option("--groups", help="Groups YAML (default: packaged).")
    ] = None,
    allow_private_networks: Annotated[
        bool | None,
        typer.Option(help="Allow loopback/private/link-local addresses (local test servers only)."),
    ] = None,
    allow_unknown_licence: Annotated[
        bool | None, typer.Option(help="Keep images whose licence is not given.")
    ] = None,
    licence: Annotated[
        list[str] | None,
        typer.Option(
            help="Allowed licences, replacing the default cc0, public-domain, cc-by, cc-by-sa (repeatable)."
        ),
    ] = None,
    min_side: Annotated[
        int | None, typer.Option(help="Smallest accepted shorter side, pixels (default 512).", min=1)
    ] = None,
    concurrency: Annotated[
        int | None, typer.Option(help="Downloads in flight, all hosts (default 32).", min=1)
    ] = None,
    per_host_connections: Annotated[
        int | None, typer.Option(help="Downloads in flight to one host (default 8).", min=1)
    ] = None,
    rate: Annotated[
        float | None, typer.Option(help="Requests per second per host (0 = no limit; default 5).", min=0)
    ] = None,
    timeout: Annotated[
        float | None, typer.Option(help="Read timeout, seconds (default 20).", min=0.1)
    ] = None,
    retries: Annotated[
        int | None, typer.Option(help="Retries after a 5xx or a timeout (default 2).", min=0)
    ] = None,
    max_mb: Annotated[
        float | None, typer.Option(help="Largest download, MiB (default 20).", min=0.01)
    ] = None,
    keep_original_bytes: Annotated[
        bool | None,
        typer.Option(
            "--keep-original-bytes/--reencode-png",
            help="Store RGB JPEG/PNG/WebP files as downloaded (JPEG metadata removed; the default), or re-encode "
            "every image to PNG.",
        ),
    ] = None,
    retry_failed: Annotated[
        bool | None, typer.Option(help="Try again URLs rejected for a timeout, HTTP or connection error.")
    ] = None,
    contact: Annotated[
        str | None,
        typer.Option(envvar="MCC_SCRAPER_CONTACT", help="Contact (e-mail or URL) added to the User-Agent."),
    ] = None,
) -> None:
    """Download web images into the store: one record per URL, stored or rejected with a reason."""
    from generators.sources import SourceError, UrlListError
    from generators.web import scrape
    from manifests import GroupsFileError, ManifestStore

    config = load_config(profile, SCRAPE_FLAGS, locals(), set_)
    store = ManifestStore(config.workdir)
    try:
        with StageProgress("scrape") as progress:
            run = scrape(
                config.scrape,
                store,
                config.plan.groups_file,
                progress,
                openverse_token,
                log=lambda line: console.print(line, highlight=False, soft_wrap=True),
            )
    except (GroupsFileError, UrlListError, SourceError, ValueError) as error:
        raise fail(str(error)) from None
    extra: dict[str, int] = {}
    if run.skipped_rows:
        extra["skipped rows of the URL list"] = run.skipped_rows
    if run.already_stored:
        extra["already in the store (skipped)"] = run.already_stored
    _summary(f"scrape into {config.workdir}", run.records, "scrape", extra)
