"""The scoring configuration: a profile's ``score:`` and ``sweep:`` sections and the flags of
``mcc score`` / ``mcc sweep``. Light on purpose (pydantic only): no torch import."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Preset = Literal["sd3", "sd35"]
Mode = Literal["invert", "noise"]
Benchmark = Literal["auto", "mcc", "imagenet-seg", "voc"]
Subset = Literal["default", "two_concepts", "three_concepts"]


class _Backbone(BaseModel):
    """What both sections share: the dataset, the backbone and how images are read."""

    model_config = ConfigDict(extra="forbid")

    dataset: str | None = Field(
        None, description="An MCC folder or Hub repo id; default: the publish folder."
    )
    out: str | None = Field(None, description="Output folder; run again with the same settings to resume.")
    preset: Preset = Field("sd3", description="Backbone preset: sd3 (SD3-medium) or sd35 (SD3.5-large).")
    model: str | None = Field(
        None, description="Diffusers repo id, local folder, or 'tiny'; default: the preset's."
    )
    revision: str | None = Field(None, description="Model revision (git ref on the Hub).")
    mode: Mode = Field("invert", description="How existing images are read: invert (paper) or noise (fast).")
    limit: int | None = Field(
        None, ge=1, description="Score only N images, sampled stratified by subset with a fixed seed."
    )
    subset: Subset = Field("default", description="MCC config: default, two_concepts or three_concepts.")
    gate_quantile: float = Field(0.98, gt=0, lt=1, description="Quantile of the attention gate tau_W.")
    seed: int = Field(0, description="Seed of the noise (mode noise) and of the tiny model.")
    device: str | None = Field(None, description="Torch device, e.g. cuda or cpu (default: automatic).")
    dtype: str | None = Field(
        None, description="bfloat16, float16 or float32 (default: bfloat16 on CUDA, float32 on CPU and tiny)."
    )


class ScoreConfig(_Backbone):
    """``mcc score`` and the score-benchmark flow: one report per method."""

    methods: list[str] = Field(
        default_factory=lambda: ["anchordiff"],
        description="anchordiff, anchordiff_multi, cross_attention, concept_attention, seg4diff, no_gate, "
        "no_wcos, or module:function; several are scored together, one attention recording per image.",
    )
    benchmark: Benchmark = Field("auto", description="auto (from the dataset), mcc, imagenet-seg or voc.")
    layers: list[int] | None = Field(None, description="Graph layers, e.g. [9, 18] (default: the preset's).")
    steps: int = Field(160, ge=1, description="Propagation steps N_diff.")
    prompt_template: str | None = Field(
        None, description="Prompt for existing images, with {concepts} (default: 'a photo of {concepts}')."
    )
    class_names: str | None = Field(
        None, description="ImageNet-Segmentation / VOC: JSON {class id: queried name}."
    )
    split: str | None = Field(
        None, description="Split scored: MCC test (default) or validation; VOC val (default)."
    )
    conceptattention_compat: bool = Field(
        False,
        description="ImageNet-Segmentation only: report ConceptAttention's Acc/(2-Acc) as mIoU and Chefer's "
        "AP of constant maps (not default).",
    )
    protocol_resolution: int | None = Field(
        None,
        ge=1,
        description="Score at NxN (masks nearest-neighbour, heatmaps bilinear); 224 = Chefer et al.'s "
        "protocol. Default: the masks' own size.",
    )
    retry_failed: bool = Field(False, description="Score again the pairs an earlier run recorded as failed.")
    qualitative: int = Field(6, ge=0, description="Images kept for the qualitative figure.")
    compare: list[str] = Field(
        default_factory=list,
        description="Other `mcc score` output folders to show beside this one (mcc score only: the flow "
        "scores every method of `methods` into folders of its own).",
    )


class SweepConfig(_Backbone):
    """``mcc sweep``: layers, layer pairs and step counts from one recording per image."""

    method: Literal[
        "anchordiff",
        "anchordiff_multi",
        "no_gate",
        "no_wcos",
        "seg4diff",
        "concept_attention",
        "cross_attention",
    ] = Field(
        "anchordiff", description="Graph methods sweep graph layers, pairs and steps; baselines their blocks."
    )
    thresholds: list[float] | None = Field(
        None, description="anchordiff_multi's anchor thresholds (default 0.3, 0.4, ..., 0.9)."
    )
    split: str = Field("validation", description="MCC split the sweep tunes on (default validation).")
    allow_test: bool = Field(
        False, description="Allow sweeping on the test split (tuning on test inflates every reported figure)."
    )
    layers: Literal["all"] | list[int] = Field(
        "all", description="Single graph layers to sweep: 'all' or a list."
    )
    pair_layers: list[int] | None = Field(
        None, description="Sweep every pair of these layers (default: the paper's top-8 for SD3/SD3.5)."
    )
    pairs: list[tuple[int, int]] | None = Field(
        None, description="Explicit pairs instead, e.g. [[9, 18], [5, 9]]."
    )
    steps: list[int] = Field(
        default_factory=lambda: [5, 10, 20, 40, 80, 120, 160, 240, 320, 480, 640],
        description="Propagation step counts.",
    )
