"""The one configuration: ``PipelineConfig``, filled from a profile YAML file.

It composes the stages' own config models, so a profile, the Prefect UI form and the
``mcc`` flags set the same objects:

=============  =========================================  ==============================
section        model (owned by the stage)                 CLI
=============  =========================================  ==============================
``plan``       ``PlanConfig``                             ``mcc plan``
``generate``   ``generators.config.GenerateConfig``       ``mcc generate``
``scrape``     ``generators.web.ScrapeJob``               ``mcc scrape``
``localize``   ``annotators.config.LocalizeConfig``       ``mcc annotate``
``segment``    ``annotators.config.SegmentConfig``        ``mcc annotate``
``quality``    ``annotators.quality.QualityConfig``       ``mcc annotate``
``review``     ``annotators.config.ReviewConfig``         ``mcc review push|pull``
``publish``    ``PublishSection``                         ``mcc publish``
``score``      ``benchmark.config.ScoreConfig``           ``mcc score``
``sweep``      ``benchmark.config.SweepConfig``           ``mcc sweep``
=============  =========================================  ==============================

A profile (``smoke``, ``full``, or the path of a YAML file) gives every value; fields
given next to ``profile`` override it, section by section. Prefect renders the model as
a form, and a deployment only needs ``{"config": {"profile": "full"}}``. The CLI builds
the same model with ``cli_config(profile, flags, sets)``: the profile, then the flags
given, then ``--set section.field=value``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from annotators.config import LocalizeConfig, ReviewConfig, SegmentConfig
from annotators.quality import QualityConfig
from benchmark.config import ScoreConfig, SweepConfig
from generators.config import GenerateConfig
from generators.web import ScrapeJob
from manifests.workdir import WorkDir

PROFILES = ("smoke", "full")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PlanConfig(Section):
    groups_file: str | None = Field(None, description="A groups YAML file; default: the packaged 75 groups.")
    max_groups: int | None = Field(None, description="Use only the first N groups (smoke runs).")
    per_group: int = Field(4, ge=1, description="Generated scenes per concept group.")
    seed: int = Field(0, description="Seed of the plan; the same seed plans the same scenes.")


class PublishSection(Section):
    out: str | None = Field(None, description="Folder to write the dataset to; default <workdir>/dataset.")
    include_unreviewed: bool = Field(
        False,
        description="Also publish records not reviewed by a person (review status 'machine'); smoke runs only.",
    )
    version: str = Field("0.1.0", description="Dataset version written into the card and manifest.json.")
    shard_size: int = Field(200, ge=1, description="At most this many images per parquet shard.")
    validation_fraction: float = Field(
        0.2, ge=0, lt=1, description="Share of the images in the validation split (0: a test split only)."
    )
    push: str | None = Field(
        None,
        description="Hub dataset repo id to upload to (needs HF_TOKEN); none: nothing leaves the machine.",
    )
    tag: str | None = Field(None, description="Tag of the pushed commit (default: v<version>).")
    private: bool = Field(False, description="Create the Hub repo as private if it does not exist.")


class PipelineConfig(Section):
    """Everything the MCC flows need; see flows/profiles/*.yaml."""

    profile: str | None = Field(None, description="'smoke', 'full' or a YAML path; other fields override it.")
    workdir: str = Field("mcc-workdir", description="Local folder or fsspec URL shared by all workers.")
    shard_size: int = Field(
        16, ge=1, description="Records per shard (one Prefect task per shard, never per image)."
    )
    fan_out: int = Field(1, ge=1, description="Child flow runs to spread the shards over (run_deployment).")
    fan_out_timeout: float = Field(
        6 * 3600.0,
        gt=0,
        description="Seconds the parent waits for its child runs; then it fails naming the unfinished ones "
        "(a child whose worker died stays Running for good).",
    )
    model_slots: Literal["auto", "gpu", "none"] = Field(
        "auto",
        description="GPU slots a model task takes: auto = the slot of each GPU its models run on (none on "
        "the CPU); gpu = as if they ran on CUDA (one model task at a time per worker's CUDA_VISIBLE_DEVICES, "
        "also on a CPU machine); none = no slot.",
    )
    deployment: str | None = Field(
        None,
        description="Deployment the child runs use when fan_out > 1 (default: this run's own deployment).",
    )
    plan: PlanConfig = Field(default_factory=PlanConfig)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    scrape: ScrapeJob = Field(default_factory=ScrapeJob)
    localize: LocalizeConfig = Field(default_factory=LocalizeConfig)
    segment: SegmentConfig = Field(default_factory=SegmentConfig)
    quality: QualityConfig = Field(default_factory=QualityConfig)
    review: ReviewConfig = Field(default_factory=ReviewConfig)
    publish: PublishSection = Field(default_factory=PublishSection)
    score: ScoreConfig = Field(default_factory=ScoreConfig)
    sweep: SweepConfig = Field(default_factory=SweepConfig)

    @property
    def dataset_dir(self) -> str:
        """Where the dataset is built: ``publish.out``, default ``<workdir>/dataset``."""
        return self.publish.out or f"{self.workdir.rstrip('/')}/{WorkDir.DATASET}"

    @property
    def reports_dir(self) -> str:
        """Where reports go: ``score.out``, default ``<workdir>/reports``."""
        return self.score.out or f"{self.workdir.rstrip('/')}/{WorkDir.REPORTS}"

    @model_validator(mode="before")
    @classmethod
    def _fill_from_profile(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("profile"):
            return _merge(read_profile(data["profile"]), data)
        return data


def read_profile(profile: str) -> dict[str, Any]:
    """The raw values of a profile: a packaged name (smoke, full) or a YAML file path."""
    if profile in PROFILES:
        text = resources.files("flows").joinpath(f"profiles/{profile}.yaml").read_text()
    else:
        path = Path(profile)
        if not path.is_file():
            raise ValueError(f"unknown profile {profile!r}: use one of {PROFILES} or the path of a YAML file")
        text = path.read_text()
    try:
        values = yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ValueError(
            f"profile {profile!r} is not valid YAML{where}: {problem}; fix the file (see flows/profiles/smoke.yaml)"
        ) from None
    if not isinstance(values, dict):
        raise ValueError(
            f"profile {profile!r} must be a YAML mapping of sections (workdir, plan, generate, ...)"
        )
    return values


def merge_run_config(deployment_config: dict[str, Any] | None, run_config: dict[str, Any]) -> dict[str, Any]:
    """The ``config`` a deployment's flow run works with: the fields the run set, merged field by
    field over the deployment's own ``config`` parameter.

    Prefect replaces a deployment's parameter as a whole when a run passes it (``--params
    '{"config": {"workdir": ...}}'`` would drop the deployment's profile and model settings);
    ``run_config`` holds only what the run set (``model_dump(exclude_unset=True)``), so
    everything else keeps the deployment's value.
    """
    return _merge(deployment_config or {}, run_config)


def check_deployable(config: PipelineConfig) -> PipelineConfig:
    """``config`` if a flow run may use it; ValueError naming the field and the fix if not.

    A flow run has a profile (no silent full-size defaults), and its work dir and output
    folders are absolute paths or URLs: a relative path would resolve in whatever folder the
    worker runs in (the repository, for `prefect deploy`'s default pull step).
    """
    if not config.profile:
        raise ValueError(
            "config has no profile: a flow run needs one (config.profile: smoke, full or the path of a "
            "YAML profile), so that it never runs on the full-size defaults by accident"
        )
    for field, value in (
        ("workdir", config.workdir),
        ("publish.out", config.publish.out),
        ("score.out", config.score.out),
    ):
        if value and "://" not in value and not Path(value).is_absolute():
            raise ValueError(
                f"config.{field} is {value!r}, a relative path: a worker would resolve it in its own folder. "
                "Give an absolute path or a URL (s3://..., a shared mount); `mcc deploy --workdir DIR` sets "
                "the deployments' work dir"
            )
    return config


def load_profile(profile: str, **overrides: Any) -> PipelineConfig:
    """``PipelineConfig`` of a profile, with top-level ``overrides`` (e.g. ``workdir=...``)."""
    return PipelineConfig.model_validate({"profile": profile, **overrides})


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def set_path(values: dict[str, Any], path: str, value: Any) -> None:
    """Set ``values[a][b][c] = value`` for ``path`` ``"a.b.c"`` (dashes in names read as underscores)."""
    *parents, last = [part.replace("-", "_") for part in path.split(".")]
    for part in parents:
        child = values.get(part)
        if not isinstance(child, dict):
            child = values[part] = {}
        values = child
    values[last] = value


def cli_config(profile: str | None, flags: dict[str, Any], sets: list[str] | None = None) -> PipelineConfig:
    """The ``PipelineConfig`` of ``mcc`` commands: ``profile`` (or the defaults), then ``flags``, then ``sets``.

    ``flags`` maps a dotted field path (``generate.steps``) to a flag's value, None for a
    flag not given. ``sets`` are ``section.field=value`` strings, the value read as YAML
    (``--set quality.min_area_fraction=0.01``, ``--set scrape.allowed_licences=[cc0]``).
    Raises ValueError naming the bad entry.
    """
    values: dict[str, Any] = read_profile(profile) if profile else {}
    for path, value in flags.items():
        if value is not None:
            set_path(values, path, value)
    for entry in sets or []:
        path, sep, text = entry.partition("=")
        if not sep or not path.strip():
            raise ValueError(f"--set {entry!r}: write section.field=value, e.g. --set generate.steps=4")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            raise ValueError(
                f"--set {entry!r}: the value is not valid YAML; quote it, e.g. --set 'a.b=\"text\"'"
            ) from None
        set_path(values, path.strip(), value)
    try:
        return PipelineConfig.model_validate(values)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors(include_url=False)
        )
        raise ValueError(
            f"invalid configuration ({problems}); see `mcc <command> --help` and flows/profiles/"
        ) from None
