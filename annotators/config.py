"""The annotation stages' configuration: a profile's ``localize:``, ``segment:``, ``quality:`` and
``review:`` sections, and the flags of ``mcc annotate`` / ``mcc review``.

Light on purpose (pydantic only): profiles and the CLI build them without importing torch.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class LocalizeConfig(BaseModel):
    """Which backend finds each concept's boxes, and how."""

    model_config = ConfigDict(extra="forbid")

    backend: str = Field(
        "qwen2_5_vl",
        description="A registered localiser backend (manifests.registry.LOCALIZERS) or 'module:factory'.",
    )
    model: str = Field("Qwen/Qwen2.5-VL-7B-Instruct", description="Hub id, local folder, or 'tiny'.")
    revision: str | None = Field(None, description="Hub revision of the localiser.")
    device: str | None = Field(None, description="cuda, cuda:1, cpu (default: CUDA when available).")
    dtype: str | None = Field(None, description="bfloat16 (default on CUDA) or float32 (CPU).")
    batch_size: int = Field(4, ge=1, description="Images per generate call.")
    max_new_tokens: int = Field(512, ge=1, description="The answer's token budget.")
    constrained: bool = Field(True, description="Constrain answers to the grounding JSON schema.")
    every_concept: bool = Field(
        False,
        description="Constrained answers start with one box per concept (generated images name every "
        "concept); otherwise a concept the model does not find rejects the record.",
    )
    box_frame: Literal["input_pixels", "relative_1000"] = Field(
        "input_pixels",
        description="How the model writes boxes: pixels of its input (Qwen2.5-VL) or a 0-1000 grid (Qwen2/3-VL).",
    )
    min_pixels: int | None = Field(None, ge=1, description="Least pixels of the VLM input.")
    max_pixels: int | None = Field(None, ge=1, description="Most pixels of the VLM input.")
    limit: int | None = Field(
        None, ge=1, description="At most this many records per run (mcc annotate and the rebuild flow)."
    )
    options: dict[str, Any] = Field(default_factory=dict, description="Options only a custom backend reads.")


class SegmentConfig(BaseModel):
    """Which backend predicts each concept's mask from its boxes."""

    model_config = ConfigDict(extra="forbid")

    backend: str = Field(
        "sam2", description="A registered mask backend (manifests.registry.SEGMENTERS) or 'module:factory'."
    )
    model: str = Field(
        "configs/sam2.1/sam2.1_hiera_l.yaml:checkpoints/sam2.1_hiera_large.pt",
        description="SAM2: 'tiny' or CONFIG:CHECKPOINT.",
    )
    device: str | None = Field(None, description="cuda, cuda:1, cpu (default: CUDA when available).")
    options: dict[str, Any] = Field(default_factory=dict, description="Options only a custom backend reads.")

    @model_validator(mode="after")
    def _sam2_reference(self) -> SegmentConfig:
        """The sam2 backend's model is 'tiny' or CONFIG:CHECKPOINT: checked before any model loads."""
        if self.backend == "sam2":
            split_sam2_model(self.model)
        return self


def split_sam2_model(value: str) -> tuple[str, str] | None:
    """A SAM2 model reference: None for ``tiny``, (config, checkpoint) for ``CONFIG:CHECKPOINT``; else ValueError."""
    if value == "tiny":
        return None
    config, sep, checkpoint = value.partition(":")
    if not sep or not config or not checkpoint:
        raise ValueError(
            f"segment.model {value!r}: give 'tiny' or CONFIG:CHECKPOINT, e.g. "
            "configs/sam2.1/sam2.1_hiera_l.yaml:/models/sam2.1_hiera_large.pt"
        )
    return config, checkpoint


class ReviewConfig(BaseModel):
    """Where segmented records go for human review."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["labelstudio", "auto"] = Field(
        "labelstudio",
        description="'labelstudio': push segmented records for human review. 'auto': skip review; records are "
        "published with review status 'machine' (offline smoke runs only).",
    )
    url: str | None = Field(None, description="Label Studio URL (default: $LABEL_STUDIO_URL).")
    project: str = Field("MCC review", min_length=3, max_length=50, description="Label Studio project title.")
    batch_size: int = Field(100, ge=1, description="Tasks per import request.")
    images: Literal["auto", "local", "upload"] = Field(
        "auto", description="auto | local (the server reads the work dir) | upload."
    )
    limit: int | None = Field(None, ge=1, description="Push at most this many records per run.")
    order: Literal["uncertainty", "id"] = Field(
        "uncertainty",
        description="Push order: 'uncertainty' (lowest task score first, so the least certain masks are "
        "reviewed first) or 'id'.",
    )
    annotators: int | None = Field(
        None,
        ge=1,
        le=10,
        description="Annotations asked per task (Label Studio's overlap); unset: 1 for a new project, an "
        "existing project keeps its own. With more than one, pull decides a task only when that many "
        "annotators agree (same verdict, masks within agreement_iou).",
    )
    agreement_iou: float = Field(
        0.9,
        gt=0,
        le=1,
        description="With several annotators: the mask IoU at which two of them agree on a concept; a task "
        "whose annotators disagree is sent back for one more annotation.",
    )
