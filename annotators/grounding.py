"""Qwen2.5-VL grounding answers: the prompt, the JSON schema, and a tolerant parser.

Pure text and box arithmetic, no model imports, so it is fast to test.

Coordinate frames (all boxes XYXY, origin top-left, x right, y down):
- the *input frame*: pixels of the resized image the model saw, ``(width, height) ==
  (image_grid_thw[2] * 14, image_grid_thw[1] * 14)``. Qwen2.5-VL answers in absolute
  pixels of this frame (Qwen2-VL and Qwen3-VL use 0-1000 instead: not handled here);
- the *original frame*: pixels of the stored image (``record.image``), where boxes are
  kept on records.

A typical answer of Qwen2.5-VL-Instruct::

    ```json
    [
        {"bbox_2d": [12, 40, 230, 310], "label": "siberian husky"},
        {"bbox_2d": [250, 35, 470, 300], "label": "gray wolf"}
    ]
    ```
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

Box = tuple[float, float, float, float]

BOX_KEYS = ("bbox_2d", "bbox", "box_2d", "box", "bbox2d")
LABEL_KEYS = ("label", "name", "category", "class", "object")

_FENCE = re.compile(r"```[a-zA-Z]*[ \t]*\n?(.*?)(?:```|$)", re.DOTALL)
_FLAT_OBJECT = re.compile(r"\{[^{}]*\}")
_IRREGULAR_PLURALS = {
    "mice": "mouse",
    "geese": "goose",
    "oxen": "ox",
    "teeth": "tooth",
    "feet": "foot",
    "people": "person",
    "children": "child",
    "women": "woman",
    "men": "man",
    "cacti": "cactus",
    "fungi": "fungus",
    "octopi": "octopus",
}


class GroundingParseError(ValueError):
    """No grounding object (a box with a label) could be read from the model's text."""


@dataclass(frozen=True)
class GroundingObject:
    """One box the model named: ``box`` XYXY in the input frame as written (corners unsorted)."""

    label: str
    box: tuple[float, float, float, float]


def grounding_prompt(concepts: Sequence[str]) -> str:
    """The one grounding question asked per image, naming all its concepts.

    Worded like Qwen2.5-VL's own grounding examples, so the released model answers in
    its trained JSON format (``bbox_2d`` + ``label``).
    """
    if not concepts:
        raise ValueError("grounding_prompt needs at least one concept name")
    names = ", ".join(f'"{c}"' for c in concepts)
    return (
        f"Locate every instance of each of these objects in the image: {names}. "
        "Output the bbox coordinates of each in JSON format, as a list of "
        '{"bbox_2d": [x1, y1, x2, y2], "label": <one of the names above>}.'
    )


def grounding_schema(
    concepts: Sequence[str],
    input_size: tuple[int, int],
    max_items: int,
    *,
    every_concept: bool = False,
) -> dict[str, Any]:
    """The JSON schema constrained decoding enforces for one image.

    A list of 1..``max_items`` objects ``{"bbox_2d": [x1, y1, x2, y2], "label": <concept>}``,
    coordinates integers inside the input frame ``(width, height)`` (x in [0, width],
    y in [0, height]), labels only this image's concepts. Integer bounds also bound the
    answer's length, so a constrained answer always fits a known token budget.

    ``every_concept``: the list starts with one object per concept, in the order given
    (then up to ``max_items`` in all, any concept). The model must then place every
    concept, so confusing two of them shows as two boxes on one object (the quality
    gate's ``same_object``) instead of a missing concept; only for images known to hold
    every concept (generated from a prompt naming them all).
    """
    width, height = input_size
    if max_items < (len(concepts) if every_concept else 1):
        raise ValueError(
            f"max_items must be at least {len(concepts) if every_concept else 1}, got {max_items}"
        )
    x = {"type": "integer", "minimum": 0, "maximum": int(width)}
    y = {"type": "integer", "minimum": 0, "maximum": int(height)}

    def item(labels: Sequence[str]) -> dict[str, Any]:
        return {
            "type": "object",
            "properties": {
                "bbox_2d": {
                    "type": "array",
                    "prefixItems": [x, y, x, y],
                    "items": False,
                    "minItems": 4,
                    "maxItems": 4,
                },
                "label": {"type": "string", "enum": list(labels)},
            },
            "required": ["bbox_2d", "label"],
            "additionalProperties": False,
        }

    schema: dict[str, Any] = {
        "type": "array",
        "items": item(concepts),
        "minItems": 1,
        "maxItems": int(max_items),
    }
    if every_concept:
        schema["prefixItems"] = [item([c]) for c in concepts]
        schema["minItems"] = len(concepts)
    return schema


# -- reading the text ------------------------------------------------------------------
def _candidate_texts(text: str) -> list[str]:
    """The text inside code fences (an unclosed fence runs to the end), then the whole text."""
    fenced = [m.group(1) for m in _FENCE.finditer(text) if m.group(1).strip()]
    return [*fenced, text]


def _load_json_at(text: str, start: int) -> Any | None:
    try:
        value, _ = json.JSONDecoder().raw_decode(text, start)
        return value
    except json.JSONDecodeError:
        pass
    try:  # Python-literal answers with single quotes
        end = text.rfind("]" if text[start] == "[" else "}")
        return ast.literal_eval(text[start : end + 1]) if end > start else None
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None


def _as_object(value: Any) -> GroundingObject | None:
    """A dict with a 4-number box and a string label, else None."""
    if not isinstance(value, dict):
        return None
    box = next((value[k] for k in BOX_KEYS if k in value), None)
    label = next((value[k] for k in LABEL_KEYS if k in value), None)
    if isinstance(box, list | tuple) and len(box) == 2 and all(isinstance(p, list | tuple) for p in box):
        box = [*box[0], *box[1]]  # [[x1, y1], [x2, y2]]
    if not isinstance(label, str) or not isinstance(box, list | tuple) or len(box) != 4:
        return None
    try:
        coords = tuple(float(v) for v in box)
    except (TypeError, ValueError):
        return None
    if not all(c == c and abs(c) != float("inf") for c in coords):  # NaN or inf
        return None
    return GroundingObject(label=label, box=coords)  # type: ignore[arg-type]


def _objects_from_value(value: Any) -> list[GroundingObject]:
    if isinstance(value, dict):
        # {"objects": [...]} wrappers, or one object
        for inner in value.values():
            if isinstance(inner, list) and inner and all(isinstance(v, dict) for v in inner):
                return _objects_from_value(inner)
        value = [value]
    if not isinstance(value, list):
        return []
    return [obj for v in value if (obj := _as_object(v)) is not None]


def extract_objects(text: str) -> list[GroundingObject]:
    """Every (label, box) the text holds, in order; boxes as written (input frame).

    Tolerates code fences, prose around the JSON, a single object instead of a list,
    Python-style quotes, and a list cut off mid-way (the complete objects before the cut
    are kept). An empty list gives ``[]``. Raises ``GroundingParseError`` when no
    labelled box can be read.
    """
    for candidate in _candidate_texts(text):
        for start, char in enumerate(candidate):
            if char not in "[{":
                continue
            value = _load_json_at(candidate, start)
            if value is None:
                break  # not valid from the first bracket on: scan objects one by one below
            objects = _objects_from_value(value)
            if objects or value == []:
                return objects  # an empty list: read fine, nothing found
            break
        # truncated or malformed list: read each flat {...} on its own
        objects = []
        for match in _FLAT_OBJECT.finditer(candidate):
            value = _load_json_at(match.group(0), 0)
            if (obj := _as_object(value)) is not None:
                objects.append(obj)
        if objects:
            return objects
    raise GroundingParseError(f"no box with a label in the model output: {text[:200]!r}")


# -- labels ------------------------------------------------------------------------------
def normalise_label(label: str) -> str:
    """Lower case, '-' and '_' as spaces, no articles, numbering or brackets, single spaces."""
    text = label.lower().strip().strip("\"'.:")
    text = re.sub(r"\(.*?\)", " ", text)
    text = re.sub(r"[-_/]+", " ", text)
    text = re.sub(r"^(a|an|the)\s+", "", text.strip())
    text = re.sub(r"\s*#?\d+$", "", text.strip())  # "wolf 2", "wolf #2", "wolf_1"
    return " ".join(text.split())


def _singular_forms(text: str) -> set[str]:
    """``text`` and the singulars its last word may be the plural of."""
    head, _, last = text.rpartition(" ")
    forms = {last}
    if last in _IRREGULAR_PLURALS:
        forms.add(_IRREGULAR_PLURALS[last])
    if last.endswith("ies") and len(last) > 4:
        forms.add(last[:-3] + "y")
    if last.endswith("ves") and len(last) > 4:
        forms.update({last[:-3] + "f", last[:-3] + "fe"})
    if last.endswith("es") and len(last) > 3:
        forms.add(last[:-2])
    if last.endswith("s") and not last.endswith("ss") and len(last) > 2:
        forms.add(last[:-1])
    return {f"{head} {f}".strip() for f in forms}


def match_label(label: str, concepts: Sequence[str]) -> str | None:
    """The concept ``label`` names (ignoring case, articles, numbering and plurals), or None
    when it names none or more than one of them."""
    forms = _singular_forms(normalise_label(label))
    hits = [c for c in concepts if normalise_label(c) in forms or _singular_forms(normalise_label(c)) & forms]
    return hits[0] if len(hits) == 1 else None


# -- boxes ---------------------------------------------------------------------------------
def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two XYXY boxes with sorted corners (0 when both are empty)."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


BOX_FRAMES = ("input_pixels", "relative_1000")
"""How a VLM's boxes are framed: ``input_pixels``, absolute pixels of the resized model input
(Qwen2.5-VL); ``relative_1000``, a 0-1000 grid over the image whatever its size (Qwen2-VL, Qwen3-VL)."""


def frame_size(box_frame: str, input_size: tuple[int, int]) -> tuple[int, int]:
    """(width, height) of the frame the model's boxes are written in, for a model input of ``input_size``."""
    if box_frame == "input_pixels":
        return input_size
    if box_frame == "relative_1000":
        return (1000, 1000)
    raise ValueError(f"box_frame {box_frame!r}: use one of {BOX_FRAMES}")


def map_box(box: Sequence[float], input_size: tuple[int, int], original_size: tuple[int, int]) -> Box:
    """Input-frame XYXY -> original-frame XYXY: scale, sort corners, clamp to the image.

    Sizes are (width, height). The result may be empty (zero width or height) when the
    box lies outside the image.
    """
    (in_w, in_h), (out_w, out_h) = input_size, original_size
    if min(in_w, in_h, out_w, out_h) <= 0:
        raise ValueError(
            f"sizes must be positive (width, height), got input {input_size}, original {original_size}"
        )
    sx, sy = out_w / in_w, out_h / in_h
    x1, x2 = sorted((box[0] * sx, box[2] * sx))
    y1, y2 = sorted((box[1] * sy, box[3] * sy))

    def clamp(v: float, hi: float) -> float:
        return float(min(max(v, 0.0), hi))

    return clamp(x1, out_w), clamp(y1, out_h), clamp(x2, out_w), clamp(y2, out_h)


def parse_grounding(
    text: str,
    concepts: list[str],
    input_size: tuple[int, int],
    original_size: tuple[int, int],
    *,
    min_box_size: float = 1.0,
    duplicate_iou: float = 0.9,
) -> dict[str, list[Box]]:
    """Boxes per concept from a Qwen2.5-VL grounding answer, in original-image pixels.

    Args:
      text: the model's answer (fenced or bare JSON, with or without prose; unconstrained
        answers welcome, see ``extract_objects`` for what is tolerated).
      concepts: the names asked for; every one is a key of the result.
      input_size: (width, height) of the model input, ``(grid_w * 14, grid_h * 14)``.
      original_size: (width, height) of the stored image.
      min_box_size: boxes narrower or lower than this many original pixels after
        clamping are dropped (outside the image, or degenerate).
      duplicate_iou: a box whose IoU with an earlier box of the same concept reaches
        this is a repeat and is dropped.

    Returns:
      ``{concept: [(x1, y1, x2, y2), ...]}`` floats, corners sorted, clamped to the
      image; an empty list for a concept the answer does not name. Labels that name no
      concept (or several) are dropped. Unreadable text gives all-empty lists; call
      ``extract_objects`` to tell "unreadable" from "nothing found".
    """
    result: dict[str, list[Box]] = {c: [] for c in concepts}
    try:
        objects = extract_objects(text)
    except GroundingParseError:
        return result
    for obj in objects:
        concept = match_label(obj.label, concepts)
        if concept is None:
            continue
        box = map_box(obj.box, input_size, original_size)
        if box[2] - box[0] < min_box_size or box[3] - box[1] < min_box_size:
            continue
        if any(box_iou(box, kept) >= duplicate_iou for kept in result[concept]):
            continue
        result[concept].append(box)
    return result
