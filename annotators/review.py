"""Human review in Label Studio: push segmented records as tasks, pull the reviewed masks back.

``push(store, url=..., token=...)`` turns every ``segmented`` record into one Label Studio
task whose prediction holds the machine masks (one brush result per concept) and boxes
(one rectangle per box), and moves the record to ``in_review`` with ``record.review_task``
set. ``pull(store, url=..., token=...)`` reads the submitted annotations: verdict
``reject`` -> ``rejected`` (stage ``review``, the chosen reason's code, e.g. ``wrong_concept``, the comment in the detail); otherwise every
concept's reviewed mask replaces the machine mask, with review status ``accepted`` (IoU
with the machine mask >= 0.98) or ``edited``, and the record becomes ``reviewed``.

Both are idempotent and resumable: push skips records that already have a task (and
adopts a task that a crashed push created but did not record); pull only touches records
still ``in_review`` and writes each one as soon as it is done.

How the images reach Label Studio (``images=``):
- ``"local"``: the server serves the work dir itself (``mcc labelstudio start`` sets this
  up): push registers ``<workdir>/images`` as the project's local storage and the task
  points at ``/data/local-files/?d=images/<id>.png``. Nothing is copied.
- ``"upload"``: for a server that cannot see the work dir (another machine, another
  document root): every image is uploaded to the project once.
- ``"auto"`` (default): ``local`` if the work dir is a local folder and the server accepts
  it as local storage, else ``upload``.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

import httpx
import numpy as np
from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError

from annotators import labelstudio_format as fmt
from annotators.review_stats import STATS_PATH, compute_stats, stats_bytes, write_stats
from manifests.masks import decode_mask, encode_mask
from manifests.reasons import ReviewReason
from manifests.record import SAM_SCORE, Record, State
from manifests.stage import Output, Progress, run_stage, select
from manifests.store import ManifestStore

logger = logging.getLogger(__name__)

STAGE = "review"
DEFAULT_PROJECT = "MCC review"
ACCEPT_IOU = 0.98
MODEL_VERSION = "mcc-machine"
Images = Literal["auto", "local", "upload"]

__all__ = [
    "ReviewPush",
    "ReviewPull",
    "push",
    "pull",
    "PushReport",
    "PullReport",
    "LabelStudioUnavailable",
    "compute_stats",
    "write_stats",
]


class LabelStudioUnavailable(RuntimeError):
    """The server cannot be reached, or it rejects the token; nothing was changed."""


@dataclass
class PushReport:
    project_id: int | None  # None when there was nothing to push and no project yet
    pushed: int = 0  # new tasks created
    adopted: int = 0  # tasks found in the project for records that did not record them
    images: str = "local"
    task_ids: dict[str, int] = field(default_factory=dict)


@dataclass
class PullReport:
    project_id: int
    reviewed: int = 0
    rejected: int = 0
    pending: int = 0  # still in review: no submitted annotation yet
    returned: int = 0  # task deleted in Label Studio: back to segmented
    revised: int = 0  # decided earlier, applied again because the annotation was updated since
    disagreed: int = 0  # several annotators who disagree: the task was sent back for one more annotation
    warnings: list[str] = field(default_factory=list)


# -- connection ------------------------------------------------------------------------------------
def connect(url: str, token: str, *, timeout: float = 60.0) -> LabelStudio:
    """A client whose token has been checked; raises ``LabelStudioUnavailable`` with what to check."""
    if not url:
        raise LabelStudioUnavailable(
            "no Label Studio URL: pass --url or set LABEL_STUDIO_URL (`mcc labelstudio start` prints it)"
        )
    if not token:
        raise LabelStudioUnavailable(
            f"no API token for {url}: pass --token or set LABEL_STUDIO_API_KEY "
            "(`mcc labelstudio start` prints it)"
        )
    url = url.rstrip("/")
    client = LabelStudio(base_url=url, api_key=token, timeout=timeout)
    try:
        client.users.whoami()
    except (httpx.TransportError, OSError) as error:
        raise LabelStudioUnavailable(
            f"cannot reach Label Studio at {url} ({type(error).__name__}: {error}). Check that the server "
            "runs (`mcc labelstudio status --workdir DIR`) and that --url / LABEL_STUDIO_URL is right."
        ) from None
    except ApiError as error:
        if error.status_code in (401, 403):
            raise LabelStudioUnavailable(
                f"Label Studio at {url} rejected the API token (HTTP {error.status_code}). Check --token / "
                "LABEL_STUDIO_API_KEY: the token printed by `mcc labelstudio start`, or the legacy token / "
                "personal access token of your Label Studio account."
            ) from None
        raise LabelStudioUnavailable(
            f"Label Studio at {url} answered HTTP {error.status_code} to "
            f"/api/current-user/whoami: {error.body}"
        ) from None
    except Exception as error:  # e.g. an HTML page from something that is not Label Studio
        raise LabelStudioUnavailable(
            f"{url} does not answer like a Label Studio server ({type(error).__name__}: {error}); check "
            "--url / LABEL_STUDIO_URL."
        ) from None
    return client


def _find_project(client: LabelStudio, title: str) -> int | None:
    matches = sorted(p.id for p in client.projects.list(title=title, page_size=100) if p.title == title)
    if len(matches) > 1:
        logger.warning(
            "%d Label Studio projects are named %r; using the oldest, id %d", len(matches), title, matches[0]
        )
    return matches[0] if matches else None


# -- push ---------------------------------------------------------------------------------------
class ReviewPush:
    """The push stage (``manifests.stage``): ``segmented`` records without a task -> ``in_review``.

    On its first batch it finds or creates the project ``project``, registers the image
    folder (see the module docstring for ``images``) and lists the tasks already there;
    each batch is then imported as tasks with the machine masks and boxes as a prediction.
    A record whose task a crashed push created but did not record adopts that task, so
    pushing twice creates no duplicates.
    """

    name = STAGE
    accepts = (State.segmented,)

    def __init__(
        self,
        client: LabelStudio,
        url: str,
        token: str,
        project: str = DEFAULT_PROJECT,
        *,
        batch_size: int = 100,
        images: Images = "auto",
        annotators: int | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if images not in ("auto", "local", "upload"):
            raise ValueError(f"images must be 'auto', 'local' or 'upload', got {images!r}")
        if not 3 <= len(project) <= 50:
            raise ValueError(
                f"a Label Studio project title has 3 to 50 characters (Label Studio refuses others), got {len(project)}: {project!r}"
            )
        self.client, self.base_url, self.token, self.project = client, url.rstrip("/"), token, project
        self.batch_size = batch_size
        self.images = images
        self.annotators = None if annotators is None else _check_annotators(annotators)
        self.report = PushReport(project_id=_find_project(client, project))
        self._existing: dict[str, int] | None = None
        self._config_checked = False  # the project's labeling config, once per run
        self._uploads_project_id: int | None = None  # where --images upload puts the files
        self._prefix = ""

    def takes(self, record: Record) -> bool:
        return record.review_task is None

    def run(self, batch: list[Record], store: ManifestStore) -> list[Record]:
        for record in batch:
            _check_pushable(record)
        project_id = self._project()
        if self._existing is None:  # the first batch of this run
            mode, self._prefix = _image_mode(
                self.client, store, self.base_url, self.token, project_id, batch, self.images
            )
            self.report.images = mode
            self._existing, unlabelled = _tasks_by_record(self.client, project_id)
            _add_task_labels(self.client, store, unlabelled)
        existing, mode = self._existing, self.report.images
        adopt = [r for r in batch if r.id in existing]
        new = [r for r in batch if r.id not in existing]
        task_ids = {r.id: existing[r.id] for r in adopt}
        adopted = set(task_ids)
        if new:
            image_urls = (
                {r.id: f"/data/local-files/?d={self._prefix}{r.image.path}" for r in new}
                if mode == "local"
                else _upload_images(self.client, store, self.base_url, self.token, self._image_project(), new)
            )
            tasks = [_task(r, store, image_urls[r.id]) for r in new]
            ids = _import_tasks(self.client, self.base_url, self.token, project_id, tasks)
            if len(ids) != len(new):
                raise RuntimeError(
                    f"Label Studio imported {len(ids)} tasks for {len(new)} records in project "
                    f"{project_id}; re-run push (it adopts the tasks that were created)"
                )
            task_ids.update({r.id: int(i) for r, i in zip(new, ids, strict=True)})
            existing.update({r.id: int(i) for r, i in zip(new, ids, strict=True)})
        for record in batch:
            task_id = task_ids[record.id]
            record.review_task = task_id
            record.advance(
                State.in_review,
                STAGE,
                params={
                    "action": "push",
                    "url": self.base_url,
                    "project": self.project,
                    "project_id": project_id,
                    "task": task_id,
                    "images": mode,
                },
                note=("adopted an existing task" if record.id in adopted else None),
            )
            self.report.task_ids[record.id] = task_id
        self.report.pushed += len(new)
        self.report.adopted += len(adopt)
        logger.info("pushed %d records to project %d", len(self.report.task_ids), project_id)
        return batch

    def _project(self) -> int:
        """The project's id, created on first use with ``LABEL_CONFIG`` and ``annotators`` (default 1)
        annotations per task. An existing project whose config is not ``LABEL_CONFIG`` (an older MCC's
        project-wide label list, or a hand edit) gets it, and its annotations per task are set to
        ``annotators`` when given (None keeps the project's), once per run."""
        if self.report.project_id is None:
            self.report.project_id = self.client.projects.create(
                title=self.project,
                label_config=fmt.LABEL_CONFIG,
                description="MCC benchmark: check every concept mask; accept or reject the image.",
                expert_instruction=fmt.INSTRUCTIONS,
                show_instruction=True,
                model_version=MODEL_VERSION,
                show_collab_predictions=True,
                show_skip_button=True,
                maximum_annotations=self.annotators or 1,
            ).id
            self._config_checked = True
            self.client.views.create(project=self.report.project_id, data=UNCERTAIN_FIRST_VIEW)
            logger.info("created Label Studio project %r (id %d)", self.project, self.report.project_id)
        if not self._config_checked:
            current = self.client.projects.get(self.report.project_id)
            if (current.label_config or "") != fmt.LABEL_CONFIG:
                self.client.projects.update(self.report.project_id, label_config=fmt.LABEL_CONFIG)
                logger.info("project %d: labeling config replaced by MCC's", self.report.project_id)
            if self.annotators is not None and current.maximum_annotations != self.annotators:
                self.client.projects.update(self.report.project_id, maximum_annotations=self.annotators)
                logger.info("project %d: %d annotations per task", self.report.project_id, self.annotators)
            self._config_checked = True
        return self.report.project_id

    def _image_project(self) -> int:
        """The project that holds the uploaded images (``--images upload``), created on first use.

        Label Studio accepts a direct file upload only into a project whose config reads one data key, and
        the review config reads three (``image`` and the two per-task label lists), so the images go to a
        companion project with a one-image config, titled ``IMAGE_PROJECT_PREFIX + project``; the review
        tasks point at the files it serves (same organisation, same permissions)."""
        if self._uploads_project_id is None:
            title = (IMAGE_PROJECT_PREFIX + self.project)[:50]
            self._uploads_project_id = _find_project(self.client, title) or (
                self.client.projects.create(
                    title=title,
                    label_config=IMAGE_PROJECT_CONFIG,
                    description=f"Images of the MCC review project {self.project!r} (uploaded by mcc review push).",
                ).id
            )
        return self._uploads_project_id


IMAGE_PROJECT_PREFIX = "images: "
IMAGE_PROJECT_CONFIG = '<View><Image name="image" value="$image"/></View>'

PUSH_ORDERS = ("uncertainty", "id")
AGREEMENT_IOU = 0.9
"""With several annotators per task, two agree on a concept when their masks have at least this IoU."""

UNCERTAIN_FIRST_VIEW = {"title": "Lowest score first", "ordering": ["tasks:predictions_score"]}
"""The Data Manager tab a new project opens on: tasks by ascending prediction score (``task_score``)."""


def push_order(records: Iterable[Record], order: str) -> list[Record]:
    """``uncertainty``: lowest ``task_score`` first (records without one last), ties by id; ``id``: by id."""
    if order not in PUSH_ORDERS:
        raise ValueError(f"order must be one of {', '.join(PUSH_ORDERS)}, got {order!r}")
    if order == "id":
        return sorted(records, key=lambda r: r.id)

    def key(record: Record) -> tuple[bool, float, str]:
        score = task_score(record)
        return (score is None, score if score is not None else 0.0, record.id)

    return sorted(records, key=key)


def push(
    store: ManifestStore,
    *,
    url: str,
    token: str,
    project: str = DEFAULT_PROJECT,
    batch_size: int = 100,
    images: Images = "auto",
    limit: int | None = None,
    order: str = "uncertainty",
    annotators: int | None = None,
    progress: Progress | None = None,
) -> PushReport:
    """Push every ``segmented`` record without a task (at most ``limit``) through ``ReviewPush``.

    ``order``: which records become tasks first (``push_order``), so that ``limit`` and task ids
    follow it; a new project also opens on a tab sorted by ascending score. ``annotators``:
    annotations asked per task (Label Studio's overlap; None: 1 for a new project, an existing one keeps
    its setting); with more than one, pull decides only when they agree. No empty project is created when there is nothing to push. A record the manifest holds inconsistently
    (segmented without an image or a mask) is rejected with reason ``error``.
    """
    stage = ReviewPush(
        connect(url, token), url, token, project, batch_size=batch_size, images=images, annotators=annotators
    )
    records = push_order(select(store, tuple(State(s) for s in stage.accepts)), order)
    run_stage(stage, store, records, limit=limit, progress=progress)
    return stage.report


def _check_annotators(annotators: int) -> int:
    if isinstance(annotators, bool) or int(annotators) != annotators or not 1 <= annotators <= 10:
        raise ValueError(
            f"annotators (annotations per task) must be an integer from 1 to 10, got {annotators!r}"
        )
    return int(annotators)


def _check_pushable(record: Record) -> None:
    if record.image is None:
        raise ValueError(f"record {record.id} is segmented but has no image; the manifest is inconsistent")
    missing = [c.name for c in record.concepts if c.mask is None]
    if missing:
        raise ValueError(f"record {record.id} is segmented but has no mask for {missing}")


def _tasks_by_record(client: LabelStudio, project_id: int) -> tuple[dict[str, int], dict[int, dict]]:
    """record id -> task id of the tasks already in the project (first task wins), and the data of those
    without per-task labels (pushed by an older MCC) by task id."""
    found: dict[str, int] = {}
    unlabelled: dict[int, dict] = {}
    for task in _iter_tasks(client, project_id, fields="task_only"):
        data = task.get("data") or {}
        record_id = data.get("record_id")
        if record_id and record_id not in found:
            found[record_id] = int(task["id"])
            if fmt.MASK_LABELS not in data:
                unlabelled[int(task["id"])] = data
    return found, unlabelled


def _add_task_labels(client: LabelStudio, store: ManifestStore, unlabelled: dict[int, dict]) -> None:
    """Give tasks pushed before labels were per task their record's labels (``fmt.task_labels``)."""
    for task_id, data in unlabelled.items():
        try:
            names = store.get(data["record_id"]).concept_names
        except KeyError:
            logger.warning(
                "task %d: record %s is not in this work dir; its labels are left as they are",
                task_id,
                data["record_id"],
            )
            continue
        client.tasks.update(str(task_id), data={**data, **fmt.task_labels(names)})
    if unlabelled:
        logger.info("added per-task labels to %d tasks pushed by an older MCC", len(unlabelled))


def _iter_tasks(client: LabelStudio, project_id: int, *, fields: str) -> Iterable[dict]:
    for task in client.tasks.list(project=project_id, fields=fields, page_size=500):
        yield task.model_dump() if hasattr(task, "model_dump") else dict(task)


def _image_mode(
    client: LabelStudio,
    store: ManifestStore,
    base_url: str,
    token: str,
    project_id: int,
    records: list[Record],
    images: Images,
) -> tuple[str, str]:
    """``("local", prefix)`` if the server serves the work dir's images, else ``("upload", "")``.

    ``prefix`` is the work dir's path relative to the server's document root (``""`` for a
    server started by ``mcc labelstudio start``), found by asking for the first image.
    """
    if images == "upload":
        return "upload", ""

    def refuse(why: str) -> tuple[str, str]:
        if images == "local":
            raise LabelStudioUnavailable(
                f"Label Studio at {base_url} cannot serve the images of {store.workdir} ({why}). Start it with "
                "`mcc labelstudio start --workdir DIR` on this work dir, or push with --images upload."
            )
        logger.warning("Label Studio cannot serve the images of %s (%s); uploading them", store.workdir, why)
        return "upload", ""

    try:
        folders = sorted(
            {os.path.abspath(store.local_path(os.path.dirname(r.image.path) or ".")) for r in records}
        )
    except ValueError:
        return refuse("the work dir is not a local folder")
    registered = {
        os.path.normpath(s.path)
        for s in client.import_storage.local.list(project=project_id)
        if getattr(s, "path", None)
    }
    for folder in folders:
        if os.path.normpath(folder) in registered:
            continue
        try:  # no sync: the tasks come from push, not from a scan of the folder
            client.import_storage.local.create(
                project=project_id,
                path=folder,
                title="MCC images",
                use_blob_urls=False,
                recursive_scan=False,
                regex_filter=r"^$",
            )
        except ApiError as error:
            return refuse(f"local storage {folder} refused: HTTP {error.status_code} {error.body}")
    prefix = _document_prefix(client, store, base_url, token, records[0])
    if prefix is None:
        return refuse("its document root is not an ancestor of the work dir")
    return "local", prefix


def _document_prefix(
    client: LabelStudio, store: ManifestStore, base_url: str, token: str, record: Record
) -> str | None:
    """The work dir's path below the server's document root, by asking for one image under
    successively longer suffixes of its absolute path."""
    workdir = os.path.abspath(store.local_path(""))
    parts = [p for p in workdir.split(os.sep) if p]
    headers = {"Authorization": _auth_header(client, token)}
    with httpx.Client(base_url=base_url, headers=headers, timeout=30.0) as http:
        for depth in range(len(parts) + 1):
            prefix = "".join(p + "/" for p in parts[len(parts) - depth :])
            response = http.get("/data/local-files/", params={"d": prefix + record.image.path})
            if response.status_code == 200:
                return prefix
    return None


def _upload_images(
    client: LabelStudio,
    store: ManifestStore,
    base_url: str,
    token: str,
    project_id: int,
    records: list[Record],
) -> dict[str, str]:
    """Upload the images into project ``project_id`` (without creating tasks there); returns record id ->
    the URL Label Studio serves."""
    headers = {"Authorization": _auth_header(client, token)}
    files = [
        ("file", (f"{r.id}.png", io.BytesIO(store.read_bytes(r.image.path)), "image/png")) for r in records
    ]
    response = httpx.post(
        f"{base_url}/api/projects/{project_id}/import",
        params={"commit_to_project": "false"},
        files=files,
        headers=headers,
        timeout=300.0,
    )
    response.raise_for_status()
    upload_ids = response.json()["file_upload_ids"]
    listing = httpx.get(
        f"{base_url}/api/projects/{project_id}/file-uploads",
        params={"ids": str(list(upload_ids))},
        headers=headers,
        timeout=60.0,
    )
    listing.raise_for_status()
    by_name: dict[str, str] = {}
    for upload in listing.json():
        name = upload["file"].rsplit("/", 1)[-1]
        by_name[name.split("-", 1)[-1] if "-" in name else name] = "/data/" + upload["file"].lstrip("/")
    missing = [r.id for r in records if f"{r.id}.png" not in by_name]
    if missing:
        raise RuntimeError(f"Label Studio did not list the uploads of {missing[:3]}...; re-run push")
    return {r.id: by_name[f"{r.id}.png"] for r in records}


def _import_tasks(
    client: LabelStudio, base_url: str, token: str, project_id: int, tasks: list[dict]
) -> list[int]:
    """Import tasks into a project; returns their new ids in order.

    The request the SDK's ``projects.import_tasks(..., return_task_ids=True)`` sends, with the body encoded
    by ``json.dumps``: the SDK's own encoder visits every element of every brush RLE list in Python, which
    took half of a push's time (``scripts/bench_review_push.py``).
    """
    response = httpx.post(
        f"{base_url}/api/projects/{project_id}/import",
        params={"return_task_ids": "true"},
        content=json.dumps(tasks, separators=(",", ":")).encode(),
        headers={"Authorization": _auth_header(client, token), "Content-Type": "application/json"},
        timeout=300.0,
    )
    if response.status_code >= 400:
        raise RuntimeError(
            f"Label Studio refused the import of {len(tasks)} tasks into project {project_id} "
            f"(HTTP {response.status_code}): {response.text[:1000]}"
        )
    return [int(i) for i in response.json().get("task_ids") or []]


def _auth_header(client: LabelStudio, token: str) -> str:
    if token.count(".") == 2:  # a personal access token (a JWT refresh token)
        return "Bearer " + client.tokens.refresh(refresh=token).access
    return "Token " + token


def task_score(record: Record) -> float | None:
    """The prediction score of a record's task: its weakest concept's SAM score (None if a concept has none).

    Label Studio sorts tasks by it, so the masks the segmenter was least sure of can be reviewed first.
    """
    scores = [concept.scores.get(SAM_SCORE) for concept in record.concepts]
    if not scores or any(score is None for score in scores):
        return None
    return float(min(scores))


def _task(record: Record, store: ManifestStore, image_url: str) -> dict:
    width, height = record.image.width, record.image.height
    results, mask_share = [], {}
    for i, concept in enumerate(record.concepts):
        mask = decode_mask(concept.mask)
        mask_share[concept.name] = round(
            np.count_nonzero(mask) / mask.size, 4
        )  # the share the quality gate checks
        if mask.shape != (height, width):
            raise ValueError(
                f"record {record.id}: mask of {concept.name} is {mask.shape[::-1]}, the image is "
                f"{width}x{height}"
            )
        results.append(fmt.brush_result(concept.name, mask, f"m{i}"))
        for j, box in enumerate(concept.boxes):
            results.append(fmt.rectangle_result(concept.name, box, width, height, f"b{i}_{j}"))
    return {
        "data": {
            "image": image_url,
            "record_id": record.id,
            "group": record.group,
            "concepts": ", ".join(record.concept_names),
            **fmt.task_labels(record.concept_names),
            "score": task_score(record),  # a Data Manager column to sort and filter by
            "scores": {c.name: c.scores.get(SAM_SCORE) for c in record.concepts},
            "mask_share": mask_share,
        },
        "predictions": [
            {
                "model_version": MODEL_VERSION,
                "score": task_score(record),
                "result": results,
            }
        ],
    }


# -- pull ---------------------------------------------------------------------------------------
class ReviewPull:
    """The pull stage (``manifests.stage``): ``in_review`` records of one project -> reviewed or rejected.

    A record whose task has no submitted annotation yet stays ``in_review`` (not written);
    one whose task was deleted goes back to ``segmented`` for the next push. A record an
    earlier pull decided is applied again when its task's latest annotation is not the one
    that pull applied (another id or a later ``updated_at``: the reviewer revised it), from
    the machine masks of the task's prediction, with a history event of its own. The review
    statistics (``reviews/stats.json``) are rewritten at the end of every run.
    """

    name = STAGE
    accepts = (State.in_review, State.reviewed, State.rejected)
    batch_size = 1_000_000  # the project's tasks are listed once per batch: one batch

    def __init__(
        self,
        client: LabelStudio,
        url: str,
        project: str = DEFAULT_PROJECT,
        *,
        accept_iou: float = ACCEPT_IOU,
        agreement_iou: float = AGREEMENT_IOU,
    ):
        self.client, self.accept_iou = client, accept_iou
        project_id = _find_project(client, project)
        if project_id is None:
            raise LabelStudioUnavailable(
                f"Label Studio at {url.rstrip('/')} has no project named {project!r}; "
                "check --project (push creates it)"
            )
        self.report = PullReport(project_id=project_id)
        self._users: dict[int, str] = {}
        self.agreement_iou = agreement_iou
        # annotations asked per task (set by push --annotators): with more than one, a task is decided only
        # once that many annotators agree
        self.needed = int(getattr(client.projects.get(project_id), "maximum_annotations", None) or 1)

    def takes(self, record: Record) -> bool:
        if _pushed_project(record) != self.report.project_id:
            return False
        return record.state == State.in_review or _applied(record) is not None

    def run(self, batch: list[Record], store: ManifestStore) -> list[Output]:
        project_id = self.report.project_id
        tasks = {int(t["id"]): t for t in _iter_tasks(self.client, project_id, fields="all")}
        outputs: list[Output] = []
        for record in batch:
            task = tasks.get(record.review_task) if record.review_task is not None else None
            if task is not None and (task.get("data") or {}).get("record_id") != record.id:
                task = None  # the id was reused by a task created after this record's task was deleted
            if record.state != State.in_review:
                outputs.append(self._revise(record, task))
                continue
            if task is None:
                old = record.review_task
                record.review_task = None
                record.advance(
                    State.segmented,
                    STAGE,
                    params={"action": "pull", "project_id": project_id, "task": old},
                    note=f"Label Studio task {old} was deleted from project {project_id}; "
                    "back to segmented, the next push creates a new task",
                )
                self.report.returned += 1
                outputs.append(Output(record))
                continue
            annotation, agreement = self._decision(task, record)
            if annotation is None and agreement is not None:
                outputs.append(self._disagree(record, task, agreement))
                continue
            if annotation is None:
                self.report.pending += 1
                outputs.append(Output(record, unchanged=True))
                continue
            reviewer = _reviewer(self.client, annotation, self._users)
            _apply(
                record, annotation, reviewer, project_id, self.accept_iou, self.report, agreement=agreement
            )
            outputs.append(Output(record))
        return outputs

    def _decision(self, task: dict, record: Record) -> tuple[dict | None, dict | None]:
        """The annotation to apply and, with several annotators, how well they agree.

        One annotator per task: the latest submitted annotation (or None) and no agreement. Several: None
        and None until ``needed`` annotators submitted; then ``consensus`` of their latest annotations: the
        newest of the best-agreeing ``needed`` and the agreement, or None and the agreement when they differ.
        """
        if self.needed == 1:
            return _submitted(task), None
        latest = _latest_per_annotator(task)
        if len(latest) < self.needed:
            return None, None
        chosen, agreement = consensus(latest, record, self.needed, self.agreement_iou)
        agreement["reviewers"] = [
            _reviewer(self.client, a, self._users) for a in latest if a.get("id") in agreement["annotations"]
        ]
        return chosen, agreement

    def _disagree(self, record: Record, task: dict, agreement: dict) -> Output:
        """Annotators who disagree: the task asks for one more annotation; the record stays in review with a
        history event (once per set of submitted annotations)."""
        submitted = [list(_annotation_key(a)) for a in _latest_per_annotator(task)]
        if _last_disagreement(record) == submitted:
            return Output(record, unchanged=True)
        overlap = len(submitted) + 1
        self.client.tasks.update(str(task["id"]), overlap=overlap)
        record.log(
            STAGE,
            f"{len(submitted)} annotators disagree (best agreement of {self.needed}: {agreement['score']:.3f} < "
            f"{self.agreement_iou}); task {task['id']} asks for annotation {overlap}",
            params={
                "action": "disagreement",
                "project_id": self.report.project_id,
                "task": task["id"],
                "submitted": submitted,
                "agreement": agreement,
            },
        )
        self.report.disagreed += 1
        return Output(record)

    def _revise(self, record: Record, task: dict | None) -> Output:
        """A decided record: unchanged unless its task's latest annotation (with several annotators: the one
        their consensus picks) is a newer one. Annotators who disagree after a revision leave the decision."""
        annotation, agreement = self._decision(task, record) if task is not None else (None, None)
        if annotation is None or _annotation_key(annotation) == _applied(record):
            return Output(record, unchanged=True)
        machine = _prediction_masks(task, record)
        for concept in record.concepts:  # the revision is judged against the machine masks, as the first one
            if concept.name in machine:
                concept.mask = encode_mask(machine[concept.name])
        reviewer = _reviewer(self.client, annotation, self._users)
        _apply(
            record,
            annotation,
            reviewer,
            self.report.project_id,
            self.accept_iou,
            self.report,
            revised=True,
            agreement=agreement,
        )
        self.report.revised += 1
        return Output(record)

    def finish(self, store: ManifestStore) -> dict[str, bytes]:
        """The review statistics over the whole store, ``reviews/stats.json``."""
        return {STATS_PATH: stats_bytes(compute_stats(list(store.iter())))}


def pull(
    store: ManifestStore,
    *,
    url: str,
    token: str,
    project: str = DEFAULT_PROJECT,
    accept_iou: float = ACCEPT_IOU,
    agreement_iou: float = AGREEMENT_IOU,
    progress: Progress | None = None,
) -> PullReport:
    """Bring the submitted reviews of ``project`` back into the records through ``ReviewPull``.

    Each record is written as soon as it is done, so an interrupted pull re-run finishes
    the rest and changes nothing twice.
    """
    stage = ReviewPull(connect(url, token), url, project, accept_iou=accept_iou, agreement_iou=agreement_iou)
    run_stage(stage, store, progress=progress)
    return stage.report


def _pushed_project(record: Record) -> int | None:
    for event in reversed(record.history):
        if event.stage == STAGE and event.params.get("action") == "push":
            return event.params.get("project_id")
    return None


def _annotation_key(annotation: dict) -> tuple[int | None, str]:
    """What identifies the version of an annotation that a pull applied: its id and timestamp
    (recorded as the pull event's ``annotation`` and ``reviewed_at``)."""
    return (annotation.get("id"), str(annotation.get("updated_at") or annotation.get("created_at") or ""))


def _applied(record: Record) -> tuple[int | None, str] | None:
    """The annotation version the last pull applied to the record, or None when no pull decided it."""
    for event in reversed(record.history):
        if event.stage == STAGE and event.params.get("action") == "pull" and "annotation" in event.params:
            return (event.params.get("annotation"), str(event.params.get("reviewed_at") or ""))
        if event.stage == STAGE and event.params.get("action") == "push":
            return None
    return None


def _prediction_masks(task: dict, record: Record) -> dict[str, np.ndarray]:
    """The machine masks of the task's prediction (what push sent), by concept."""
    height, width = record.image.height, record.image.width
    masks: dict[str, np.ndarray] = {}
    for prediction in task.get("predictions") or []:
        for name, strokes in fmt.read_annotation(prediction.get("result") or []).brushes.items():
            for stroke in strokes:
                masks[name] = masks.get(name, np.zeros((height, width), bool)) | fmt.decode_brush(
                    stroke, height, width
                )
    return masks


def _version(annotation: dict) -> tuple[str, int]:
    """Orders the annotations of a task from oldest to newest: by time, then id."""
    return (
        str(annotation.get("updated_at") or annotation.get("created_at") or ""),
        annotation.get("id") or 0,
    )


def _submitted(task: dict) -> dict | None:
    """The latest submitted (not skipped) annotation of a task, or None."""
    done = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
    if not done:
        return None
    return max(done, key=_version)


def _latest_per_annotator(task: dict) -> list[dict]:
    """The newest submitted (not skipped) annotation of each annotator (``completed_by``), newest first."""
    newest: dict[object, dict] = {}
    done = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
    for annotation in sorted(done, key=_version, reverse=True):
        who = annotation.get("completed_by")
        newest.setdefault(who.get("id") if isinstance(who, dict) else who, annotation)
    return list(newest.values())


def _last_disagreement(record: Record) -> list | None:
    """The annotations (``[id, version]``) of the record's last disagreement since its push, or None."""
    for event in reversed(record.history):
        if event.stage == STAGE and event.params.get("action") == "disagreement":
            return event.params.get("submitted")
        if event.stage == STAGE and event.params.get("action") == "push":
            return None
    return None


def _annotation_masks(annotation: dict, record: Record) -> dict[str, np.ndarray]:
    """Each concept's (H, W) bool mask in one annotation: its strokes merged; empty without a usable stroke."""
    height, width = record.image.height, record.image.width
    brushes = fmt.read_annotation(annotation.get("result") or []).brushes
    masks = {}
    for name in record.concept_names:
        mask = np.zeros((height, width), dtype=bool)
        for stroke in brushes.get(name, []):
            # a stroke of the wrong size or a corrupt RLE counts as nothing here; _apply rejects it with the reason
            with contextlib.suppress(Exception):
                mask |= fmt.decode_brush(stroke, height, width)
        masks[name] = mask
    return masks


def consensus(
    annotations: list[dict], record: Record, needed: int, agreement_iou: float = AGREEMENT_IOU
) -> tuple[dict | None, dict]:
    """Which of several annotators' annotations of one record to apply, and how well they agree.

    Every group of ``needed`` annotations (one per annotator) is scored: 0 when their verdicts differ, 1 when
    all reject, else the lowest pairwise mask IoU over the record's concepts. The best group (ties: the
    newest) agrees when its score is at least ``agreement_iou``; then its newest annotation is returned.

    Returns ``(annotation or None, agreement)``, ``agreement`` = ``{"score", "annotations": ids of the best
    group, "verdicts", "iou": {concept: lowest pairwise IoU in that group} (empty for rejects)}``.
    """
    if needed < 2:
        raise ValueError(f"consensus compares at least 2 annotators' annotations, got needed={needed}")
    if len(annotations) < needed:
        raise ValueError(f"consensus needs {needed} annotations, got {len(annotations)}")
    reads = [fmt.read_annotation(a.get("result") or []) for a in annotations]
    masks = [_annotation_masks(a, record) for a in annotations]
    best: tuple[float, dict, tuple[int, ...]] | None = None
    for group in itertools.combinations(range(len(annotations)), needed):  # annotations are newest first
        verdicts = [reads[i].verdict for i in group]
        iou: dict[str, float] = {}
        if len(set(verdicts)) > 1:
            score = 0.0
        elif verdicts[0] == fmt.REJECT:
            score = 1.0
        else:
            for name in record.concept_names:
                pairs = [fmt.iou(masks[i][name], masks[j][name]) for i, j in itertools.combinations(group, 2)]
                iou[name] = round(min(pairs), 6)
            score = min(iou.values()) if iou else 1.0
        if best is None or score > best[0]:
            best = (score, {"verdicts": verdicts, "iou": iou}, group)
    score, found, group = best
    agreement = {"score": round(score, 6), "annotations": [annotations[i].get("id") for i in group], **found}
    newest = annotations[min(group)]
    return (newest if score >= agreement_iou else None), agreement


def _reviewer(client: LabelStudio, annotation: dict, cache: dict[int, str]) -> str:
    who = annotation.get("completed_by")
    if isinstance(who, dict):
        return who.get("email") or str(who.get("id"))
    if who is None:
        return "unknown"
    if who not in cache:
        try:
            cache[who] = client.users.get(who).email or str(who)
        except Exception:  # the reviewer's account may be gone; keep the id
            cache[who] = str(who)
    return cache[who]


def _apply(
    record: Record,
    annotation: dict,
    reviewer: str,
    project_id: int,
    accept_iou: float,
    report: PullReport,
    *,
    revised: bool = False,
    agreement: dict | None = None,
) -> None:
    """Apply one submitted annotation to its record (in memory); ``revised``: it replaces the
    decision of an earlier pull (the reviewer updated the annotation since); ``agreement``: how well
    several annotators agreed (``consensus``), kept in the event."""
    read = fmt.read_annotation(annotation.get("result") or [])
    params = {
        "action": "pull",
        "project_id": project_id,
        "task": record.review_task,
        "annotation": annotation.get("id"),
        "reviewer": reviewer,
        "reviewed_at": annotation.get("updated_at")
        or annotation.get("created_at")
        or datetime.now(UTC).isoformat(),
        "revised": revised,
        "lead_time": annotation.get("lead_time"),  # seconds the annotator spent (Label Studio's measure)
    }
    if agreement is not None:
        params["agreement"] = agreement
    if read.verdict == fmt.REJECT:
        reason = ReviewReason(read.reject_reason) if read.reject_reason else ReviewReason.rejected_by_reviewer
        record.reject(
            STAGE,
            reason,
            detail=f"rejected by {reviewer}: {read.comment or '(no comment)'}",
            params={**params, "verdict": fmt.REJECT, "reject_reason": reason.value, "comment": read.comment},
        )
        report.rejected += 1
        return

    unknown = sorted(set(read.brushes) - set(record.concept_names))
    if unknown:
        message = f"task {record.review_task}: labels {unknown} are not concepts of {record.id}; ignored"
        logger.warning("%s", message)
        report.warnings.append(message)
    height, width = record.image.height, record.image.width
    ious: dict[str, float] = {}
    boxes_edited: list[str] = []
    problems: list[tuple[str, str]] = []  # (reason code, detail) per concept that cannot be used
    for concept in record.concepts:
        strokes = read.brushes.get(concept.name, [])
        if not strokes:
            problems.append(("mask_missing", f"{concept.name}: no mask in the submitted annotation"))
            continue
        try:
            reviewed = np.zeros((height, width), dtype=bool)
            for stroke in strokes:  # several strokes of one label are one mask
                reviewed |= fmt.decode_brush(stroke, height, width)
        except fmt.BrushSizeError as error:
            problems.append(("mask_size_mismatch", f"{concept.name}: {error}"))
            continue
        except Exception as error:  # a corrupt RLE
            problems.append(("mask_undecodable", f"{concept.name}: brush RLE does not decode ({error})"))
            continue
        machine = decode_mask(concept.mask) if concept.mask is not None else np.zeros_like(reviewed)
        score = fmt.iou(machine, reviewed)
        ious[concept.name] = round(score, 6)
        concept.review = "accepted" if score >= accept_iou else "edited"
        if concept.review == "edited":
            concept.mask = encode_mask(reviewed)
        boxes = [fmt.rectangle_box(r, width, height) for r in read.rectangles.get(concept.name, [])]
        if boxes and not _same_boxes(boxes, concept.boxes):
            concept.boxes = boxes
            boxes_edited.append(concept.name)
    params.update(
        {
            "verdict": read.verdict or "none",
            "iou": ious,
            "review": {c.name: c.review for c in record.concepts},
            "boxes_edited": boxes_edited,
            "comment": read.comment or None,
            "ignored_labels": unknown or None,
        }
    )
    if problems:
        # the usable concepts keep their reviewed masks; the record cannot be published without all of them
        record.reject(
            STAGE, problems[0][0], detail="; ".join(detail for _, detail in problems), params=params
        )
        report.rejected += 1
        return
    record.advance(
        State.reviewed,
        STAGE,
        params=params,
        note=("revised review" if revised else "reviewed")
        + f" by {reviewer}"
        + (f"; ignored labels {unknown}" if unknown else ""),
    )
    report.reviewed += 1


def _same_boxes(a: list, b: list, tolerance: float = 0.5) -> bool:
    if len(a) != len(b):
        return False
    return all(
        max(abs(x - y) for x, y in zip(p, q, strict=True)) <= tolerance
        for p, q in zip(sorted(a), sorted(b), strict=True)
    )
