"""`mcc labelstudio start|stop|status` and `mcc review push|pull|stats`: human review in Label Studio.

The URL and token come from --url / --token or LABEL_STUDIO_URL / LABEL_STUDIO_API_KEY;
only `mcc labelstudio start` ever prints the token.
"""

from __future__ import annotations

import json
import logging
from typing import Annotated

import typer
from rich.table import Table

from annotators import labelstudio_server as server
from annotators.review_stats import STATS_PATH, write_stats
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
from manifests import ManifestStore

labelstudio_app = typer.Typer(help="Run the local Label Studio server of a work dir.", no_args_is_help=True)
review_app = typer.Typer(help="Human review of the masks in Label Studio.", no_args_is_help=True)

UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        envvar="LABEL_STUDIO_URL",
        show_envvar=True,
        help="Label Studio URL (printed by `mcc labelstudio start`; default http://127.0.0.1:8080).",
    ),
]
TokenOption = Annotated[
    str,
    typer.Option(
        "--token",
        envvar="LABEL_STUDIO_API_KEY",
        show_envvar=True,
        show_default=False,
        help="Label Studio API token.",
    ),
]
ProjectOption = Annotated[
    str | None, typer.Option("--project", help="Label Studio project title (default 'MCC review').")
]


# -- mcc labelstudio ---------------------------------------------------------------------------------
@labelstudio_app.command("start")
def labelstudio_start(
    workdir: WorkdirOption,
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1 (0: any free port).")] = server.DEFAULT_PORT,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for /health.")] = server.BOOT_TIMEOUT_S,
) -> None:
    """Create the Label Studio venv if needed, start the server on 127.0.0.1, print URL, login and token."""
    try:
        info = server.start(
            workdir,
            port=port or server.free_port(),
            timeout=timeout,
            log=lambda m: console.print(m, style="dim", highlight=False, soft_wrap=True),
        )
    except server.LabelStudioServerError as error:
        raise fail(str(error)) from None
    print(f"url: {info.url}")
    print(f"login: {info.username}")
    print(f"password: {info.password}")
    print(f"token: {info.token}")
    print(f"pid: {info.pid}")
    print(f"export LABEL_STUDIO_URL={info.url} LABEL_STUDIO_API_KEY={info.token}")  # paste into the shell
    console.print(
        f"stop with `mcc labelstudio stop --workdir {workdir}`", style="dim", highlight=False, soft_wrap=True
    )


@labelstudio_app.command("stop")
def labelstudio_stop(workdir: WorkdirOption) -> None:
    """Stop the server that `mcc labelstudio start` started for this work dir (no other process)."""
    try:
        pid = server.stop(workdir)
    except server.LabelStudioServerError as error:
        raise fail(str(error)) from None
    console.print(
        f"stopped Label Studio (pid {pid})" if pid else "no Label Studio server runs for this work dir"
    )


@labelstudio_app.command("status")
def labelstudio_status(workdir: WorkdirOption) -> None:
    """Whether the work dir's server runs, where, and whether /health answers (exit 1 if it does not run)."""
    try:
        state = server.status(workdir)
    except server.LabelStudioServerError as error:
        raise fail(str(error)) from None
    if not state["running"]:
        console.print("Label Studio: not running")
        raise typer.Exit(1)
    health = "healthy" if state["healthy"] else "not answering /health"
    print(f"url: {state['url']}")
    console.print(f"Label Studio: running, pid {state['pid']}, {health}")


# -- mcc review --------------------------------------------------------------------------------------
def _quiet_http_logs() -> None:
    for name in ("httpx", "httpcore"):  # their INFO lines would show URLs with query strings
        logging.getLogger(name).setLevel(logging.WARNING)


REVIEW_FLAGS: dict[str, Flag] = {
    "workdir": "workdir",
    "url": "review.url",
    "project": "review.project",
    "batch_size": "review.batch_size",
    "images": "review.images",
    "limit": "review.limit",
    "order": "review.order",
    "annotators": "review.annotators",
}
PULL_FLAGS: dict[str, Flag] = {
    "workdir": "workdir",
    "url": "review.url",
    "project": "review.project",
    "agreement_iou": "review.agreement_iou",
}
SECRET_FLAGS = {"token": "a secret: from --token or LABEL_STUDIO_API_KEY, never a profile"}


def _review_config(profile, table, values, sets):
    config = load_config(profile, table, values, sets)
    url = config.review.url or "http://127.0.0.1:8080"
    return config, url


@review_app.command("push")
def review_push(
    workdir: WorkdirOption,
    profile: ProfileOption = None,
    set_: SetOption = None,
    url: UrlOption = None,
    token: TokenOption = "",
    project: ProjectOption = None,
    batch_size: Annotated[
        int | None, typer.Option(min=1, help="Tasks per import request (default 100).")
    ] = None,
    images: Annotated[
        str | None, typer.Option(help="auto (default) | local (server reads the work dir) | upload.")
    ] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Push at most this many records.")] = None,
    order: Annotated[
        str | None,
        typer.Option(
            help="uncertainty (default: lowest SAM score first) | id: which records become tasks first."
        ),
    ] = None,
    annotators: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=10,
            help="Annotations per task (default: 1 for a new project, an existing one keeps its own); "
            "with more than one, pull decides a task when that many agree.",
        ),
    ] = None,
) -> None:
    """Create one Label Studio task per segmented record (machine masks as pre-annotations)."""
    from annotators.review import LabelStudioUnavailable, push

    _quiet_http_logs()
    config, url = _review_config(profile, REVIEW_FLAGS, locals(), set_)
    c = config.review
    store = ManifestStore(config.workdir)
    try:
        with StageProgress("push") as progress:
            report = push(
                store,
                url=url,
                token=token,
                project=c.project,
                batch_size=c.batch_size,
                images=c.images,
                limit=c.limit,
                order=c.order,
                annotators=c.annotators,
                progress=progress,
            )
    except (LabelStudioUnavailable, ValueError) as error:
        raise fail(str(error)) from None
    if report.project_id is None:
        console.print(f"nothing to push: no segmented record in {config.workdir}")
        return
    console.print(
        f"project {c.project!r} (id {report.project_id}): {report.pushed} new tasks, "
        f"{report.adopted} adopted, images via {report.images}; open {url.rstrip('/')}/projects/"
        f"{report.project_id}/data",
        soft_wrap=True,
        highlight=False,
    )


@review_app.command("pull")
def review_pull(
    workdir: WorkdirOption,
    profile: ProfileOption = None,
    set_: SetOption = None,
    url: UrlOption = None,
    token: TokenOption = "",
    project: ProjectOption = None,
    agreement_iou: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Several annotators per task: the mask IoU at which two agree (default 0.9); a task whose "
            "annotators disagree is sent back for one more annotation.",
        ),
    ] = None,
) -> None:
    """Bring submitted reviews back: reviewed (accepted/edited masks) or rejected records."""
    from annotators.review import LabelStudioUnavailable, pull

    _quiet_http_logs()
    config, url = _review_config(profile, PULL_FLAGS, locals(), set_)
    store = ManifestStore(config.workdir)
    try:
        with StageProgress("pull") as progress:
            report = pull(
                store,
                url=url,
                token=token,
                project=config.review.project,
                agreement_iou=config.review.agreement_iou,
                progress=progress,
            )
    except LabelStudioUnavailable as error:
        raise fail(str(error)) from None
    for warning in report.warnings:
        console.print(f"[yellow]warning:[/] {warning}")
    console.print(
        f"reviewed {report.reviewed}, rejected {report.rejected}, still in review {report.pending}, "
        f"back to segmented (task deleted) {report.returned}"
        + (f", annotators disagree (sent back for one more) {report.disagreed}" if report.disagreed else ""),
        soft_wrap=True,
        highlight=False,
    )


@review_app.command("stats")
def review_stats(
    workdir: WorkdirOption,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the JSON document instead of tables.")
    ] = False,
) -> None:
    """Review statistics (accepted unedited, IoU per group and concept, box edits, time per task, per annotator,
    rejection reasons); kept in reviews/stats.json."""
    stats = write_stats(ManifestStore(workdir))
    if as_json:
        print(json.dumps(stats, indent=1, ensure_ascii=False))
        return
    records, masks = stats["records"], stats["masks"]
    frac = masks["fraction_accepted_unedited"]
    console.print(
        f"records: {records['reviewed']} reviewed, {records['rejected_in_review']} rejected in review, "
        f"{records['in_review']} in review"
    )
    console.print(
        f"masks: {masks['reviewed']} reviewed, {masks['accepted_unedited']} accepted unedited, "
        f"{masks['edited']} edited" + (f" ({100 * frac:.1f}% accepted unedited)" if frac is not None else "")
    )
    if stats["iou_by_group"]:
        table = Table(title="machine vs reviewed mask IoU by concept group")
        for column in ("group", "masks", "mean IoU", "min IoU"):
            table.add_column(column, justify="left" if column == "group" else "right")
        for group, row in stats["iou_by_group"].items():
            table.add_row(group, str(row["masks"]), f"{row['mean_iou']:.3f}", f"{row['min_iou']:.3f}")
        console.print(table)
    boxes, timing = stats["boxes"], stats["time_per_task"]
    console.print(
        f"boxes: {boxes['concepts_with_box_edits']} of {boxes['concepts_reviewed']} concepts edited"
    )
    if timing["tasks"]:
        console.print(
            f"time per task: mean {timing['mean_seconds']:.1f} s, median {timing['median_seconds']:.1f} s "
            f"({timing['tasks']} tasks timed by Label Studio)"
        )
    if stats["iou_by_concept"]:
        table = Table(title="machine vs reviewed mask IoU by concept")
        for column in ("concept", "masks", "mean IoU", "min IoU"):
            table.add_column(column, justify="left" if column == "concept" else "right")
        for concept, row in stats["iou_by_concept"].items():
            table.add_row(concept, str(row["masks"]), f"{row['mean_iou']:.3f}", f"{row['min_iou']:.3f}")
        console.print(table)
    if stats["annotators"]:
        table = Table(title="per annotator")
        for column in ("annotator", "reviewed", "rejected", "masks edited", "boxes edited", "mean s"):
            table.add_column(column, justify="left" if column == "annotator" else "right")
        for who, row in stats["annotators"].items():
            seconds = "–" if row["mean_seconds"] is None else f"{row['mean_seconds']:.1f}"
            table.add_row(who, str(row["reviewed"]), str(row["rejected"]), str(row["masks_edited"]),
                          str(row["boxes_edited"]), seconds)  # fmt: skip
        console.print(table)
    agree = stats["inter_annotator"]
    if agree["records_decided_by_agreement"] or agree["records_with_disagreement"]:
        console.print(
            f"several annotators: {agree['records_decided_by_agreement']} records decided by agreement, "
            f"{agree['records_with_disagreement']} with a disagreement "
            f"({agree['waiting_for_another_annotation']} waiting for one more annotation)"
        )
        for key, title in (("iou_by_group", "concept group"), ("iou_by_concept", "concept")):
            if agree[key]:
                table = Table(title=f"inter-annotator mask IoU (lowest pair) by {title}")
                for column in (title, "masks", "mean IoU", "min IoU"):
                    table.add_column(column, justify="left" if column == title else "right")
                for name, row in agree[key].items():
                    table.add_row(name, str(row["masks"]), f"{row['mean_iou']:.3f}", f"{row['min_iou']:.3f}")
                console.print(table)
    if stats["rejection_reasons"]:
        table = Table(title="rejected in review")
        table.add_column("reason")
        table.add_column("records", justify="right")
        for reason, n in stats["rejection_reasons"].items():
            table.add_row(reason, str(n))
        console.print(table)
    console.print(f"written to {workdir.rstrip('/')}/{STATS_PATH}", style="dim", highlight=False)
