"""Pins of ``annotators.grounding``: the constrained-decoding JSON schema, whole; box IoU and
the input-to-original box mapping on asymmetric boxes; ``parse_grounding``'s size threshold
(a box exactly ``min_box_size`` wide is kept) and its handling of unknown labels."""

from __future__ import annotations

import pytest

from annotators.grounding import box_iou, grounding_schema, map_box, match_label, parse_grounding


def expected_item(labels, width, height):
    x = {"type": "integer", "minimum": 0, "maximum": width}
    y = {"type": "integer", "minimum": 0, "maximum": height}
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


def test_grounding_schema_whole():
    """A list of 1..max_items {bbox_2d: 4 integers in the frame, label: a concept} objects; with
    every_concept it starts with one object per concept, in order."""
    concepts = ["lemon", "lime"]
    assert grounding_schema(concepts, (56, 84), 5) == {
        "type": "array",
        "items": expected_item(concepts, 56, 84),
        "minItems": 1,
        "maxItems": 5,
    }
    assert grounding_schema(concepts, (56, 84), 5, every_concept=True) == {
        "type": "array",
        "items": expected_item(concepts, 56, 84),
        "minItems": 2,
        "maxItems": 5,
        "prefixItems": [expected_item(["lemon"], 56, 84), expected_item(["lime"], 56, 84)],
    }


def test_box_iou_on_asymmetric_boxes():
    """IoU of boxes that differ in every coordinate (width != height)."""
    a, b = (0.0, 10.0, 40.0, 30.0), (20.0, 0.0, 60.0, 25.0)
    inter = 20.0 * 15.0
    assert box_iou(a, b) == pytest.approx(inter / (40 * 20 + 40 * 25 - inter))
    assert box_iou(b, a) == box_iou(a, b)
    assert box_iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0


def test_map_box_scales_sorts_and_clamps_each_axis():
    """x by width ratio, y by height ratio, corners sorted, clamped to the original image."""
    assert map_box((30, 5, 10, 40), (100, 50), (200, 200)) == (20.0, 20.0, 60.0, 160.0)
    assert map_box((-10, 10, 120, 70), (100, 50), (200, 100)) == (0.0, 20.0, 200.0, 100.0)
    for bad in [((0, 50), (10, 10)), ((100, 0), (10, 10)), ((100, 50), (0, 10)), ((100, 50), (10, 0))]:
        with pytest.raises(ValueError, match="sizes must be positive"):
            map_box((0, 0, 1, 1), *bad)


def test_parse_grounding_keeps_a_box_exactly_min_size_and_skips_unknown_labels():
    """A box min_box_size wide (or high) is kept, a narrower one dropped; an unknown label does not
    stop the objects after it; a near-duplicate box of the same concept is dropped."""
    text = (
        '[{"bbox_2d": [0, 0, 3, 10], "label": "lemon"}, {"bbox_2d": [0, 0, 5, 5], "label": "kiwi"},'
        ' {"bbox_2d": [10, 10, 20, 13], "label": "lime"}, {"bbox_2d": [10, 10, 11, 12], "label": "lime"},'
        ' {"bbox_2d": [0, 0, 3, 10], "label": "lemon"}]'
    )
    boxes = parse_grounding(text, ["lemon", "lime"], (50, 50), (50, 50), min_box_size=3)
    assert boxes == {"lemon": [(0.0, 0.0, 3.0, 10.0)], "lime": [(10.0, 10.0, 20.0, 13.0)]}


def test_match_label_reads_ves_plurals_as_f_or_fe():
    """The -ves plural rule: "knives" names "knife", "wolves" names "wolf"."""
    assert match_label("knives", ["knife", "fork"]) == "knife"
    assert match_label("scarves", ["scarf", "hat"]) == "scarf"  # 7 letters: the stem is scar
    assert match_label("Wolves", ["gray wolf", "wolf", "fox"]) == "wolf"


def test_plurals_ending_in_ves_and_es_name_their_singular():
    assert match_label("wolves", ["wolf", "lemon"]) == "wolf"
    assert match_label("knives", ["knife", "fork"]) == "knife"
    assert match_label("scarves", ["scarf", "hat"]) == "scarf"  # 7 letters: the stem is scar
    assert match_label("boxes", ["box", "crate"]) == "box"
    assert match_label("loaves", ["wolf", "knife"]) is None


def test_a_box_of_one_original_pixel_is_kept_by_default_and_a_smaller_one_dropped():
    answer = (
        '[{"bbox_2d": [10, 10, 11, 11], "label": "lemon"}, {"bbox_2d": [20, 20, 20.5, 30], "label": "lemon"}]'
    )
    boxes = parse_grounding(answer, ["lemon"], (100, 100), (100, 100))
    assert boxes == {"lemon": [(10.0, 10.0, 11.0, 11.0)]}


def test_an_answer_whose_first_bracket_does_not_parse_is_scanned_object_by_object():
    answer = 'Found: [broken, {"bbox_2d": [1, 2, 30, 40], "label": "lime"}'
    assert parse_grounding(answer, ["lime"], (100, 100), (100, 100)) == {"lime": [(1.0, 2.0, 30.0, 40.0)]}
