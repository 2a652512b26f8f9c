"""``manifests.overlay.draw_record``, pixel by pixel: mask blend, box outlines, legend strip."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFont

from manifests.masks import encode_mask
from manifests.overlay import CONCEPT_COLOURS, draw_record
from manifests.record import Concept, GeneratedSource, Record

W, H = 400, 300


def record_with(masks, boxes) -> Record:
    concepts = [Concept(name=f"c{i}", boxes=b, mask=None if m is None else encode_mask(m))
                for i, (m, b) in enumerate(zip(masks, boxes, strict=True))]  # fmt: skip
    return Record(
        id="rec-1", group="g", concepts=concepts, source=GeneratedSource(template="t", setting="s", seed=1)
    )


def test_masks_blend_their_concepts_colour_and_leave_the_rest_untouched():
    grey = np.full((H, W, 3), 100, np.uint8)
    first, second = np.zeros((H, W), bool), np.zeros((H, W), bool)
    first[10:50, 10:60] = True
    second[100:150, 200:260] = True
    out = np.asarray(
        draw_record(record_with([first, second, None], [[], [], []]), Image.fromarray(grey), alpha=0.25)
    )
    for mask, colour in ((first, CONCEPT_COLOURS[0]), (second, CONCEPT_COLOURS[1])):
        expected = np.round(0.75 * 100 + 0.25 * np.array(colour, float)).astype(np.uint8)
        assert (out[:H][mask] == expected).all()
    untouched = ~(first | second)
    assert (out[:H][untouched] == 100).all()


def test_boxes_are_outlined_in_their_concepts_colour_with_a_width_from_the_image_size():
    grey = Image.fromarray(np.full((H, W, 3), 100, np.uint8))
    box = (20.0, 30.0, 120.0, 90.0)
    out = np.asarray(draw_record(record_with([None, None], [[], [box]]), grey))
    width = max(2, round(min(W, H) / 200))  # 2 at 400 x 300
    colour = np.array(CONCEPT_COLOURS[1])
    assert (out[30, 20:121] == colour).all() and (out[30 + width - 1, 20:121] == colour).all()
    assert (out[30 + width, 20 + width : 121 - width] == 100).all()  # inside the outline
    assert (out[29, 20:121] == 100).all() and (out[60, 19] == 100).all()  # just outside


def test_the_legend_strip_has_a_line_per_concept_and_a_swatch_in_each_colour():
    grey = Image.fromarray(np.full((H, W, 3), 100, np.uint8))
    mask = np.zeros((H, W), bool)
    out = draw_record(record_with([mask, None, mask], [[], [], []]), grey)
    font = ImageFont.load_default(size=max(12, H // 40))
    line = font.size + 8
    assert out.size == (W, H + 4 * line)
    pixels = np.asarray(out)
    assert (pixels[H:, W - 20 :] == 255).all()  # white strip (text stays at the left)
    for index in range(3):
        y = H + line * (index + 1) + 4
        swatch = pixels[y + 1 : y + font.size, 7 : 6 + font.size]
        assert (swatch == CONCEPT_COLOURS[index]).all(), index
    header = pixels[H + 4 : H + line, 6:200]
    assert (header < 128).any()  # the record line is written


def test_a_mask_of_another_size_is_refused_with_the_record_and_concept():
    grey = Image.fromarray(np.full((H, W, 3), 100, np.uint8))
    with pytest.raises(ValueError, match=r"record rec-1: mask of 'c0' is \(10, 10\), image is \(300, 400\)"):
        draw_record(record_with([np.zeros((10, 10), bool), None], [[], []]), grey)


def test_the_legend_says_the_record_state_group_and_each_concepts_boxes_and_mask():
    """The strip's pixels equal the expected lines written with the same font at the same places."""
    from PIL import ImageDraw

    grey = Image.fromarray(np.full((H, W, 3), 100, np.uint8))
    mask = np.zeros((H, W), bool)
    record = record_with([mask, None], [[(1.0, 1.0, 5.0, 5.0), (6.0, 6.0, 9.0, 9.0)], []])
    out = np.asarray(draw_record(record, grey))
    font = ImageFont.load_default(size=max(12, H // 40))
    line = font.size + 8
    expected = Image.new("RGB", (W, 3 * line), "white")
    pen = ImageDraw.Draw(expected)
    pen.text((6, 4), f"rec-1  [{record.state.value}]  group g", fill="black", font=font)
    texts = ["c0: 2 box(es), mask (machine)", "c1: 0 box(es), no mask"]
    for index, text in enumerate(texts):
        y = line * (index + 1) + 4
        pen.rectangle((6, y, 6 + font.size, y + font.size), fill=CONCEPT_COLOURS[index])
        pen.text((14 + font.size, y), text, fill="black", font=font)
    assert np.array_equal(out[H:], np.asarray(expected))
