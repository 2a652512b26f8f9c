"""The flows' parameters: one pydantic model, filled from a profile YAML file.

A profile (``smoke``, ``full``, or the path of a YAML file) gives every value; fields
given next to ``profile`` override it, section by section. Prefect renders the model as
a form, and a deployment only needs ``{"config": {"profile": "full"}}``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

PROFILES = ("smoke", "full")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PlanConfig(Section):
    groups_file: str | None = Field(None, description="A groups YAML file; default: the packaged 75 groups.")
    max_groups: int | None = Field(None, description="Use only the first N groups (smoke runs).")
    per_group: int = Field(4, ge=1, description="Generated scenes per concept group.")
    seed: int = 0


class GenerateConfig(Section):
    model: str = Field("black-forest-labs/FLUX.1-dev", description="Hub id, local folder, or 'tiny'.")
    revision: str | None = None
    size: int = 1024
    steps: int = 28
    guidance: float = 3.5
    batch_size: int = 1
    device: str | None = None
    dtype: str = "bfloat16"
    cpu_offload: bool = False
    vae_tiling: bool = False


class ScrapeConfig(Section):
    urls: str | None = Field(
        None, description="CSV/JSONL/parquet URL list (url, group, licence, ...); none: skip."
    )
    allow_private_networks: bool = False
    allow_unknown_licence: bool = False


class LocalizeConfig(Section):
    model: str = "Qwen/Qwen2.5-VL-7B-Instruct"
    revision: str | None = None
    device: str | None = None
    dtype: str = "bfloat16"
    batch_size: int = 4
    max_new_tokens: int = 512
    every_concept: bool = Field(
        False,
        description="Constrain answers to start with one box per concept "
        "(generated images name every concept).",
    )


class SegmentConfig(Section):
    model: str = Field(
        "configs/sam2.1/sam2.1_hiera_l.yaml:checkpoints/sam2.1_hiera_large.pt",
        description="'tiny' or CONFIG:CHECKPOINT of SAM2.",
    )
    device: str | None = None


class QualitySection(Section):
    permissive: bool = Field(False, description="Relaxed thresholds for random-weight smoke runs.")


class ReviewSection(Section):
    mode: Literal["labelstudio", "auto"] = Field(
        "labelstudio",
        description="'labelstudio': push segmented records for human review. 'auto': skip review; records are "
        "published with review status 'machine' (offline smoke runs only).",
    )
    url: str | None = Field(None, description="Label Studio URL (default: $LABEL_STUDIO_URL).")
    project: str = "MCC review"


class PublishSection(Section):
    out: str = "mcc-workdir/dataset"
    include_unreviewed: bool = Field(
        False,
        description="Also publish records not reviewed by a person (review status 'machine'); smoke runs only.",
    )
    version: str = "0.1.0"
    push: str | None = Field(
        None, description="Hub dataset repo id to upload to; none: nothing leaves the machine."
    )
    tag: str | None = None


class ScoreSection(Section):
    dataset: str | None = Field(None, description="Dataset folder or Hub repo; default: the publish folder.")
    model: str = "stabilityai/stable-diffusion-3-medium-diffusers"
    preset: Literal["sd3", "sd35"] = "sd3"
    mode: Literal["invert", "noise"] = "invert"
    methods: list[str] = Field(default_factory=lambda: ["anchordiff", "cross_attention", "concept_attention"])
    limit: int | None = None
    out: str = "mcc-workdir/reports"


class PipelineConfig(Section):
    """Everything the MCC flows need; see flows/profiles/*.yaml."""

    profile: str | None = Field(None, description="'smoke', 'full' or a YAML path; other fields override it.")
    workdir: str = Field("mcc-workdir", description="Local folder or fsspec URL shared by all workers.")
    shard_size: int = Field(
        16, ge=1, description="Records per shard (one Prefect task per shard, never per image)."
    )
    fan_out: int = Field(1, ge=1, description="Child flow runs to spread the shards over (run_deployment).")
    deployment: str | None = Field(
        None,
        description="Deployment the child runs use when fan_out > 1 (default: this run's own deployment).",
    )
    plan: PlanConfig = Field(default_factory=PlanConfig)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    scrape: ScrapeConfig = Field(default_factory=ScrapeConfig)
    localize: LocalizeConfig = Field(default_factory=LocalizeConfig)
    segment: SegmentConfig = Field(default_factory=SegmentConfig)
    quality: QualitySection = Field(default_factory=QualitySection)
    review: ReviewSection = Field(default_factory=ReviewSection)
    publish: PublishSection = Field(default_factory=PublishSection)
    score: ScoreSection = Field(default_factory=ScoreSection)

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
    values = yaml.safe_load(text) or {}
    if not isinstance(values, dict):
        raise ValueError(
            f"profile {profile!r} must be a YAML mapping of sections (workdir, plan, generate, ...)"
        )
    return values


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
