"""The quality gate: named checks on a record's boxes and masks before human review.

Where it runs: the segmentation stage (``Sam2Segmenter``) calls the gate on each record
right after SAM2, so a record leaves segmentation either ``segmented`` (every check kept
it) or ``rejected`` with ``rejection.stage == "quality"``. ``QualityGate`` is also a stage
of its own (``run_stage(QualityGate(config), store)``): it re-runs the checks on records
already ``segmented`` (new thresholds, or the VLM second look added later), reading
their stored masks. Either way the run's counts are written to ``reports/quality-*.json``.

Each check takes a ``GateSample`` and returns ``None`` (keep) or a ``Failure`` (a short
fixed reason code and a detail naming the concepts). Thresholds live in ``QualityConfig``;
a threshold set to ``None`` switches its check off. In order:

==================  ======================  ============================================
check               reason                  keeps the record when
==================  ======================  ============================================
masks_present       ``missing_mask``        every concept has a non-empty mask
min_sam_score       ``low_sam_score``       every concept's SAM score >= ``min_sam_score``
distinct_boxes      ``same_object``         boxes of different concepts have IoU < ``max_box_iou``
masks_overlap       ``masks_overlap``       two concepts' masks share <= ``max_overlap`` of the smaller
mask_in_box         ``mask_outside_box``    >= ``min_inside_box`` of a mask lies in its boxes
mask_fills_box      ``mask_underfills_box`` each box is >= ``min_box_fill`` covered by its mask
min_area            ``mask_too_small``      each mask covers >= ``min_area_fraction`` of the image
second_look         ``vlm_disagrees``       the VLM says each concept's crop is that concept
==================  ======================  ============================================

Pixels two masks both claim (within the allowed overlap) go to the concept with the
higher SAM score before the last three checks run; the record's history notes how many.
The first failing check is the record's rejection reason; the ``GateReport`` counts every
failure, so a report shows all the reasons a batch was weak for.

Pure numpy: no model imports (the second look takes any object with a ``verify`` method,
e.g. ``annotators.localize.QwenLocalizer``).
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, model_validator

from annotators.grounding import box_iou
from manifests.masks import decode_mask, encode_mask
from manifests.record import SAM_SCORE, Box, Record, State
from manifests.store import ManifestStore
from manifests.workdir import WorkDir

STAGE = "quality"


THRESHOLDS = (
    "min_sam_score",
    "max_box_iou",
    "max_overlap",
    "min_inside_box",
    "min_box_fill",
    "min_area_fraction",
)
"""The thresholds of ``QualityConfig`` (``None`` switches a check off)."""


class QualityConfig(BaseModel):
    """Thresholds of the gate; ``None`` switches a check off. Fractions are in [0, 1]."""

    model_config = ConfigDict(extra="forbid")

    min_sam_score: float | None = Field(0.5, ge=0, le=1, description="lowest SAM predicted IoU of a concept")
    max_box_iou: float | None = Field(
        0.7, ge=0, le=1, description="boxes of two concepts this similar are one object"
    )
    max_overlap: float | None = Field(
        0.1, ge=0, le=1, description="largest shared part of two masks, of the smaller"
    )
    min_inside_box: float | None = Field(0.9, ge=0, le=1, description="least part of a mask inside its boxes")
    min_box_fill: float | None = Field(0.2, ge=0, le=1, description="least part of each box its mask covers")
    min_area_fraction: float | None = Field(0.003, ge=0, le=1, description="least mask area, of the image")
    second_look: bool = Field(False, description="ask the VLM about each concept's crop (needs a verifier)")
    crop_padding: float = Field(
        0.1, ge=0, le=1, description="crop margin for the second look, of the box size"
    )

    preset: Literal["default", "permissive"] = Field(
        "default",
        description="'permissive': every threshold not given is off (smoke runs with random tiny models)",
    )

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, data: Any) -> Any:
        """``preset: permissive`` starts from ``permissive()``'s thresholds; thresholds given win."""
        if isinstance(data, dict) and data.get("preset") == "permissive":
            data = {**{name: None for name in THRESHOLDS}, **data}
        return data

    @classmethod
    def permissive(cls) -> QualityConfig:
        """Every threshold off: only an empty mask rejects. For smoke runs with random tiny
        models, whose masks are noise that the real thresholds would (rightly) reject."""
        return cls(
            preset="permissive",
        )


@dataclass
class GateSample:
    """What the checks look at, for one record.

    ``masks[name]``: (H, W) bool, the stored image's size; ``boxes[name]``: XYXY in the
    stored image's pixels; ``scores[name]``: the SAM score of the concept's mask;
    ``image_size``: (width, height).
    """

    concepts: list[str]
    boxes: dict[str, list[Box]]
    masks: dict[str, np.ndarray | None]
    scores: dict[str, float]
    image_size: tuple[int, int]

    @classmethod
    def from_record(cls, record: Record) -> GateSample:
        """The sample of a record whose masks and scores are stored on it."""
        if record.image is None:
            raise ValueError(f"record {record.id} has no image; the gate needs its size")
        return cls(
            concepts=record.concept_names,
            boxes={c.name: list(c.boxes) for c in record.concepts},
            masks={c.name: decode_mask(c.mask) if c.mask is not None else None for c in record.concepts},
            scores={c.name: c.scores.get(SAM_SCORE, 0.0) for c in record.concepts},
            image_size=(record.image.width, record.image.height),
        )


@dataclass(frozen=True)
class Failure:
    """Why a check does not keep a record: a fixed ``reason`` code and a readable ``detail``."""

    check: str
    reason: str
    detail: str


Check = Callable[[GateSample, QualityConfig], Failure | None]


# -- the checks ------------------------------------------------------------------------------
def _box_mask(box: Box, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) bool, True on the pixels whose centres lie in ``box``."""
    height, width = shape
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    region = np.zeros(shape, dtype=bool)
    region[max(0, y1) : min(height, y2), max(0, x1) : min(width, x2)] = True
    return region


def masks_present(sample: GateSample, config: QualityConfig) -> Failure | None:
    missing = [c for c in sample.concepts if sample.masks.get(c) is None or not sample.masks[c].any()]
    if missing:
        return Failure("masks_present", "missing_mask", f"no mask for {missing}")
    return None


def min_sam_score(sample: GateSample, config: QualityConfig) -> Failure | None:
    if config.min_sam_score is None:
        return None
    low = {
        c: round(sample.scores.get(c, 0.0), 3)
        for c in sample.concepts
        if sample.scores.get(c, 0.0) < config.min_sam_score
    }
    if low:
        return Failure("min_sam_score", "low_sam_score", f"SAM score below {config.min_sam_score}: {low}")
    return None


def distinct_boxes(sample: GateSample, config: QualityConfig) -> Failure | None:
    if config.max_box_iou is None:
        return None
    pairs = []
    for i, a in enumerate(sample.concepts):
        for b in sample.concepts[i + 1 :]:
            iou = max(
                (box_iou(p, q) for p in sample.boxes.get(a, []) for q in sample.boxes.get(b, [])), default=0.0
            )
            if iou >= config.max_box_iou:
                pairs.append(f"{a}/{b} IoU {iou:.2f}")
    if pairs:
        return Failure("distinct_boxes", "same_object", f"boxes of different concepts on one object: {pairs}")
    return None


def overlap_fraction(a: np.ndarray, b: np.ndarray) -> float:
    """Pixels both masks hold, as a fraction of the smaller mask (0 when either is empty)."""
    smaller = min(int(a.sum()), int(b.sum()))
    return float(np.logical_and(a, b).sum()) / smaller if smaller else 0.0


def masks_overlap(sample: GateSample, config: QualityConfig) -> Failure | None:
    if config.max_overlap is None:
        return None
    pairs = []
    names = [c for c in sample.concepts if sample.masks.get(c) is not None]
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            fraction = overlap_fraction(sample.masks[a], sample.masks[b])
            if fraction > config.max_overlap:
                pairs.append(f"{a}/{b} {fraction:.0%}")
    if pairs:
        return Failure(
            "masks_overlap", "masks_overlap", f"masks share more than {config.max_overlap:.0%}: {pairs}"
        )
    return None


def _union_of_boxes(boxes: Sequence[Box], shape: tuple[int, int]) -> np.ndarray:
    region = np.zeros(shape, dtype=bool)
    for box in boxes:
        region |= _box_mask(box, shape)
    return region


def mask_in_box(sample: GateSample, config: QualityConfig) -> Failure | None:
    if config.min_inside_box is None:
        return None
    outside = {}
    for c in sample.concepts:
        mask = sample.masks.get(c)
        if mask is None or not mask.any():
            continue
        inside = (
            float(np.logical_and(mask, _union_of_boxes(sample.boxes.get(c, []), mask.shape)).sum())
            / mask.sum()
        )
        if inside < config.min_inside_box:
            outside[c] = f"{inside:.0%}"
    if outside:
        return Failure(
            "mask_in_box",
            "mask_outside_box",
            f"mask part inside its boxes below {config.min_inside_box:.0%}: {outside}",
        )
    return None


def mask_fills_box(sample: GateSample, config: QualityConfig) -> Failure | None:
    if config.min_box_fill is None:
        return None
    thin = {}
    for c in sample.concepts:
        mask = sample.masks.get(c)
        if mask is None:
            continue
        for box in sample.boxes.get(c, []):
            region = _box_mask(box, mask.shape)
            area = int(region.sum())
            fill = float(np.logical_and(mask, region).sum()) / area if area else 0.0
            if fill < config.min_box_fill:
                thin[c] = f"{fill:.0%}"
    if thin:
        return Failure(
            "mask_fills_box",
            "mask_underfills_box",
            f"boxes covered less than {config.min_box_fill:.0%}: {thin}",
        )
    return None


def min_area(sample: GateSample, config: QualityConfig) -> Failure | None:
    width, height = sample.image_size
    floor = (config.min_area_fraction or 0.0) * width * height
    small = {}
    for c in sample.concepts:
        mask = sample.masks.get(c)
        area = int(mask.sum()) if mask is not None else 0
        if area == 0 or area < floor:
            small[c] = f"{area / (width * height):.2%}"
    if small:
        return Failure(
            "min_area",
            "mask_too_small",
            f"mask area below {config.min_area_fraction or 0:.2%} of the image: {small}",
        )
    return None


BEFORE_RESOLUTION: list[Check] = [masks_present, min_sam_score, distinct_boxes, masks_overlap]
AFTER_RESOLUTION: list[Check] = [mask_in_box, mask_fills_box, min_area]
CHECKS: dict[str, Check] = {check.__name__: check for check in BEFORE_RESOLUTION + AFTER_RESOLUTION}


def resolve_overlaps(
    masks: dict[str, np.ndarray | None], scores: dict[str, float]
) -> tuple[dict, dict[str, int]]:
    """Give every pixel two or more masks hold to the highest-scoring of them.

    Returns the new masks (copies, (H, W) bool) and, per concept, how many pixels it lost.
    Ties go to the concept listed first.
    """
    names = [c for c, m in masks.items() if m is not None]
    order = sorted(names, key=lambda c: -scores.get(c, 0.0))  # stable: ties keep listing order
    taken = None
    resolved: dict[str, np.ndarray | None] = dict(masks)
    lost: dict[str, int] = {}
    for name in order:
        mask = masks[name]
        if taken is None:
            taken = np.zeros_like(mask, dtype=bool)
        contested = np.logical_and(mask, taken)
        if contested.any():
            lost[name] = int(contested.sum())
        resolved[name] = np.logical_and(mask, ~taken)
        taken |= mask
    return resolved, lost


# -- the gate ----------------------------------------------------------------------------------
class Verifier(Protocol):
    """The VLM of the second look (``QwenLocalizer`` is one)."""

    def verify(
        self, crops: Sequence[Image.Image], concepts: Sequence[str], others: Sequence[Sequence[str]]
    ) -> list[bool]: ...


@dataclass
class GateResult:
    """The gate's verdict on one record: ``failures`` empty means keep; ``masks`` are the
    masks to store (contested pixels resolved); ``lost_pixels`` per concept from that."""

    failures: list[Failure]
    masks: dict[str, np.ndarray | None]
    lost_pixels: dict[str, int] = field(default_factory=dict)

    @property
    def keep(self) -> bool:
        return not self.failures


@dataclass
class GateReport:
    """Counts over the records a gate saw: kept, rejected by first reason, every failure."""

    seen: int = 0
    kept: int = 0
    rejected_by: Counter = field(default_factory=Counter)
    failures: Counter = field(default_factory=Counter)
    overlaps_resolved: int = 0

    def add(self, result: GateResult) -> None:
        self.seen += 1
        self.kept += result.keep
        if result.failures:
            self.rejected_by[result.failures[0].reason] += 1
        self.failures.update(f.reason for f in result.failures)
        self.overlaps_resolved += bool(result.lost_pixels)

    def as_dict(self) -> dict:
        return {
            "seen": self.seen,
            "kept": self.kept,
            "rejected_by": dict(self.rejected_by),
            "failures": dict(self.failures),
            "overlaps_resolved": self.overlaps_resolved,
        }


class QualityGate:
    """Runs the checks of ``config`` (and the optional VLM second look) on records."""

    stage = STAGE

    def __init__(self, config: QualityConfig | None = None, verifier: Verifier | None = None):
        self.config = config or QualityConfig()
        if self.config.second_look and verifier is None:
            raise ValueError(
                "QualityConfig.second_look needs a verifier (e.g. the QwenLocalizer); "
                "pass verifier=... or set second_look=False"
            )
        self.verifier = verifier
        self.report = GateReport()  # this run's counts (``finish`` writes them and starts a new one)
        self.last_report = GateReport()  # the counts of the run ``finish`` last closed

    def evaluate(self, sample: GateSample, image: Image.Image | None = None) -> GateResult:
        """All checks on one sample; ``image`` (the stored image) is needed for the second look."""
        failures = [f for check in BEFORE_RESOLUTION if (f := check(sample, self.config)) is not None]
        masks, lost = resolve_overlaps(sample.masks, sample.scores)
        resolved = GateSample(sample.concepts, sample.boxes, masks, sample.scores, sample.image_size)
        failures += [f for check in AFTER_RESOLUTION if (f := check(resolved, self.config)) is not None]
        if not failures and self.config.second_look and self.verifier is not None:
            if image is None:
                raise ValueError(
                    "the second look needs the record's image: pass image=store.open_image(record)"
                )
            failure = self.second_look(resolved, image)
            if failure is not None:
                failures.append(failure)
        return GateResult(failures=failures, masks=masks, lost_pixels=lost)

    def second_look(self, sample: GateSample, image: Image.Image) -> Failure | None:
        """Show the VLM each concept's crop (its boxes' union, padded); keep if it says yes to all."""
        crops = [crop_concept(image, sample.boxes[c], self.config.crop_padding) for c in sample.concepts]
        others = [[o for o in sample.concepts if o != c] for c in sample.concepts]
        verdicts = self.verifier.verify(crops, sample.concepts, others)
        refused = [c for c, ok in zip(sample.concepts, verdicts, strict=True) if not ok]
        if refused:
            return Failure("second_look", "vlm_disagrees", f"the VLM does not confirm {refused}")
        return None

    def apply(self, record: Record, result: GateResult, params: dict | None = None) -> Record:
        """Write the verdict on the record: resolved masks stored; ``segmented`` or rejected."""
        params = {**(params or {}), "quality": self.config.model_dump()}
        for concept in record.concepts:
            mask = result.masks.get(concept.name)
            if mask is not None:
                concept.mask = encode_mask(mask)
        if result.lost_pixels:
            record.log(
                STAGE,
                "overlap resolved: "
                + ", ".join(
                    f"{n} lost {k} px to a higher-scoring mask" for n, k in result.lost_pixels.items()
                ),
            )
        self.report.add(result)
        if result.failures:
            first = result.failures[0]
            detail = "; ".join(f"{f.reason}: {f.detail}" for f in result.failures)
            record.reject(STAGE, first.reason, detail, params)
        else:
            record.advance(State.segmented, STAGE, params, note="passed the quality gate")
        return record

    # -- the stage (manifests.stage): re-check stored masks -----------------------------------
    name = STAGE
    accepts = (State.segmented,)
    batch_size = 1

    def run(self, batch: list[Record], store: ManifestStore) -> list[Record]:
        """Re-check ``segmented`` records from their stored masks; failing ones become rejected."""
        for record in batch:
            try:
                sample = GateSample.from_record(record)
                image = store.open_image(record) if self.config.second_look else None
            except (ValueError, OSError) as error:
                record.reject(STAGE, "unreadable", f"{type(error).__name__}: {error}")
                continue
            self.apply(record, self.evaluate(sample, image))
        return batch

    def finish(self, store: ManifestStore) -> dict[str, bytes]:
        """This run's ``GateReport`` as ``reports/quality-<UTC time>-<random>.json`` (none if it saw nothing)."""
        report, self.report = self.report, GateReport()
        self.last_report = report
        if not report.seen:
            return {}
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + f"-{uuid.uuid4().hex[:6]}"
        return {WorkDir.quality_report(stamp): json.dumps(report.as_dict(), indent=1).encode()}


def crop_concept(image: Image.Image, boxes: Sequence[Box], padding: float, min_side: int = 28) -> Image.Image:
    """The union of ``boxes`` (stored-image XYXY), widened by ``padding`` of its size on each
    side, clipped to the image, at least ``min_side`` pixels a side (the VLM's smallest input)."""
    x1 = min(b[0] for b in boxes)
    y1 = min(b[1] for b in boxes)
    x2 = max(b[2] for b in boxes)
    y2 = max(b[3] for b in boxes)
    pad_x, pad_y = (x2 - x1) * padding, (y2 - y1) * padding
    left, top = max(0, int(x1 - pad_x)), max(0, int(y1 - pad_y))
    right, bottom = min(image.width, int(np.ceil(x2 + pad_x))), min(image.height, int(np.ceil(y2 + pad_y)))
    crop = image.crop((left, top, max(right, left + 1), max(bottom, top + 1)))
    if min(crop.size) < min_side:
        scale = min_side / min(crop.size)
        crop = crop.resize(
            (max(min_side, round(crop.width * scale)), max(min_side, round(crop.height * scale)))
        )
    return crop
