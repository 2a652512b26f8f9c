"""Label Studio result JSON and label colours, pinned where the mutation pass found gaps.

The result dicts follow Label Studio's prediction format (``from_name`` / ``to_name`` /
``type`` at the top level, ``value.rotation`` on rectangles; see the module docstring of
``annotators.labelstudio_format``); ``read_annotation`` groups results by control and label.
"""

from __future__ import annotations

import colorsys
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from annotators.labelstudio_format import (
    BOX,
    COMMENT,
    IMAGE,
    LABEL_CONFIG,
    MASK,
    REJECT_REASON,
    REJECT_REASONS,
    VERDICT,
    _label_config,
    brush_result,
    label_colour,
    read_annotation,
    rectangle_box,
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


def test_rectangle_result_is_the_whole_prediction_region():
    """Every top-level key: ``origin: prediction`` marks the box as the machine's (Label Studio shows it so
    until a reviewer edits it), ``image_rotation`` 0 says the percentages are of the unrotated image."""
    result = rectangle_result("toad", (10, 20, 30, 60), 100, 200, "b1")
    assert {k: v for k, v in result.items() if k != "value"} == {
        "id": "b1",
        "from_name": BOX,
        "to_name": IMAGE,
        "type": "rectanglelabels",
        "origin": "prediction",
        "original_width": 100,
        "original_height": 200,
        "image_rotation": 0,
    }


def test_rectangle_box_keeps_a_box_that_starts_within_the_first_pixel():
    """Clamping is to the image (0 .. width), so a left edge at 0.5 px stays at 0.5 px."""
    result = rectangle_result("toad", (0.5, 0.25, 30.0, 60.0), 100, 200, "b1")
    assert rectangle_box(result, 100, 200) == pytest.approx((0.5, 0.25, 30.0, 60.0))


def test_a_reject_reason_control_without_a_choice_reads_as_no_reason():
    """An empty ``choices`` list of the reason control (the reviewer cleared it) is no reason, not an error."""
    results = [
        {"type": "choices", "from_name": VERDICT, "value": {"choices": ["reject"]}},
        {"type": "choices", "from_name": REJECT_REASON, "value": {"choices": []}},
    ]
    annotation = read_annotation(results)
    assert annotation.verdict == "reject" and annotation.reject_reason is None
    chosen = [results[0], {"type": "choices", "from_name": REJECT_REASON, "value": {"choices": ["other"]}}]
    assert read_annotation(chosen).reject_reason == "other"


def test_the_label_config_offers_each_reject_reason_as_its_shown_text():
    """Built by ``_label_config`` (called here: ``LABEL_CONFIG`` is made once at import), the reason
    control lists every ``REJECT_REASONS`` text, in order, as a Choice value."""
    config = ET.fromstring(_label_config())
    reason_control = next(c for c in config.iter("Choices") if c.get("name") == REJECT_REASON)
    assert [c.get("value") for c in reason_control.iter("Choice")] == list(REJECT_REASONS)
    assert _label_config() == LABEL_CONFIG
