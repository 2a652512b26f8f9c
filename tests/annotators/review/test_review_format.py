"""Fast tests of the Label Studio conversions and the review statistics (no server)."""

from __future__ import annotations

import numpy as np
import pytest
from review_records import disk_masks

from annotators import labelstudio_format as fmt
from annotators.review import task_score
from annotators.review_stats import compute_stats
from manifests.masks import encode_mask
from manifests.record import SAM_SCORE, Concept, GeneratedSource, Record, State


def test_the_label_config_takes_its_labels_from_each_task_and_requires_a_verdict():
    import xml.etree.ElementTree as ET

    config = ET.fromstring(fmt.LABEL_CONFIG)
    (brush,) = config.iter("BrushLabels")
    (rectangle,) = config.iter("RectangleLabels")
    assert (brush.get("name"), brush.get("value")) == (fmt.MASK, "$mask_labels")
    assert (rectangle.get("name"), rectangle.get("value")) == (fmt.BOX, "$box_labels")
    assert list(config.iter("Label")) == []  # no project-wide label list
    headers = [h.get("value") for h in config.iter("Header")]
    assert any(h.startswith("Mask:") and "1-3" in h for h in headers)
    assert any(h.startswith("Box:") and "4-6" in h for h in headers)
    (verdict,) = [c for c in config.iter("Choices") if c.get("name") == fmt.VERDICT]
    assert verdict.get("required") == "true"
    assert [c.get("value") for c in verdict.iter("Choice")] == [fmt.ACCEPT, fmt.REJECT]
    assert len(list(config.iter("TextArea"))) == 1


def test_task_labels_are_the_records_concepts_with_colours_and_hotkeys_by_position():
    labels = fmt.task_labels(["husky", "wolf", "alaskan malamute"])
    assert labels["mask_labels"] == [
        {"value": "husky", "background": fmt.label_colour(0), "hotkey": "1"},
        {"value": "wolf", "background": fmt.label_colour(1), "hotkey": "2"},
        {"value": "alaskan malamute", "background": fmt.label_colour(2), "hotkey": "3"},
    ]
    assert [(b["value"], b["hotkey"]) for b in labels["box_labels"]] == [
        ("husky", "4"), ("wolf", "5"), ("alaskan malamute", "6"),
    ]  # fmt: skip
    assert [b["background"] for b in labels["box_labels"]] == [m["background"] for m in labels["mask_labels"]]
    # another group: its own names, the same colour at the same position
    lemon = fmt.task_labels(["lemon", "lime"])
    assert [m["value"] for m in lemon["mask_labels"]] == ["lemon", "lime"]
    assert lemon["mask_labels"][1]["background"] == labels["mask_labels"][1]["background"]
    assert len({fmt.label_colour(i) for i in range(3)}) == 3
    # a fourth concept has a colour but no hotkey (7+ belong to the verdict)
    fourth = fmt.task_labels(["a", "b", "c", "d"])
    assert "hotkey" not in fourth["mask_labels"][3] and "hotkey" not in fourth["box_labels"][3]
    with pytest.raises(ValueError, match="at least one concept"):
        fmt.task_labels([])


def test_the_brush_rle_is_byte_for_byte_label_studios():
    """``encode_brush_rle`` (from the mask's runs) = the SDK's ``mask2rle`` of the 0/255 mask (4x expanded):
    empty and full masks, one pixel, runs over 2^16 RGBA values (split), every length class, random masks,
    and sizes whose bit string ends on a byte boundary (Label Studio then pads a whole zero byte)."""
    from label_studio_sdk.converter.brush import mask2rle

    rng = np.random.default_rng(0)
    masks = [np.zeros((5, 7), bool), np.ones((5, 7), bool), np.ones((1, 1), bool), np.ones((512, 512), bool)]
    runs = np.zeros((1, 200), bool)
    runs[0, [3, 10, 11, 30, 31, 32, 33, 34, 35, 36, 37, 38]] = True  # runs of 1, 2 and 9 pixels
    masks.append(runs)
    for _ in range(200):
        height, width = (int(v) for v in rng.integers(1, 60, 2))
        masks.append(rng.random((height, width)) < rng.random())
        block = np.zeros((height, width), bool)
        block[rng.integers(0, height) :, rng.integers(0, width) :] = True
        masks.append(block)
    aligned = 0
    for mask in masks:
        expected = mask2rle(mask.astype(np.uint8) * 255)
        assert fmt.encode_brush_rle(mask) == list(expected), mask.shape
        aligned += expected[-1] == 0
    assert aligned > 10  # the padding cases occur
    assert fmt.brush_result("wolf", masks[3], "r")["value"]["rle"] == fmt.encode_brush_rle(masks[3])


def test_brush_result_round_trips_a_mask_and_writes_alpha_255():
    mask = disk_masks(40, 70, 2)[1]
    result = fmt.brush_result("wolf", mask, "r1")
    assert result["value"]["brushlabels"] == ["wolf"]
    assert (result["original_width"], result["original_height"]) == (70, 40)
    decoded = fmt.decode_brush(result, 40, 70)
    assert decoded.dtype == bool and np.array_equal(decoded, mask)
    from label_studio_sdk.converter.brush import decode_rle

    alpha = decode_rle(result["value"]["rle"]).reshape(40, 70, 4)[..., 3]
    assert set(np.unique(alpha)) == {0, 255}


def test_decode_brush_refuses_another_size():
    result = fmt.brush_result("wolf", np.ones((10, 12), bool), "r1")
    with pytest.raises(fmt.BrushSizeError, match="12x10"):
        fmt.decode_brush(result, 20, 12)
    result["original_height"] = 20  # lying about its size: the RLE length gives it away
    with pytest.raises(fmt.BrushSizeError, match="RLE holds"):
        fmt.decode_brush(result, 20, 12)


def test_rectangles_are_percent_of_the_image_and_round_trip():
    result = fmt.rectangle_result("husky", (10.0, 20.0, 60.0, 40.0), 200, 80, "b0")
    value = result["value"]
    assert value["x"] == pytest.approx(5.0) and value["y"] == pytest.approx(25.0)
    assert value["width"] == pytest.approx(25.0) and value["height"] == pytest.approx(25.0)
    assert fmt.rectangle_box(result, 200, 80) == pytest.approx((10.0, 20.0, 60.0, 40.0))
    value["x"], value["width"] = 90.0, 30.0  # dragged past the right edge: clamped
    assert fmt.rectangle_box(result, 200, 80)[2] == pytest.approx(200.0)


def test_read_annotation_groups_strokes_and_reads_verdict_and_comment():
    m = np.zeros((8, 8), bool)
    results = [
        fmt.brush_result("wolf", m, "a"),
        fmt.brush_result("wolf", m, "b"),
        fmt.brush_result("husky", m, "c"),
        {"from_name": "verdict", "type": "choices", "value": {"choices": ["reject"]}},
        {"from_name": "comment", "type": "textarea", "value": {"text": ["  blurry  "]}},
    ]
    read = fmt.read_annotation(results)
    assert read.verdict == "reject" and read.comment == "blurry"
    assert len(read.brushes["wolf"]) == 2 and len(read.brushes["husky"]) == 1


def test_iou():
    a = np.zeros((4, 4), bool)
    b = a.copy()
    assert fmt.iou(a, b) == 1.0
    a[:2] = True
    b[1:3] = True
    assert fmt.iou(a, b) == pytest.approx(4 / 12)


def _reviewed(record_id: str, group: str, reviews: dict[str, tuple[str, float]]) -> Record:
    mask = encode_mask(np.ones((4, 4), bool))
    record = Record(
        id=record_id,
        group=group,
        source=GeneratedSource(template="t", setting="s", seed=0),
        concepts=[Concept(name=n, mask=mask, review=r) for n, (r, _) in reviews.items()],
        state=State.in_review,
    )
    record.advance(
        State.reviewed, "review", params={"action": "pull", "iou": {n: v for n, (_, v) in reviews.items()}}
    )
    return record


def test_compute_stats_counts_accepted_masks_iou_per_group_and_reasons():
    records = [
        _reviewed("a", "dogs", {"husky": ("accepted", 1.0), "wolf": ("edited", 0.5)}),
        _reviewed("b", "dogs", {"husky": ("accepted", 0.99), "wolf": ("accepted", 1.0)}),
        _reviewed("c", "citrus", {"lemon": ("edited", 0.7), "lime": ("accepted", 1.0)}),
    ]
    rejected = _reviewed("d", "dogs", {"husky": ("machine", 0.0), "wolf": ("machine", 0.0)})
    rejected.reject("review", "rejected_by_reviewer", "blurry")
    records.append(rejected)
    stats = compute_stats(records)
    assert stats["records"] == {"reviewed": 3, "rejected_in_review": 1, "in_review": 0}
    assert stats["masks"]["accepted_unedited"] == 4 and stats["masks"]["edited"] == 2
    assert stats["masks"]["fraction_accepted_unedited"] == pytest.approx(4 / 6, abs=1e-4)
    assert stats["records_all_accepted"] == pytest.approx(1 / 3, abs=1e-4)
    assert stats["iou_by_group"]["dogs"]["mean_iou"] == pytest.approx((1.0 + 0.5 + 0.99 + 1.0) / 4, abs=1e-4)
    assert stats["iou_by_group"]["citrus"]["min_iou"] == pytest.approx(0.7)
    assert stats["rejection_reasons"] == {"rejected_by_reviewer": 1}


def test_task_score_is_the_weakest_concepts_sam_score_under_the_key_the_segmenter_writes():
    """The review push orders tasks by the lowest SAM score of the record; a concept without one gives None."""
    source = GeneratedSource(template="a {a} and a {b}", setting="snow", seed=0)
    scored = [Concept(name="husky", scores={SAM_SCORE: 0.8}), Concept(name="wolf", scores={SAM_SCORE: 0.55})]
    record = Record(id="gen-a", group="husky-wolf", concepts=scored, source=source)
    assert task_score(record) == pytest.approx(0.55)
    unscored = [Concept(name="husky", scores={SAM_SCORE: 0.8}), Concept(name="wolf", scores={"other": 0.1})]
    assert task_score(Record(id="gen-b", group="husky-wolf", concepts=unscored, source=source)) is None


def test_soft_brush_edges_count_as_inside_only_from_alpha_128():
    """Anti-aliased or partly erased brush pixels (alpha below 128) are outside the mask."""
    from label_studio_sdk.converter.brush import encode_rle

    alphas = np.array([[0, 1, 60, 127], [128, 129, 200, 255]], dtype=np.uint8)
    rgba = np.zeros((2, 4, 4), dtype=np.uint8)
    rgba[..., :3] = 255  # colour everywhere; only alpha says what is painted
    rgba[..., 3] = alphas
    result = {"original_height": 2, "original_width": 4, "value": {"rle": encode_rle(rgba.ravel())}}
    assert fmt.decode_brush(result, 2, 4).tolist() == [[False] * 4, [True] * 4]


def test_push_order_puts_the_least_certain_records_first():
    from annotators.review import push_order
    from manifests.record import SAM_SCORE, Concept, GeneratedSource, Record

    def record(record_id, *scores):
        concepts = [
            Concept(name=f"c{i}", scores={} if s is None else {SAM_SCORE: s}) for i, s in enumerate(scores)
        ]
        return Record(
            id=record_id,
            group="g",
            concepts=concepts,
            source=GeneratedSource(template="t", setting="s", seed=0),
        )

    records = [record("a", 0.9, 0.2), record("b", 0.5, 0.6), record("c", None, 0.1), record("d", 0.2, 0.7)]
    assert [r.id for r in push_order(records, "uncertainty")] == [
        "a",
        "d",
        "b",
        "c",
    ]  # min score; none last; tie by id
    assert [r.id for r in push_order(reversed(records), "id")] == ["a", "b", "c", "d"]
    with pytest.raises(ValueError, match="uncertainty, id"):
        push_order(records, "random")


def test_a_reject_needs_a_reason_from_fixed_choices_shown_only_on_reject():
    import xml.etree.ElementTree as ET

    config = ET.fromstring(fmt.LABEL_CONFIG)
    (reasons,) = [c for c in config.iter("Choices") if c.get("name") == fmt.REJECT_REASON]
    assert [c.get("value") for c in reasons.iter("Choice")] == list(fmt.REJECT_REASONS)
    assert (reasons.get("visibleWhen"), reasons.get("whenTagName"), reasons.get("whenChoiceValue")) == (
        "choice-selected", fmt.VERDICT, fmt.REJECT,
    )  # fmt: skip
    assert reasons.get("required") == "true"
    from manifests.reasons import ReviewReason

    assert set(fmt.REJECT_REASONS.values()) <= {r.value for r in ReviewReason}
    read = fmt.read_annotation([
        {"from_name": fmt.VERDICT, "type": "choices", "value": {"choices": [fmt.REJECT]}},
        {"from_name": fmt.REJECT_REASON, "type": "choices", "value": {"choices": ["concept missing"]}},
        {"from_name": fmt.COMMENT, "type": "textarea", "value": {"text": ["no wolf here"]}},
    ])  # fmt: skip
    assert (read.verdict, read.reject_reason, read.comment) == (fmt.REJECT, "concept_missing", "no wolf here")
    assert fmt.read_annotation([]).reject_reason is None
    assert "eraser" in fmt.INSTRUCTIONS and "Reject" in fmt.INSTRUCTIONS
