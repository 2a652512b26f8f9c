"""What a record looks like in Label Studio, and back: the labeling config, brush masks, rectangles.

Pure conversions (numpy and XML only, no network), so they are fast to test.

Coordinates and encodings:
- A record's mask is a (H, W) bool array of the stored image (``manifests.masks``).
- A Label Studio brush result holds ``value.rle``: Label Studio's own run-length code of a
  flattened (H, W, 4) uint8 RGBA image whose alpha channel is the mask (255 inside);
  ``original_width`` / ``original_height`` give W and H. 0/1 instead of 0/255 renders
  invisible in the editor, so masks are always written as 0/255.
- A Label Studio rectangle is ``x, y, width, height`` in percent (0-100) of the image
  width and height, (x, y) its top-left corner; a record's box is XYXY pixels.
"""

from __future__ import annotations

import colorsys
import functools
from dataclasses import dataclass
from xml.sax.saxutils import quoteattr

import numpy as np
from label_studio_sdk.converter.brush import decode_rle

from manifests.record import Box

IMAGE = "image"
MASK = "mask"
BOX = "box"
VERDICT = "verdict"
COMMENT = "comment"
REJECT_REASON = "reject_reason"
ACCEPT = "accept"
REJECT = "reject"
REJECT_REASONS = {
    "wrong concept": "wrong_concept",
    "concept missing": "concept_missing",
    "duplicate image": "duplicate_image",
    "unusable image": "unusable_image",
    "other": "other",
}
"""The reasons a reviewer chooses from when rejecting (shown text -> ``ReviewReason`` code)."""

INSTRUCTIONS = """<h3>MCC mask review</h3>
<p>Each image holds 2-3 look-alike concepts (named above the image); each has a coloured machine mask and its box.</p>
<ol>
<li><b>Check every concept's mask</b>: it covers that concept, all of it, and nothing else (not the look-alike).</li>
<li><b>Fix it</b>: select the concept's label, paint with the <b>brush</b> to add, the <b>eraser</b> to remove.
All strokes of one label merge into that concept's mask; half-erased (faint) pixels count as removed.</li>
<li><b>Accept</b> when every mask is right after your corrections, then Submit.</li>
<li><b>Reject</b> when the image cannot be fixed: choose the reason (wrong concept: an object is not what it is
labelled; concept missing: a named concept is not in the image; duplicate image; unusable image: blurry,
watermarked, a collage, not a photo; other) and add a comment if it helps.</li>
</ol>"""
"""The project's instruction page (``expert_instruction``), shown before the first task."""


@functools.cache
def label_colour(index: int) -> str:
    """A hex colour for the concept at position ``index`` of a task: golden-angle hues, so the 2-3
    concepts of one group get far-apart colours (red, blue, green), the same in every task."""
    hue = (index * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}"


MASK_LABELS = "mask_labels"
BOX_LABELS = "box_labels"
HOTKEYED_CONCEPTS = 3
"""The first three concepts of a task get hotkeys: 1-3 select their mask label, 4-6 their box label."""


def task_labels(concepts: list[str]) -> dict[str, list[dict[str, str]]]:
    """The task data behind the dynamic labels of ``LABEL_CONFIG``: exactly this record's concepts.

    ``{"mask_labels": [...], "box_labels": [...]}``, one Label Studio label (``value``, ``background``,
    ``hotkey``) per concept in record order: the concept at position i has colour ``label_colour(i)`` in
    every task (far apart for i = 0, 1, 2), mask hotkey ``i + 1`` and box hotkey ``i + 4`` (first three).
    """
    if not concepts:
        raise ValueError("a review task needs at least one concept name")

    def labels(first_hotkey: int) -> list[dict[str, str]]:
        return [
            {
                "value": name,
                "background": label_colour(i),
                **({"hotkey": str(first_hotkey + i)} if i < HOTKEYED_CONCEPTS else {}),
            }
            for i, name in enumerate(concepts)
        ]

    return {MASK_LABELS: labels(1), BOX_LABELS: labels(1 + HOTKEYED_CONCEPTS)}


def _label_config() -> str:
    reasons = "\n".join(f"    <Choice value={quoteattr(text)}/>" for text in REJECT_REASONS)
    return f"""<View>
  <Header value="Concepts: $concepts"/>
  <Image name="{IMAGE}" value="$image" zoom="true" zoomControl="true" brightnessControl="true"/>
  <Header value="Mask: select a concept (keys 1-3), paint with the brush, remove with the eraser" size="5"/>
  <BrushLabels name="{MASK}" toName="{IMAGE}" value="${MASK_LABELS}"/>
  <Header value="Box: select a concept (keys 4-6), move or redraw its box" size="5"/>
  <RectangleLabels name="{BOX}" toName="{IMAGE}" value="${BOX_LABELS}" opacity="0.1" strokeWidth="2"/>
  <Header value="Verdict: accept the image with its (corrected) masks, or reject it"/>
  <Choices name="{VERDICT}" toName="{IMAGE}" choice="single" required="true" showInline="true">
    <Choice value="{ACCEPT}"/>
    <Choice value="{REJECT}"/>
  </Choices>
  <Choices name="{REJECT_REASON}" toName="{IMAGE}" choice="single" required="true" showInline="true"
           visibleWhen="choice-selected" whenTagName="{VERDICT}" whenChoiceValue="{REJECT}">
{reasons}
  </Choices>
  <TextArea name="{COMMENT}" toName="{IMAGE}" rows="2" maxSubmissions="1" editable="true"
            placeholder="Optional comment (what is wrong, or a note)"/>
</View>"""


LABEL_CONFIG = _label_config()
"""The labeling config of every MCC review project. Its brush and rectangle labels are dynamic (Label
Studio's ``value="$field"``): each task offers exactly the concepts in its own data (``task_labels``),
so no project-wide label list grows with the groups. Also a required verdict (``accept`` / ``reject``), a
required reason once ``reject`` is chosen (``REJECT_REASONS``) and an optional free-text comment."""


# -- masks ---------------------------------------------------------------------------------------
_RLE_HEADER_WORD = 8  # word size of the brush RLE's values (bits)
_RLE_SIZES = (3, 4, 8, 16)  # bits of a run's length field, by the 2-bit size index
_RLE_LONGEST = 2**16  # the longest run one 16-bit length field holds


def encode_brush_rle(mask: np.ndarray) -> list[int]:
    """Label Studio's brush RLE of a (H, W) bool mask as the RGBA image whose every channel is 255 inside.

    The same bytes as ``label_studio_sdk.converter.brush.mask2rle(mask.astype(np.uint8) * 255)`` (a test
    compares them), computed from the mask's own runs: each mask run of L pixels is one RGBA run of 4L
    values, so the 4x expanded array is never built. Layout (Label Studio's ``encode_rle``): 32 bits of
    the value count, 5 bits of word size - 1, 4 x 4 bits of the length-field sizes - 1, then per run ``1``,
    2 bits of size index, the length - 1 in 3, 4, 8 or 16 bits, the 8-bit value (runs over 2^16 are split
    into 2^16-long pieces first), zero-padded to whole bytes (a whole zero byte when already aligned).
    """
    flat = np.asarray(mask, dtype=bool).ravel()
    count = flat.size * 4
    bits = [f"{count:032b}", f"{_RLE_HEADER_WORD - 1:05b}", *(f"{size - 1:04b}" for size in _RLE_SIZES)]
    if flat.size:
        starts = np.flatnonzero(flat[1:] != flat[:-1]) + 1
        edges = np.concatenate(([0], starts, [flat.size]))
        for length, inside in zip((4 * np.diff(edges)).tolist(), flat[edges[:-1]].tolist(), strict=True):
            value = "11111111" if inside else "00000000"
            while length > _RLE_LONGEST:
                bits.append(f"111{_RLE_LONGEST - 1:016b}{value}")
                length -= _RLE_LONGEST
            if length <= 8:
                bits.append(f"100{length - 1:03b}{value}")
            elif length <= 16:
                bits.append(f"101{length - 1:04b}{value}")
            elif length <= 256:
                bits.append(f"110{length - 1:08b}{value}")
            else:
                bits.append(f"111{length - 1:016b}{value}")
    text = "".join(bits)
    text += "0" * (8 - len(text) % 8)
    return list(int(text, 2).to_bytes(len(text) // 8, "big"))


def brush_result(concept: str, mask: np.ndarray, region_id: str) -> dict:
    """One brush result for a (H, W) bool mask."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"a mask must be a 2-D (H, W) array, got shape {mask.shape}")
    height, width = mask.shape
    return {
        "id": region_id,
        "from_name": MASK,
        "to_name": IMAGE,
        "type": "brushlabels",
        "origin": "prediction",
        "original_width": int(width),
        "original_height": int(height),
        "image_rotation": 0,
        "value": {"format": "rle", "rle": encode_brush_rle(mask), "brushlabels": [concept]},
    }


class BrushSizeError(ValueError):
    """A brush result does not have the size of the image it belongs to."""


BRUSH_ALPHA_THRESHOLD = 128
"""A brush pixel is inside the mask when its alpha is at least this: Label Studio's brush paints soft,
anti-aliased edges, and a partly erased pixel keeps a low alpha; the editor shows both as (mostly) empty."""


def decode_brush(result: dict, height: int, width: int) -> np.ndarray:
    """A brush result -> (H, W) bool mask (alpha >= ``BRUSH_ALPHA_THRESHOLD``). Raises ``BrushSizeError``
    if the result's declared size or its decoded length does not match ``height`` x ``width``."""
    declared = (result.get("original_height"), result.get("original_width"))
    if declared != (height, width):
        raise BrushSizeError(f"brush result is {declared[1]}x{declared[0]}, the image is {width}x{height}")
    flat = decode_rle(result["value"]["rle"])
    if flat.size != height * width * 4:
        raise BrushSizeError(
            f"brush RLE holds {flat.size} values, a {width}x{height} RGBA image needs {height * width * 4}"
        )
    return flat.reshape(height, width, 4)[..., 3] >= BRUSH_ALPHA_THRESHOLD


# -- boxes ---------------------------------------------------------------------------------------
def rectangle_result(concept: str, box: Box, width: int, height: int, region_id: str) -> dict:
    """One rectangle result for an XYXY pixel box of a ``width`` x ``height`` image."""
    x1, y1, x2, y2 = box
    return {
        "id": region_id,
        "from_name": BOX,
        "to_name": IMAGE,
        "type": "rectanglelabels",
        "origin": "prediction",
        "original_width": int(width),
        "original_height": int(height),
        "image_rotation": 0,
        "value": {
            "x": 100.0 * x1 / width,
            "y": 100.0 * y1 / height,
            "width": 100.0 * (x2 - x1) / width,
            "height": 100.0 * (y2 - y1) / height,
            "rotation": 0,
            "rectanglelabels": [concept],
        },
    }


def rectangle_box(result: dict, width: int, height: int) -> Box:
    """A rectangle result -> XYXY pixels of a ``width`` x ``height`` image, clamped to the image."""
    v = result["value"]
    x1 = v["x"] * width / 100.0
    y1 = v["y"] * height / 100.0
    x2 = x1 + v["width"] * width / 100.0
    y2 = y1 + v["height"] * height / 100.0
    x1, x2 = sorted((min(max(x1, 0.0), width), min(max(x2, 0.0), width)))
    y1, y2 = sorted((min(max(y1, 0.0), height), min(max(y2, 0.0), height)))
    return (x1, y1, x2, y2)


# -- reading an annotation -------------------------------------------------------------------------
@dataclass
class Annotation:
    """What a reviewer submitted for one task, grouped by control."""

    verdict: str | None
    comment: str
    reject_reason: str | None  # a ReviewReason code (REJECT_REASONS), None when none was chosen
    brushes: dict[str, list[dict]]  # concept -> brush results (several strokes possible)
    rectangles: dict[str, list[dict]]  # concept -> rectangle results


def read_annotation(results: list[dict]) -> Annotation:
    """Group an annotation's results by control and label."""
    verdict, reason, comments = None, None, []
    brushes: dict[str, list[dict]] = {}
    rectangles: dict[str, list[dict]] = {}
    for result in results:
        kind = result.get("type")
        value = result.get("value") or {}
        if kind == "choices" and result.get("from_name") == VERDICT:
            choices = value.get("choices") or []
            verdict = choices[0] if choices else None
        elif kind == "choices" and result.get("from_name") == REJECT_REASON:
            choices = value.get("choices") or []
            reason = REJECT_REASONS.get(choices[0]) if choices else None
        elif kind == "textarea" and result.get("from_name") == COMMENT:
            comments.extend(t for t in value.get("text") or [] if t and t.strip())
        elif kind == "brushlabels":
            for name in value.get("brushlabels") or []:
                brushes.setdefault(name, []).append(result)
        elif kind == "rectanglelabels":
            for name in value.get("rectanglelabels") or []:
                rectangles.setdefault(name, []).append(result)
    return Annotation(
        verdict=verdict,
        comment="\n".join(c.strip() for c in comments),
        reject_reason=reason,
        brushes=brushes,
        rectangles=rectangles,
    )


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two (H, W) bool masks; 1.0 when both are empty."""
    union = np.logical_or(a, b).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(a, b).sum() / union)
