"""Label Studio result JSON and label colours, pinned where the mutation pass found gaps.

The result dicts follow Label Studio's prediction format (``from_name`` / ``to_name`` /
``type`` at the top level, ``value.rotation`` on rectangles; see the module docstring of
``annotators.labelstudio_format``); ``read_annotation`` groups results by control and label.
"""

from __future__ import annotations

import colorsys

import numpy as np

from annotators.labelstudio_format import (
    BOX,
    COMMENT,
    IMAGE,
    MASK,
    VERDICT,
    brush_result,
    label_colour,
    read_annotation,
    rectangle_result,
)


def test_label_colours_are_the_golden_angle_hues_in_full_rgb():
    """Each channel is the 0-255 value of hsv(index * golden ratio mod 1, 0.85, 0.95), green included."""
    assert [label_colour(i) for i in range(4)] == ["#f22424", "#2460f2", "#9cf224", "#f224d8"]
    for index in range(12):
        hue = (index * 0.618033988749895) % 1.0
        channels = [int(c * 255) for c in colorsys.hsv_to_rgb(hue, 0.85, 0.95)]
        assert label_colour(index) == "#" + "".join(f"{c:02x}" for c in channels)


def test_brush_result_names_its_control_and_image():
    """A brush result carries ``from_name`` (the BrushLabels control), ``to_name`` and ``type`` keys."""
    result = brush_result("frog", np.ones((3, 4), bool), "r1")
    assert result["from_name"] == MASK and result["to_name"] == IMAGE and result["type"] == "brushlabels"
    assert {"from_name", "to_name", "type", "value", "original_width", "original_height"} <= set(result)


def test_rectangle_result_has_the_label_studio_keys():
    """A rectangle result has a top-level ``type`` and ``value.rotation`` (0), as Label Studio writes them."""
    result = rectangle_result("toad", (10, 20, 30, 60), 100, 200, "b1")
    assert result["type"] == "rectanglelabels" and result["from_name"] == BOX and result["to_name"] == IMAGE
    value = result["value"]
    assert value["rotation"] == 0
    assert set(value) == {"x", "y", "width", "height", "rotation", "rectanglelabels"}
    assert (value["x"], value["y"], value["width"], value["height"]) == (10.0, 10.0, 20.0, 20.0)


def test_read_annotation_groups_rectangles_by_label():
    """Rectangle results are grouped under each of their ``rectanglelabels`` (several per label kept)."""
    first = rectangle_result("toad", (0, 0, 5, 5), 10, 10, "b1")
    second = rectangle_result("toad", (1, 1, 6, 6), 10, 10, "b2")
    other = rectangle_result("frog", (2, 2, 4, 4), 10, 10, "b3")
    annotation = read_annotation([first, second, other])
    assert annotation.rectangles == {"toad": [first, second], "frog": [other]}
    assert annotation.brushes == {} and annotation.verdict is None and annotation.comment == ""


def test_only_the_comment_textarea_makes_the_comment():
    """Text from another TextArea, or a non-textarea result named ``comment``, is not the comment."""
    brush = brush_result("frog", np.ones((2, 2), bool), "m1") | {"from_name": COMMENT}
    results = [
        {"type": "textarea", "from_name": "notes", "value": {"text": ["not the comment"]}},
        {"type": "textarea", "from_name": COMMENT, "value": {"text": ["  wrong concept  "]}},
        brush,
        {"type": "choices", "from_name": VERDICT, "value": {"choices": ["reject"]}},
    ]
    annotation = read_annotation(results)
    assert annotation.comment == "wrong concept"
    assert annotation.verdict == "reject"
    assert annotation.brushes == {"frog": [brush]}
