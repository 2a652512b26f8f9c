"""`mcc generate` (FLUX.1 images of planned scenes) and `mcc scrape` (images from the web)."""

from __future__ import annotations

import time
from collections import Counter
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from flows.commands.common import WorkdirOption, console, fail
from manifests import GeneratedSource, GroupsFileError, ManifestStore, Record, State, load_groups


class _Counter:
    """Counts finished records for the progress bar: done, failed, rate."""

    def __init__(self, progress: Progress, task):
        self.progress, self.task = progress, task
        self.ok = self.failed = 0
        self.started = time.monotonic()

    def __call__(self, record: Record) -> None:
        if record.state == State.rejected:
            self.failed += 1
        else:
            self.ok += 1
        rate = (self.ok + self.failed) / max(time.monotonic() - self.started, 1e-9)
        self.progress.update(self.task, advance=1, ok=self.ok, failed=self.failed, rate=f"{rate:.1f}")


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("[green]{task.fields[ok]} done[/] [red]{task.fields[failed]} failed[/]"),
        TextColumn("{task.fields[rate]}/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )


def _summary(title: str, records: list[Record], stage: str, extra: dict[str, int] | None = None) -> None:
    finished = [r for r in records if r.history and r.history[-1].stage == stage]
    table = Table(title=title)
    table.add_column("outcome")
    table.add_column("records", justify="right")
    table.add_row("[green]stored[/]", str(sum(r.state == State.generated for r in finished)))
    reasons = Counter(r.rejection.reason for r in finished if r.state == State.rejected and r.rejection)
    for reason, n in sorted(reasons.items()):
        table.add_row(f"[red]rejected: {reason}[/]", str(n))
    for label, n in (extra or {}).items():
        table.add_row(label, str(n))
    console.print(table)


def generate(
    workdir: WorkdirOption,
    model: Annotated[
        str, typer.Option(help="Hub repo id, local folder, or 'tiny' (offline random miniature).")
    ] = ("black-forest-labs/FLUX.1-dev"),
    revision: Annotated[str | None, typer.Option(help="Hub revision (branch, tag or commit).")] = None,
    steps: Annotated[int, typer.Option(help="Denoising steps.", min=1)] = 28,
    guidance: Annotated[float, typer.Option(help="FLUX guidance (distilled guidance scale).")] = 3.5,
    size: Annotated[
        int | None, typer.Option(help="Image side in pixels, a multiple of 16 (default 1024; 128 for tiny).")
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="cuda, cuda:1, cpu (default: cuda when available).")
    ] = None,
    dtype: Annotated[
        str | None, typer.Option(help="bfloat16 (default), float16 or float32 (tiny: float32).")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Images per pipeline call.", min=1)] = 1,
    limit: Annotated[int | None, typer.Option(help="Generate at most this many records.", min=1)] = None,
    group: Annotated[list[str] | None, typer.Option(help="Only these group ids (repeatable).")] = None,
    cpu_offload: Annotated[
        bool, typer.Option(help="Keep only the active sub-model on the GPU (24 GB cards).")
    ] = False,
    vae_tiling: Annotated[bool, typer.Option(help="Decode the VAE in tiles (less memory).")] = False,
) -> None:
    """Generate the images of planned scenes with FLUX.1 (records already generated are skipped)."""
    store = ManifestStore(workdir)
    records = [
        r
        for r in store.iter(State.planned)
        if isinstance(r.source, GeneratedSource) and (not group or r.group in group)
    ]
    if limit is not None:
        records = records[:limit]
    if not records:
        console.print(f"nothing to generate in {workdir}: no planned scenes (run `mcc plan` first)")
        return
    from generators.flux import FluxGenerator

    try:
        generator = FluxGenerator(
            model=model,
            revision=revision,
            device=device,
            dtype=dtype,
            steps=steps,
            guidance=guidance,
            size=size,
            batch_size=batch_size,
            cpu_offload=cpu_offload,
            vae_tiling=vae_tiling,
        )
    except (RuntimeError, ValueError) as error:
        raise fail(str(error)) from None
    with _progress() as progress:
        task = progress.add_task("generate", total=len(records), ok=0, failed=0, rate="0.0")
        generator.generate(records, store, progress=_Counter(progress, task))
    _summary(
        f"generate with {model} ({generator.width}x{generator.height}, {steps} steps)", records, "generate"
    )


class SearchService(StrEnum):
    openverse = "openverse"
    wikimedia = "wikimedia"


def scrape(
    workdir: WorkdirOption,
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
    per_group: Annotated[int, typer.Option(help="Candidates to take per group from the API.", min=1)] = 20,
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
        bool, typer.Option(help="Allow loopback/private/link-local addresses (local test servers only).")
    ] = False,
    allow_unknown_licence: Annotated[
        bool, typer.Option(help="Keep images whose licence is not given.")
    ] = False,
    licence: Annotated[
        list[str] | None,
        typer.Option(
            help="Allowed licences, replacing the default cc0, public-domain, cc-by, cc-by-sa (repeatable)."
        ),
    ] = None,
    min_side: Annotated[int, typer.Option(help="Smallest accepted shorter side, pixels.", min=1)] = 512,
    concurrency: Annotated[int, typer.Option(help="Downloads in flight (all hosts).", min=1)] = 32,
    per_host_connections: Annotated[int, typer.Option(help="Downloads in flight to one host.", min=1)] = 8,
    rate: Annotated[float, typer.Option(help="Requests per second per host (0 = no limit).", min=0)] = 5.0,
    timeout: Annotated[float, typer.Option(help="Read timeout, seconds.", min=0.1)] = 20.0,
    retries: Annotated[int, typer.Option(help="Retries after a 5xx or a timeout.", min=0)] = 2,
    max_mb: Annotated[float, typer.Option(help="Largest download, MiB.", min=0.01)] = 20.0,
    keep_original_bytes: Annotated[
        bool,
        typer.Option(
            "--keep-original-bytes/--reencode-png",
            help="Store RGB JPEG/PNG/WebP files as downloaded (JPEG metadata removed), or re-encode every image "
            "to PNG.",
        ),
    ] = True,
    retry_failed: Annotated[
        bool, typer.Option(help="Try again URLs rejected for a timeout, HTTP or connection error.")
    ] = False,
    contact: Annotated[
        str | None,
        typer.Option(envvar="MCC_SCRAPER_CONTACT", help="Contact (e-mail or URL) added to the User-Agent."),
    ] = None,
) -> None:
    """Download web images into the store: one record per URL, stored or rejected with a reason."""
    from generators.download import DownloadConfig, default_user_agent
    from generators.licences import DEFAULT_ALLOWED_LICENCES, licence_codes
    from generators.sources import (
        OpenverseSource,
        SourceError,
        UrlListError,
        WikimediaCommonsSource,
        read_url_list,
    )
    from generators.web import ScrapeConfig, WebScraper, plan_web_records

    if (urls is None) == (source is None):
        raise fail("give exactly one of --urls FILE or --source openverse|wikimedia")
    try:
        groups = {g.id: g for g in load_groups(groups_file)}
    except GroupsFileError as error:
        raise fail(str(error)) from None
    unknown = [g for g in group or [] if g not in groups]
    if unknown:
        raise fail(f"unknown group id(s) {unknown}; see the groups file (manifests/groups.yaml)")
    try:
        allowed = licence_codes(licence) if licence else DEFAULT_ALLOWED_LICENCES
    except ValueError as error:
        raise fail(str(error)) from None
    user_agent = default_user_agent(contact)

    extra: dict[str, int] = {}
    try:
        if urls is not None:
            if group and len(group) > 1:
                raise fail("with --urls, --group gives the one group of rows without a group column")
            url_list = read_url_list(urls, set(groups), default_group=group[0] if group else None)
            candidates = url_list.candidates
            for line, why in url_list.skipped[:10]:
                console.print(f"[yellow]skipped {urls}:{line}[/] {why}")
            if url_list.skipped:
                extra["skipped rows of the URL list"] = len(url_list.skipped)
        else:
            if source == SearchService.openverse:
                searcher = OpenverseSource(
                    base_url=api_url or "https://api.openverse.org",
                    token=openverse_token,
                    licences=allowed,
                    user_agent=user_agent,
                    min_side=min_side,
                )
            else:
                if not contact:
                    console.print(
                        "[yellow]Wikimedia asks API clients for contact details in the User-Agent: "
                        "pass --contact EMAIL (or set MCC_SCRAPER_CONTACT)[/]"
                    )
                searcher = WikimediaCommonsSource(
                    api_url=api_url or "https://commons.wikimedia.org/w/api.php",
                    user_agent=user_agent,
                    min_side=min_side,
                )
            candidates = []
            for group_id in group or list(groups):
                found = searcher.search(groups[group_id], per_group, query)
                console.print(f"{searcher.name}: {len(found)} candidates for {group_id}")
                candidates.extend(found)
    except (UrlListError, SourceError) as error:
        raise fail(str(error)) from None

    store = ManifestStore(workdir)
    try:
        records, skipped = plan_web_records(candidates, groups, store, retry_transient=retry_failed)
    except ValueError as error:
        raise fail(str(error)) from None
    if skipped:
        extra["already in the store (skipped)"] = len(skipped)
    try:
        config = ScrapeConfig(
            download=DownloadConfig(
                user_agent=user_agent,
                read_timeout=timeout,
                retries=retries,
                max_bytes=int(max_mb * 2**20),
                per_host_rate=rate,
                per_host_connections=per_host_connections,
                allow_private_networks=allow_private_networks,
            ),
            concurrency=concurrency,
            allowed_licences=allowed,
            allow_unknown_licence=allow_unknown_licence,
            min_side=min_side,
            keep_original_bytes=keep_original_bytes,
        )
    except ValueError as error:
        raise fail(str(error)) from None
    if records:
        with _progress() as progress:
            task = progress.add_task("scrape", total=len(records), ok=0, failed=0, rate="0.0")
            WebScraper(config).scrape(records, store, progress=_Counter(progress, task))
    _summary(f"scrape into {workdir}", records, "scrape", extra)
