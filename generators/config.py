"""The generation stage's configuration: a profile's ``generate:`` section and ``mcc generate``'s flags.

Light on purpose (pydantic only): profiles and the CLI build it without importing torch.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class GenerateConfig(BaseModel):
    """Which backend generates the images of planned scenes, and how."""

    model_config = ConfigDict(extra="forbid")

    backend: str = Field(
        "flux",
        description="A registered generator backend (manifests.registry.GENERATORS) or 'module:factory'.",
    )
    model: str = Field("black-forest-labs/FLUX.1-dev", description="Hub id, local folder, or 'tiny'.")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    size: int | None = Field(
        None, ge=16, description="Image side in pixels, a multiple of 16 (default 1024; 128 for tiny)."
    )
    steps: int = Field(28, ge=1, description="Denoising steps.")
    guidance: float = Field(3.5, description="FLUX guidance (distilled guidance scale).")
    batch_size: int = Field(1, ge=1, description="Images per pipeline call.")
    device: str | None = Field(None, description="cuda, cuda:1, cpu (default: cuda when available).")
    dtype: str | None = Field(None, description="bfloat16 (default), float16 or float32 (tiny: float32).")
    cpu_offload: bool = Field(False, description="Keep only the active sub-model on the GPU (24 GB cards).")
    vae_tiling: bool = Field(False, description="Decode the VAE in tiles (less memory).")
    groups: list[str] | None = Field(
        None, description="Only the records of these group ids (mcc generate and the rebuild flow)."
    )
    limit: int | None = Field(
        None, ge=1, description="At most this many records per run (mcc generate and the rebuild flow)."
    )
    options: dict[str, Any] = Field(default_factory=dict, description="Options only a custom backend reads.")
