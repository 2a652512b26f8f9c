"""The Prefect flows of MCC. They only wire: the stages hold every rule.

    rebuild_dataset   plan -> scrape -> [generate -> localize -> segment + gate] per shard -> review push
    sync_reviews      pull the submitted Label Studio reviews into the records
    publish_dataset   build the Hugging Face dataset folder and the COCO file, optionally upload
    score_benchmark   score AnchorDiff and its baselines on a dataset, one report per method

Work is cut into shards of ``config.shard_size`` records, one task per shard, never one per
image. Models load once per flow run (``StageModels``), on first use. Model tasks hold the
slot of each GPU their models run on (``gpu_slot``), do not retry and are never cached (their
inputs are models); I/O tasks retry. With ``config.fan_out > 1`` the parent run hands
groups of shards to child runs of a deployment (``run_deployment``) on the work pool, so
workers on several machines share the work dir, and waits for them. Every stage skips
records that are already past it, so a re-run after a crash finishes what is missing.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.concurrency.sync import concurrency
from pydantic.json_schema import SkipJsonSchema

from flows.config import PipelineConfig, check_deployable, merge_run_config
from manifests import ManifestStore, State, add_planned, load_groups, plan_scenes
from manifests.registry import GENERATORS, LOCALIZERS, SEGMENTERS
from manifests.stage import run_stage

GPU_LIMIT = "gpu"
PENDING_STATES = (State.planned, State.generated, State.localized)


class StageModels:
    """The stage objects of one flow run, each built from its registry on first use and kept for the run.

    ``config.generate.backend`` etc. name the backends (``manifests.registry``): a new
    generator, localiser or segmenter is registered there or named as ``module:factory``
    in the profile; nothing here changes.
    """

    def __init__(self, config: PipelineConfig):
        self.config = config
        self._generator = self._localizer = self._segmenter = None

    @property
    def generator(self):
        if self._generator is None:
            self._generator = GENERATORS.build(self.config.generate)
        return self._generator

    @property
    def localizer(self):
        if self._localizer is None:
            self._localizer = LOCALIZERS.build(self.config.localize)
        return self._localizer

    @property
    def segmenter(self):
        if self._segmenter is None:
            verifier = self.localizer if self.config.quality.second_look else None
            self._segmenter = SEGMENTERS.build(
                self.config.segment, quality=self.config.quality, verifier=verifier
            )
        return self._segmenter


GPU_LEASE_SECONDS = 60
"""Lease of a ``gpu`` slot, renewed while its task runs: a killed run's slot returns within this."""
GPU_WAIT_LOG_SECONDS = 60


def uses_gpu(*devices: str | None) -> bool:
    """Whether models on these devices (None: CUDA when available, as the backends decide) use a GPU."""
    import torch

    return any(d.startswith("cuda") if d else torch.cuda.is_available() for d in devices)


def gpu_limit(device: str | None) -> str:
    """The concurrency limit of the physical GPU behind a CUDA device: ``gpu-<index>``.

    ``cuda:N`` (``cuda`` is ``cuda:0``) is the N-th GPU of ``CUDA_VISIBLE_DEVICES`` (a worker
    started with ``CUDA_VISIBLE_DEVICES=1`` runs ``cuda`` on ``gpu-1``), or GPU N when it is unset.
    """
    ordinal = int(device.split(":", 1)[1]) if device and ":" in device else 0
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    return f"{GPU_LIMIT}-{visible[ordinal] if ordinal < len(visible) else ordinal}"


def gpu_limits(devices: tuple[str | None, ...], model_slots: str) -> list[str]:
    """The limits a model task takes for models on ``devices``: one per distinct GPU they use
    (``model_slots="auto"``), as if every model ran on CUDA (``"gpu"``), or none (``"none"``)."""
    if model_slots == "none":
        return []
    on_gpu = [d for d in devices if model_slots == "gpu" or uses_gpu(d)]
    return sorted({gpu_limit(d if d and d.startswith("cuda") else None) for d in on_gpu})


@contextlib.contextmanager
def gpu_slot(*devices: str | None, model_slots: str = "auto"):
    """The slot of each GPU a model task's models run on (``gpu_limits``; mcc deploy makes one
    limit of 1 slot per GPU, so one model task at a time per GPU and one per GPU at once); none
    when they all run on the CPU (a smoke run). Logs once a minute while a slot is held (by
    another model task, or for up to ``GPU_LEASE_SECONDS`` by a run that was killed)."""
    names = gpu_limits(devices, model_slots)
    if not names:
        yield
        return
    acquired = False
    while True:
        try:
            with concurrency(
                names, occupy=1, timeout_seconds=GPU_WAIT_LOG_SECONDS, lease_duration=GPU_LEASE_SECONDS
            ):
                acquired = True
                yield
            return
        except TimeoutError:
            if acquired:  # raised by the task itself, not by the wait
                raise
            get_run_logger().info(
                "waiting for the slot of %s: held by another model task (a killed run's slot returns "
                "within %d s); `prefect gcl ls` lists the limits and their holders",
                ", ".join(names),
                GPU_LEASE_SECONDS,
            )


# -- tasks ---------------------------------------------------------------------------------
def retry_unless_misconfigured(task, task_run, state) -> bool:
    """Retry I/O failures; a ValueError (bad profile, missing token or file) fails at once."""
    try:
        state.result()
    except ValueError:
        return False
    except Exception:  # anything else may be transient (network, server, storage)
        return True
    return False


@task(retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE, retry_condition_fn=retry_unless_misconfigured)
def plan_task(config: PipelineConfig) -> dict[str, int]:
    """Planned records for the scene specs of the profile (idempotent)."""
    groups = load_groups(config.plan.groups_file)[: config.plan.max_groups]
    specs = plan_scenes(groups, per_group=config.plan.per_group, seed=config.plan.seed)
    created, existing = add_planned(ManifestStore(config.workdir), specs)
    get_run_logger().info("planned %d scenes from %d groups (%d new)", len(specs), len(groups), created)
    return {"planned": len(specs), "new": created}


@task(retries=1, retry_delay_seconds=10, cache_policy=NO_CACHE, retry_condition_fn=retry_unless_misconfigured)
def scrape_task(config: PipelineConfig) -> dict[str, int]:
    """Web images of the profile's URL list or search source (skipped when it names neither).

    An Openverse token, a secret, comes from ``MCC_OPENVERSE_TOKEN``, never from the profile.
    """
    from generators.web import scrape

    store = ManifestStore(config.workdir)
    with ProgressArtifact("scrape") as progress:
        run = scrape(
            config.scrape,
            store,
            groups_file=config.plan.groups_file,
            progress=progress,
            openverse_token=os.environ.get("MCC_OPENVERSE_TOKEN"),
            log=get_run_logger().info,
        )
    counts = Counter(r.state.value for r in run.records)
    get_run_logger().info("scraped %d URLs: %s", len(run.records), dict(counts))
    return dict(counts)


def pending_shards(config: PipelineConfig) -> list[list[str]]:
    """Ids of the records not yet past segmentation, in id order, cut into shards.

    ``generate.groups`` keeps only those groups' records; ``generate.limit`` and
    ``localize.limit`` cap the records of this run (the smaller wins), as in the CLI.
    """
    store = ManifestStore(config.workdir)
    groups = config.generate.groups
    pending = {state.value for state in PENDING_STATES}
    ids = [
        record_id
        for record_id, r in store.summaries().items()
        if r.state in pending
        and not (r.state == State.planned and r.source_kind == "web")
        and (not groups or r.group in groups)
    ]
    limits = [n for n in (config.generate.limit, config.localize.limit) if n is not None]
    ids = ids[: min(limits)] if limits else ids
    return [ids[i : i + config.shard_size] for i in range(0, len(ids), config.shard_size)]


@task(cache_policy=NO_CACHE)
def process_shard(config: PipelineConfig, shard: list[str], models: StageModels) -> dict[str, int]:
    """Generate, localise, segment and gate the records of one shard; returns counts by state.

    The runner writes each record as soon as it is done; each stage skips records already past it.
    """
    store = ManifestStore(config.workdir)
    records = {record_id: store.get(record_id) for record_id in shard}
    devices = (config.generate.device, config.localize.device, config.segment.device)
    with gpu_slot(*devices, model_slots=config.model_slots):
        for name in ("generator", "localizer", "segmenter"):  # each model loads when its stage starts
            done = run_stage(getattr(models, name), store, list(records.values()))
            records.update({r.id: r for r in done.records})
    return dict(Counter(r.state.value for r in records.values()))


@task(retries=2, retry_delay_seconds=10, cache_policy=NO_CACHE, retry_condition_fn=retry_unless_misconfigured)
def push_reviews_task(config: PipelineConfig) -> dict[str, Any]:
    from annotators.review import push

    with ProgressArtifact("review push") as progress:
        report = push(
            ManifestStore(config.workdir),
            url=_labelstudio_url(config),
            token=_labelstudio_token(),
            project=config.review.project,
            batch_size=config.review.batch_size,
            images=config.review.images,
            limit=config.review.limit,
            order=config.review.order,
            annotators=config.review.annotators,
            progress=progress,
        )
    return _as_dict(report)


@task(retries=2, retry_delay_seconds=10, cache_policy=NO_CACHE, retry_condition_fn=retry_unless_misconfigured)
def pull_reviews_task(config: PipelineConfig) -> dict[str, Any]:
    from annotators.review import pull

    with ProgressArtifact("review pull") as progress:
        report = pull(
            ManifestStore(config.workdir),
            url=_labelstudio_url(config),
            token=_labelstudio_token(),
            project=config.review.project,
            agreement_iou=config.review.agreement_iou,
            progress=progress,
        )
    return _as_dict(report)


# -- flows -----------------------------------------------------------------------------------
def run_config(config: PipelineConfig) -> PipelineConfig:
    """The configuration a flow run works with, checked (``flows.config.check_deployable``).

    In a deployment's run, the fields the run set are merged over the deployment's own
    ``config`` parameter (``flows.config.merge_run_config``: Prefect would replace it whole), so
    ``--params '{"config": {"workdir": "/data/other"}}'`` keeps the deployment's profile and
    model settings. Called first by every flow.
    """
    from prefect import runtime
    from prefect.client.orchestration import get_client

    deployment_id = runtime.deployment.id
    if deployment_id is not None:
        with get_client(sync_client=True) as client:
            defaults = client.read_deployment(deployment_id).parameters.get("config")
        given = config.model_dump(mode="json", exclude_unset=True)
        config = PipelineConfig.model_validate(merge_run_config(defaults, given))
    return check_deployable(config)


@flow(name="rebuild-dataset", log_prints=True)
def rebuild_dataset(
    config: PipelineConfig, shard_ids: SkipJsonSchema[list[list[str]] | None] = None
) -> dict[str, Any]:
    """Plan, scrape, generate, localise, segment and gate; then push to review.

    ``shard_ids`` is set only for child runs of a fan-out: they process exactly those shards. It is left
    out of the deployment's parameter schema (``SkipJsonSchema``), so the UI's run form does not offer it;
    the server still accepts it from the parent (the schema allows properties it does not list).
    """
    config = run_config(config)
    logger = get_run_logger()
    start = time.perf_counter()
    if shard_ids is not None:
        done = run_shards(config, shard_ids)
        return {"shards": len(shard_ids), "records": sum(len(s) for s in shard_ids), "states": done}

    plan = plan_task(config)
    scraped = scrape_task(config) if config.scrape.urls or config.scrape.source else {}
    shards = pending_shards(config)
    logger.info(
        "%d records to process in %d shards of up to %d",
        sum(map(len, shards)),
        len(shards),
        config.shard_size,
    )
    if config.fan_out > 1 and shards:
        fan_out(config, shards)
    else:
        run_shards(config, shards)

    review: dict[str, Any] = {}
    if config.review.mode == "labelstudio":
        review = push_reviews_task(config)
    else:
        logger.info("review mode 'auto': segmented records are published with review status 'machine'")
    counts = publish_counts(config)
    summary = (
        f"# Rebuild of `{config.workdir}`\n\n"
        f"- profile: `{config.profile}`; planned scenes: {plan['planned']} ({plan['new']} new)\n"
        f"- scraped: {scraped or 'no URL list in this profile'}\n"
        f"- shards processed: {len(shards)} (fan-out {config.fan_out})\n"
        f"- review: {review or config.review.mode}\n"
        f"- records by state: {counts}\n"
        f"- records: `{ManifestStore(config.workdir).path('records')}`\n"
        f"- wall time: {time.perf_counter() - start:.1f} s\n"
    )
    create_markdown_artifact(summary, key="rebuild-summary", description="What this rebuild did")
    return {"plan": plan, "scraped": scraped, "shards": len(shards), "states": counts, "review": review}


def run_shards(config: PipelineConfig, shards: list[list[str]]) -> dict[str, int]:
    """Process shards one after the other in this run, with a progress artifact per shard."""
    logger = get_run_logger()
    models = StageModels(config)
    progress = create_progress_artifact(0.0, description=f"shards done of {len(shards)}")
    totals: Counter[str] = Counter()
    for index, shard in enumerate(shards, start=1):
        totals.update(process_shard(config, shard, models))
        update_progress_artifact(progress, 100.0 * index / len(shards))
        logger.info("shard %d/%d done (%d records): %s", index, len(shards), len(shard), dict(totals))
    return dict(totals)


def fan_out(config: PipelineConfig, shards: list[list[str]]) -> None:
    """Hand the shards round-robin to ``config.fan_out`` child runs of a deployment and wait.

    Raises RuntimeError naming every child run that did not complete.
    """
    from prefect import runtime
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    logger = get_run_logger()
    deployment = config.deployment or (
        f"{runtime.flow_run.flow_name}/{runtime.deployment.name}" if runtime.deployment.name else None
    )
    if deployment is None:
        raise ValueError(
            "fan_out > 1 needs a deployment for the child runs: run this flow from a deployment "
            "(prefect deploy) or set config.deployment to 'rebuild-dataset/<name>'"
        )
    groups = [shards[i :: config.fan_out] for i in range(config.fan_out)]
    parameters = config.model_dump(mode="json")
    children = [
        run_deployment(
            deployment,
            parameters={"config": parameters, "shard_ids": group},
            timeout=0,
            idempotency_key=f"{runtime.flow_run.id}-shards-{index}",
            flow_run_name=f"{runtime.flow_run.name}-shards-{index}",
        )
        for index, group in enumerate(groups)
        if group
    ]
    logger.info("submitted %d child runs to %s", len(children), deployment)
    progress = create_progress_artifact(0.0, description=f"child runs finished of {len(children)}")
    with get_client(sync_client=True) as client:
        runs = wait_for_children(
            lambda: [client.read_flow_run(child.id) for child in children],
            timeout=config.fan_out_timeout,
            on_progress=lambda share: update_progress_artifact(progress, 100.0 * share),
        )
    logger.info("all %d child runs completed", len(runs))


def wait_for_children(read_runs, *, timeout: float, on_progress=None, poll: float = 2.0) -> list:
    """Poll ``read_runs()`` (-> flow runs with ``.name`` and ``.state``) until every run is final,
    at most ``timeout`` seconds; returns the runs when all completed.

    Raises RuntimeError naming each run that ended otherwise (failed, crashed, cancelled), or,
    after ``timeout``, each run still unfinished with its state and what to do about it.
    """
    deadline = time.monotonic() + timeout
    while True:
        runs = read_runs()
        finished = [run for run in runs if run.state is not None and run.state.is_final()]
        if on_progress is not None:
            on_progress(len(finished) / max(1, len(runs)))
        if len(finished) == len(runs):
            break
        if time.monotonic() >= deadline:
            waiting = [
                f"{run.name} ({run.state.name if run.state else 'no state'})"
                for run in runs
                if run not in finished
            ]
            raise RuntimeError(
                f"child runs not finished after {timeout:.0f} s: {', '.join(waiting)}. A child whose worker "
                "died stays Running: cancel it (`prefect flow-run cancel <id>`) and run this flow again, "
                "which redoes only the unfinished shards; or raise config.fan_out_timeout"
            )
        time.sleep(poll)
    failed = [f"{run.name} ({run.state.name})" for run in runs if not run.state.is_completed()]
    if failed:
        raise RuntimeError(
            f"child runs did not complete: {', '.join(failed)}; re-run the flow to finish them"
        )
    return runs


@flow(name="sync-reviews", log_prints=True)
def sync_reviews(config: PipelineConfig) -> dict[str, Any]:
    """Pull submitted Label Studio reviews into the records."""
    config = run_config(config)
    report = pull_reviews_task(config)
    create_markdown_artifact(
        f"# Review sync\n\n{report}\n\nrecords by state: {publish_counts(config)}", key="sync-reviews-summary"
    )
    return report


@flow(name="publish-dataset", log_prints=True)
def publish_dataset(config: PipelineConfig) -> dict[str, Any]:
    """Build the dataset folder (parquet shards, card, manifest.json) and COCO; push when asked."""
    from manifests.publish import build_dataset, push_dataset
    from manifests.publish.selection import REVIEWED_ONLY, WITH_UNREVIEWED

    config = run_config(config)
    logger = get_run_logger()
    store = ManifestStore(config.workdir)
    include = WITH_UNREVIEWED if config.publish.include_unreviewed else REVIEWED_ONLY
    out = Path(config.dataset_dir)
    summary = build_dataset(
        store, out, include=include, version=config.publish.version, shard_size=config.publish.shard_size,
        repo_id=config.publish.push, validation_fraction=config.publish.validation_fraction,
    )  # fmt: skip
    built = {
        "rows": summary.rows,
        "rows_by_subset": summary.rows_by_subset,
        "rows_by_split": summary.rows_by_split,
        "masks": summary.masks,
        "excluded": summary.excluded_by_reason,
        "skipped_by_state": summary.skipped,
        "folder_mb": round(summary.folder_bytes / 2**20, 1),
    }
    logger.info("built %s: %s", out, built)
    coco = {split: str(path) for split, path in summary.coco_paths.items()}
    result: dict[str, Any] = {"out": str(out), "coco": coco, **built}
    if config.publish.push:
        pushed = push_dataset(
            out,
            config.publish.push,
            tag=config.publish.tag or f"v{config.publish.version}",
            private=config.publish.private,
        )
        result["pushed"] = str(pushed)
    create_markdown_artifact(
        f"# Published `{out}`\n\n- dataset folder: `{out.resolve()}`\n- COCO: {coco}\n"
        f"- load with `datasets.load_dataset({str(out)!r}, split='test')` (tune on `split='validation'`)\n"
        f"- {built}\n",
        key="publish-summary",
    )
    return result


@flow(name="score-benchmark", log_prints=True)
def score_benchmark(config: PipelineConfig) -> dict[str, Any]:
    """Score every method of the profile on the dataset in one pass (one attention recording per
    image serves them all); one report folder per method."""
    from anchordiff.backbones import check_preset
    from benchmark.datasets import open_dataset
    from benchmark.evaluate import SharedRecording, evaluate_together, scored_anchordiff_methods
    from benchmark.report import TABLE4_COLUMNS

    config = run_config(config)
    logger = get_run_logger()
    c = config.score
    dataset = open_dataset(
        c.dataset or config.dataset_dir, kind=c.benchmark, config=c.subset, class_names=c.class_names,
        split=c.split,
    )  # fmt: skip
    from anchordiff import AnchorDiff

    model = c.model or check_preset(c.preset).repo
    pipeline = AnchorDiff.from_pretrained(
        model, preset=c.preset, device=c.device, dtype=c.dtype, revision=c.revision
    )  # loaded once for every method
    recording = SharedRecording(pipeline)
    methods = scored_anchordiff_methods(c, c.methods, recording, model)
    folders = [Path(config.reports_dir) / f"{c.preset}-{c.mode}-{name}" for name in c.methods]
    with gpu_slot(str(pipeline.device), model_slots=config.model_slots):
        reports = evaluate_together(
            methods, dataset, out_dirs=folders, limit=c.limit, progress=False, qualitative=c.qualitative,
            conceptattention_compat=c.conceptattention_compat, retry_failed=c.retry_failed,
            protocol_resolution=c.protocol_resolution,
        )  # fmt: skip
    rows = []
    for method_name, report, out in zip(c.methods, reports, folders, strict=True):
        overall = report.overall or {}
        headline = {k: overall.get(k) for k in TABLE4_COLUMNS if k in overall}
        rows.append({"method": method_name, **headline, "report": str(out / "report.md")})
        logger.info("%s: %s", method_name, rows[-1])
    logger.info("%d attention recordings served %d methods", recording.recordings, len(methods))
    create_table_artifact(rows, key="score-benchmark", description=f"MCC scores ({c.preset}, {c.mode})")
    return {name: str(out) for name, out in zip(c.methods, folders, strict=True)}


# -- helpers ----------------------------------------------------------------------------------
class ProgressArtifact:
    """The runner's progress callback in a flow: the share of the stage's records stored, as a
    Prefect progress artifact, and a log line every ``every`` records."""

    def __init__(self, what: str, every: int = 50):
        self.what, self.every = what, every
        self.done, self.total = 0, 0
        self.artifact = None

    def __enter__(self) -> ProgressArtifact:
        self.artifact = create_progress_artifact(0.0, description=f"{self.what}: share of records stored")
        return self

    def start(self, total: int) -> None:
        self.total += total

    def __call__(self, record) -> None:
        self.done += 1
        if self.done % self.every == 0 or self.done == self.total:
            update_progress_artifact(self.artifact, 100.0 * self.done / max(self.total, 1))
            get_run_logger().info("%s: %d of %d records stored", self.what, self.done, self.total)

    def __exit__(self, *exc) -> None:
        update_progress_artifact(self.artifact, 100.0)


def publish_counts(config: PipelineConfig) -> dict[str, int]:
    """Counts by state and by rejection reason, also published as a table artifact."""
    counts = ManifestStore(config.workdir).counts()
    rows = [{"state": state, "reason": "", "records": n} for state, n in sorted(counts.by_state.items())]
    rows += [
        {"state": "rejected", "reason": f"{stage}: {reason}", "records": n}
        for (stage, reason), n in sorted(counts.by_rejection.items())
    ]
    create_table_artifact(rows, key="record-counts", description="Records by state and rejection reason")
    return counts.by_state


def _labelstudio_url(config: PipelineConfig) -> str:
    url = config.review.url or os.environ.get("LABEL_STUDIO_URL")
    if not url:
        raise ValueError("no Label Studio URL: set review.url in the profile or LABEL_STUDIO_URL")
    return url


def _labelstudio_token() -> str:
    token = os.environ.get("LABEL_STUDIO_API_KEY")
    if not token:
        raise ValueError(
            "no Label Studio token: export LABEL_STUDIO_API_KEY (printed by `mcc labelstudio start`)"
        )
    return token


def _as_dict(value: Any) -> dict[str, Any]:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if hasattr(value, "__dataclass_fields__"):
        from dataclasses import asdict

        return {k: v for k, v in asdict(value).items() if isinstance(v, (int, float, str, bool, dict, list))}
    return dict(value) if isinstance(value, dict) else {"result": str(value)}
