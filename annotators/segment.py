"""Segmentation: SAM2 turns each concept's boxes into one clean mask; then the quality gate.

``Sam2Segmenter(config, checkpoint).segment(records, store)`` takes records in state
``localized``. Per record: one ``set_image`` (the image embedding, computed once), then
all boxes of all its concepts in one ``predict`` call (``multimask_output=False``). The
instance masks of one concept are merged (logical or), islands and holes smaller than a
fraction of the image are cleaned, and the result is stored as COCO RLE with the SAM
score (``concept.scores["sam"]``: the lowest predicted IoU among the concept's boxes).
Then the quality gate (``annotators.quality``) decides: ``segmented``, or ``rejected``
with stage ``quality``. A record SAM2 cannot process is ``rejected`` by stage ``segment``
(``image_unreadable`` or ``model_error``), and the batch goes on.

``checkpoint=None`` builds the configuration with random weights (seeded): with
``configs/sam2.1/sam2.1_hiera_t.yaml`` that is the offline miniature the tests and the
smoke profile use; its masks are noise.
"""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra import initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.initialize import get_gh_backup, restore_gh_from_backup
from scipy import ndimage

from annotators.config import SegmentConfig, split_sam2_model
from annotators.quality import GateSample, QualityConfig, QualityGate
from manifests.masks import encode_mask
from manifests.record import SAM_SCORE, Record, State
from manifests.store import ManifestStore

logger = logging.getLogger(__name__)

STAGE = "segment"
DEFAULT_CONFIG = "configs/sam2.1/sam2.1_hiera_l.yaml"
TINY_CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"


def sam2_configs() -> list[str]:
    """The configuration names the installed ``sam2`` package ships (``configs/...yaml``)."""
    root = resources.files("sam2")
    return sorted(
        f"configs/{folder.name}/{f.name}"
        for folder in root.joinpath("configs").iterdir()
        if folder.is_dir()
        for f in folder.iterdir()
        if f.name.endswith(".yaml")
    )


def build_sam2_model(config: str, checkpoint: str | None, device: torch.device, seed: int = 0):
    """A SAM2 model from a packaged config name and a checkpoint path (None: seeded random weights).

    Hydra is initialised on the ``sam2`` config module for the build only; whatever global
    Hydra state existed before is restored afterwards.
    """
    from sam2.build_sam import build_sam2  # imports Hydra config machinery

    if config not in sam2_configs():
        raise ValueError(
            f"unknown SAM2 config {config!r}; the sam2 package ships: {', '.join(sam2_configs())}"
        )
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise FileNotFoundError(
            f"SAM2 checkpoint {checkpoint!r} does not exist; download e.g. "
            "sam2.1_hiera_large.pt from the SAM2 release, or pass no checkpoint for random weights"
        )
    backup = get_gh_backup()
    GlobalHydra.instance().clear()
    rng = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        with initialize_config_module("sam2", version_base="1.2"):
            model = build_sam2(config, ckpt_path=checkpoint, device=str(device))
    finally:
        torch.random.set_rng_state(rng)
        if backup is not None:
            restore_gh_from_backup(backup)
    return model


def normalise_sam_output(
    masks: np.ndarray, scores: np.ndarray, num_boxes: int
) -> tuple[np.ndarray, np.ndarray]:
    """SAM2 ``predict`` output -> ((N, H, W) bool masks, (N,) float scores).

    With ``multimask_output=False`` one box gives masks (1, H, W) and scores (1,); N boxes
    give (N, 1, H, W) and (N, 1). Masks come as float 0/1 (or logits with
    ``return_logits``): anything > 0 is foreground.
    """
    masks = np.asarray(masks)
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    if masks.ndim == 4:
        if masks.shape[1] != 1:
            raise ValueError(
                f"expected one mask per box, got masks of shape {masks.shape}; "
                "call predict with multimask_output=False"
            )
        masks = masks[:, 0]
    if masks.ndim != 3 or masks.shape[0] != num_boxes or scores.shape[0] != num_boxes:
        raise ValueError(f"{num_boxes} boxes gave masks {masks.shape} and scores {scores.shape}")
    return masks > 0, scores


def clean_mask(mask: np.ndarray, min_island: int, max_hole: int) -> np.ndarray:
    """Drop connected foreground parts smaller than ``min_island`` pixels and fill background
    holes (parts not touching the border) smaller than ``max_hole`` pixels. (H, W) bool in and out.

    Connectivity: 8 for foreground, 4 for background (so a diagonal gap does not make a hole).
    """
    mask = np.asarray(mask, dtype=bool)
    if min_island > 0 and mask.any():
        labels, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
        sizes = np.bincount(labels.ravel(), minlength=count + 1)
        keep = sizes >= min_island
        keep[0] = False
        mask = keep[labels]
    if max_hole > 0 and not mask.all():
        labels, count = ndimage.label(~mask)
        sizes = np.bincount(labels.ravel(), minlength=count + 1)
        border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
        fill = sizes < max_hole
        fill[0] = False
        fill[border] = False
        mask = mask | fill[labels]
    return mask


class Sam2Segmenter:
    """One mask per concept from SAM2 box prompts, then the quality gate.

    Args:
      config: a config name of the installed ``sam2`` package (see ``sam2_configs()``).
      checkpoint: a local ``.pt`` file, or None for seeded random weights.
      device: default CUDA when available.
      dtype: autocast dtype on CUDA (default bfloat16); CPU runs in float32.
      gate: the quality gate applied after segmentation (default: ``QualityGate()``).
      min_island_fraction, max_hole_fraction: cleaning thresholds, as fractions of the
        image area (defaults 1e-4: about 100 px at 1024 x 1024); 0 switches one off.
      seed: seed of random weights.
    """

    stage = STAGE

    def __init__(
        self,
        config: str = DEFAULT_CONFIG,
        checkpoint: str | None = None,
        *,
        device: str | None = None,
        dtype: torch.dtype | None = None,
        gate: QualityGate | None = None,
        min_island_fraction: float = 1e-4,
        max_hole_fraction: float = 1e-4,
        seed: int = 0,
    ):
        from sam2.sam2_image_predictor import SAM2ImagePredictor

        if not (0 <= min_island_fraction < 1 and 0 <= max_hole_fraction < 1):
            raise ValueError("min_island_fraction and max_hole_fraction are fractions of the image in [0, 1)")
        self.config = config
        self.checkpoint = str(checkpoint) if checkpoint is not None else None
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = dtype or (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        self.gate = gate or QualityGate()
        self.min_island_fraction = min_island_fraction
        self.max_hole_fraction = max_hole_fraction
        if checkpoint is None:
            logger.warning("SAM2 %s with random weights (no checkpoint): its masks are noise", config)
        self.model = build_sam2_model(config, self.checkpoint, self.device, seed)
        self.predictor = SAM2ImagePredictor(self.model)

    def params(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "checkpoint": self.checkpoint,
            "min_island_fraction": self.min_island_fraction,
            "max_hole_fraction": self.max_hole_fraction,
        }

    def _autocast(self):
        if self.device.type == "cuda" and self.dtype != torch.float32:
            return torch.autocast("cuda", dtype=self.dtype)
        return torch.autocast("cpu", enabled=False)

    @torch.inference_mode()
    def predict(self, image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Masks for N boxes on one image: one embedding, one prompt-decoder call.

        Args:
          image: (H, W, 3) uint8 RGB.
          boxes: (N, 4) XYXY in the image's pixels, N >= 1.
        Returns:
          masks (N, H, W) bool and scores (N,) float32 (SAM's predicted IoU).
        """
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        if len(boxes) == 0:
            raise ValueError("predict needs at least one box")
        with self._autocast():
            self.predictor.set_image(image)
            masks, scores, _ = self.predictor.predict(box=boxes, multimask_output=False)
        return normalise_sam_output(masks, scores, len(boxes))

    def masks_for(self, record: Record, image: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """Per concept: its merged, cleaned (H, W) bool mask and its SAM score (lowest of its boxes)."""
        owners = [c.name for c in record.concepts for _ in c.boxes]
        boxes = np.array([box for c in record.concepts for box in c.boxes], dtype=np.float32)
        masks, scores = self.predict(image, boxes)
        area = image.shape[0] * image.shape[1]
        min_island = int(self.min_island_fraction * area)
        max_hole = int(self.max_hole_fraction * area)
        merged: dict[str, np.ndarray] = {}
        concept_scores: dict[str, float] = {}
        for name in record.concept_names:
            mine = [i for i, owner in enumerate(owners) if owner == name]
            merged[name] = clean_mask(np.any(masks[mine], axis=0), min_island, max_hole)
            concept_scores[name] = float(scores[mine].min())
        return merged, concept_scores

    # -- the stage (manifests.stage) ----------------------------------------------------------
    name = STAGE
    accepts = (State.localized,)
    batch_size = 1

    def run(self, batch: list[Record], store: ManifestStore) -> list[Record]:
        """Masks for ``localized`` records, then the quality gate: ``segmented`` or rejected."""
        for record in batch:
            self._segment_one(record, store)
        return batch

    def finish(self, store: ManifestStore) -> dict[str, bytes]:
        """The quality gate's report of this run, ``reports/quality-<time>.json``."""
        return self.gate.finish(store)

    def _segment_one(self, record: Record, store: ManifestStore) -> None:
        params = self.params()
        if not all(c.boxes for c in record.concepts):
            record.reject(STAGE, "no_box", "a localized record without boxes for every concept", params)
            return
        try:
            pil_image = store.open_image(record)
        except Exception as error:  # missing file, truncated PNG
            record.reject(STAGE, "image_unreadable", f"{type(error).__name__}: {error}", params)
            return
        try:
            masks, scores = self.masks_for(record, np.array(pil_image))
        except Exception as error:  # out of memory, a box SAM2 cannot take, ...
            logger.exception("SAM2 failed on %s", record.id)
            record.reject(STAGE, "model_error", f"{type(error).__name__}: {error}", params)
            return
        for concept in record.concepts:
            concept.mask = encode_mask(masks[concept.name])
            concept.scores[SAM_SCORE] = scores[concept.name]
        record.log(STAGE, "masks from SAM2", params)
        sample = GateSample(
            record.concept_names,
            {c.name: list(c.boxes) for c in record.concepts},
            dict(masks),
            scores,
            pil_image.size,
        )
        try:
            result = self.gate.evaluate(sample, pil_image)
        except Exception as error:  # the second look's VLM failed
            record.reject(QualityGate.stage, "gate_error", f"{type(error).__name__}: {error}", params)
            return
        self.gate.apply(record, result)


def from_config(
    config: SegmentConfig, *, quality: QualityConfig | None = None, verifier=None
) -> Sam2Segmenter:
    """The ``sam2`` backend of ``manifests.registry.SEGMENTERS``: SAM2 from ``config.model``, then the gate."""
    sam_config, checkpoint = split_sam2_model(config.model) or (TINY_CONFIG, None)
    return Sam2Segmenter(
        sam_config,
        checkpoint,
        device=config.device,
        gate=QualityGate(quality, verifier=verifier),
        **config.options,
    )
