"""Semantics of the annotators that a wrong answer would silently corrupt.

- Box ownership: SAM2 gets every box of a record in one ``predict`` call; each concept's
  mask must be built from *its own* boxes, whatever the order of the record's concepts,
  the order the localiser named them in, or how many boxes each concept has. A stand-in
  SAM2 predictor returns each box filled as its mask, so a mask shows which boxes made it.
- Qwen frames: Qwen2.5-VL answers in pixels of the resized model input, whose size is
  ``(image_grid_thw[2] * 14, image_grid_thw[1] * 14)`` (width, height); boxes are mapped
  back to the stored image with x scaled by W / input_w and y by H / input_h, corners
  sorted, clamped. Checked at ``map_box`` / ``parse_grounding`` and through the tiny
  localiser's real processor (its ``generate`` is scripted, so every step from the image
  grid to the stored boxes runs for real).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fixture_scopes import shared_unless_mutating
from PIL import Image

from annotators.grounding import map_box, parse_grounding
from annotators.localize import TINY_MIN_PIXELS, QwenLocalizer
from annotators.quality import QualityGate
from annotators.segment import TINY_CONFIG, Sam2Segmenter
from manifests import Concept, GeneratedSource, ManifestStore, Record, State, decode_mask
from manifests.stage import run_stage

HUSKY, WOLF, MALAMUTE = "siberian husky", "gray wolf", "alaskan malamute"


# -- a SAM2 predictor whose mask of a box is the box ---------------------------------------------
def fill(boxes, shape: tuple[int, int]) -> np.ndarray:
    """The union of XYXY boxes filled on an (H, W) grid (corners rounded to whole pixels)."""
    mask = np.zeros(shape, dtype=bool)
    for x1, y1, x2, y2 in boxes:
        mask[round(y1) : round(y2), round(x1) : round(x2)] = True
    return mask


def box_score(box) -> float:
    """A SAM score that names its box: distinct for every box used here."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return 0.6 + ((7 * x1 + 3 * y1 + x2 + 11 * y2) % 389) / 1000


class BoxFillPredictor:
    """Stands in for ``SAM2ImagePredictor``: SAM2's output shapes and dtypes (one box: masks
    (1, H, W), scores (1,); N boxes: (N, 1, H, W), (N, 1); masks float 0/1), and each mask
    the filled box it was prompted with, in the image's pixels."""

    def __init__(self):
        self.image: np.ndarray | None = None
        self.set_image_calls = 0
        self.predict_calls: list[np.ndarray] = []

    def set_image(self, image) -> None:
        self.image = np.asarray(image)
        self.set_image_calls += 1

    def predict(self, box=None, multimask_output=True, **_):
        assert self.image is not None, "predict before set_image"
        assert multimask_output is False
        boxes = np.asarray(box, dtype=np.float32).reshape(-1, 4)
        self.predict_calls.append(boxes)
        shape = self.image.shape[:2]
        masks = np.stack([fill([b], shape) for b in boxes]).astype(np.float32)
        scores = np.array([box_score(b) for b in boxes], dtype=np.float32)
        logits = np.zeros((len(boxes), 1, 256, 256), dtype=np.float32)
        if len(boxes) == 1:
            return masks, scores, logits[0]
        return masks[:, None], scores[:, None], logits


@pytest.fixture(scope=shared_unless_mutating)
def segmenter():
    """The real Sam2Segmenter (random hiera-tiny) with its predictor replaced by BoxFillPredictor."""
    torch.set_num_threads(2)
    segmenter = Sam2Segmenter(TINY_CONFIG, None, device="cpu", gate=QualityGate())
    segmenter.predictor = BoxFillPredictor()
    return segmenter


def localized_record(record_id: str, boxes: dict[str, list]) -> Record:
    return Record(
        id=record_id,
        group="test",
        concepts=[Concept(name=n, boxes=b) for n, b in boxes.items()],
        source=GeneratedSource(template="t", setting="s", seed=0),
        state=State.localized,
    )


# Concepts in record order with their boxes (the stored image is 200 x 120); the box counts
# differ per concept so that any shift or reversal of owners gives some concept a wrong box.
LAYOUTS = {
    "husky 2 boxes, wolf 1": {
        HUSKY: [(10, 10, 50, 40), (10, 70, 60, 110)],
        WOLF: [(120, 20, 190, 100)],
    },
    "husky 1 box, wolf 3": {
        HUSKY: [(150, 60, 195, 115)],
        WOLF: [(5, 5, 40, 30), (50, 5, 90, 50), (5, 60, 60, 115)],
    },
    "three concepts 2, 1, 3 boxes": {
        HUSKY: [(5, 5, 30, 30), (5, 80, 40, 115)],
        WOLF: [(60, 40, 110, 90)],
        MALAMUTE: [(130, 5, 160, 30), (170, 5, 195, 40), (130, 70, 195, 115)],
    },
}


@pytest.mark.parametrize("layout", list(LAYOUTS), ids=list(LAYOUTS))
def test_each_concept_mask_comes_from_its_own_boxes(segmenter, layout):
    """Pins: ``masks_for`` gives concept c the union of the masks of c's boxes only, and the
    SAM score of c is the lowest score among c's boxes; one embedding, one predict call."""
    boxes = LAYOUTS[layout]
    record = localized_record("gen-own", boxes)
    image = np.zeros((120, 200, 3), dtype=np.uint8)
    predictor = segmenter.predictor
    before = (predictor.set_image_calls, len(predictor.predict_calls))
    masks, scores = segmenter.masks_for(record, image)
    assert (predictor.set_image_calls, len(predictor.predict_calls)) == (before[0] + 1, before[1] + 1)
    assert len(predictor.predict_calls[-1]) == sum(len(b) for b in boxes.values())
    assert set(masks) == set(boxes) == set(scores)
    for name, own in boxes.items():
        assert np.array_equal(masks[name], fill(own, (120, 200))), f"{name} got another concept's box"
        assert scores[name] == pytest.approx(min(box_score(b) for b in own), abs=1e-6)


def store_image(store: ManifestStore, record: Record, size: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    store.store_image(record, Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)))
    store.put(record)


def test_segment_stage_stores_each_concepts_own_mask(segmenter, workdir):
    """Pins: through ``segment`` (RLE storage, the quality gate), each stored mask is its own
    concept's filled boxes, and the record passes the gate (the masks fit their boxes)."""
    store = ManifestStore(workdir)
    boxes = LAYOUTS["three concepts 2, 1, 3 boxes"]
    record = localized_record("gen-stage", boxes)
    store_image(store, record, (200, 120))
    run_stage(segmenter, store, [record])
    saved = store.get("gen-stage")
    assert saved.state == State.segmented, saved.rejection
    for concept in saved.concepts:
        assert np.array_equal(decode_mask(concept.mask), fill(boxes[concept.name], (120, 200))), concept.name
        assert concept.scores["sam"] == pytest.approx(
            min(box_score(b) for b in boxes[concept.name]), abs=1e-6
        )


# -- Qwen frames -------------------------------------------------------------------------------
ORIGINAL = (1000, 600)  # (width, height) of the stored image
GRID = (1, 36, 64)  # image_grid_thw: t, h, w in 14 px patches
INPUT = (GRID[2] * 14, GRID[1] * 14)  # (896, 504): the frame Qwen2.5-VL answers in


def test_map_box_scales_x_by_width_and_y_by_height():
    """Pins: input frame (896, 504) -> original (1000, 600) scales x by 1000/896 and y by
    600/504 (not swapped, not identity), sorts corners and clamps to the image."""
    assert INPUT == (896, 504)
    # x: 112 * 1000/896 = 125, 448 -> 500; y: 63 * 600/504 = 75, 252 -> 300
    assert map_box((112, 63, 448, 252), INPUT, ORIGINAL) == pytest.approx((125, 75, 500, 300))
    assert map_box((448, 252, 112, 63), INPUT, ORIGINAL) == pytest.approx((125, 75, 500, 300))  # sorted
    assert map_box((896, 0, 0, 504), INPUT, ORIGINAL) == pytest.approx((0, 0, 1000, 600))  # whole frame
    assert map_box((-56, 441, 1008, 630), INPUT, ORIGINAL) == pytest.approx((0, 525, 1000, 600))  # clamped
    # a portrait image: the same rule with the axes' own sizes
    assert map_box((63, 112, 252, 448), (504, 896), (600, 1000)) == pytest.approx((75, 125, 300, 500))


def test_parse_grounding_maps_every_box_to_original_pixels():
    """Pins: ``parse_grounding`` maps each box of the answer from the input frame to the
    original frame and files it under the concept its label names, in answer order."""
    text = (
        '```json\n[{"bbox_2d": [672, 126, 448, 378], "label": "gray wolf"},\n'
        ' {"bbox_2d": [112, 63, 336, 252], "label": "siberian husky"},\n'
        ' {"bbox_2d": [112, 315, 336, 504], "label": "Siberian Husky"}]\n```'
    )
    boxes = parse_grounding(text, [HUSKY, WOLF], INPUT, ORIGINAL)
    assert boxes[WOLF] == [pytest.approx((500, 150, 750, 450))]
    assert boxes[HUSKY] == [pytest.approx((125, 75, 375, 300)), pytest.approx((125, 375, 375, 600))]


# Through the tiny localiser: landscape 1000 x 600 and portrait 600 x 1000 in one batch. With
# these pixel limits process_vision_info resizes them to 1008 x 588 and 588 x 1008 (multiples
# of 28), so x and y scale differently (1000/1008 and 600/588) and the grid's h and w differ.
FRAMES = {(1000, 600): (1008, 588), (600, 1000): (588, 1008)}
# Answers in input-frame pixels: landscape x = 126 k -> 125 k, y = 49 m -> 50 m; portrait the
# other way round. The localiser names the wolf first; the record lists the husky first.
ANSWERS = {
    (1000, 600): (
        '[{"bbox_2d": [756, 98, 504, 392], "label": "gray wolf"}, '
        '{"bbox_2d": [126, 49, 378, 245], "label": "siberian husky"}, '
        '{"bbox_2d": [126, 343, 378, 539], "label": "siberian husky"}]'
    ),
    (600, 1000): (
        '[{"bbox_2d": [49, 126, 245, 378], "label": "gray wolf"}, '
        '{"bbox_2d": [539, 126, 343, 378], "label": "siberian husky"}, '
        '{"bbox_2d": [343, 504, 539, 756], "label": "siberian husky"}]'
    ),
}
EXPECTED = {  # by hand, in stored-image pixels
    (1000, 600): {WOLF: [(500, 100, 750, 400)], HUSKY: [(125, 50, 375, 250), (125, 350, 375, 550)]},
    (600, 1000): {WOLF: [(50, 125, 250, 375)], HUSKY: [(350, 125, 550, 375), (350, 500, 550, 750)]},
}


@pytest.fixture(scope=shared_unless_mutating)
def scripted_localizer():
    """The tiny QwenLocalizer (pixel limits wide enough for 1008 x 588) whose ``generate``
    returns the scripted answers (one per image, right-padded) after the real prompt."""
    torch.set_num_threads(2)
    localizer = QwenLocalizer("tiny", batch_size=2, min_pixels=TINY_MIN_PIXELS, max_pixels=1280 * 28 * 28)
    tokenizer = localizer.tokenizer
    localizer.calls = []
    localizer.script = []

    def generate(**kwargs):
        localizer.calls.append(kwargs)
        answers = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in localizer.script]
        width = max(map(len, answers))
        pad = tokenizer.pad_token_id
        rows = [ids + [pad] * (width - len(ids)) for ids in answers]
        return torch.cat([kwargs["input_ids"], torch.tensor(rows, dtype=kwargs["input_ids"].dtype)], dim=1)

    localizer.model.generate = generate
    return localizer


def test_localizer_frame_is_the_model_input_grid_and_boxes_map_back(scripted_localizer, segmenter, workdir):
    """Pins, through the real processor: each image's box frame is (grid_w * 14, grid_h * 14)
    of its own resized input, boxes are mapped back with x by W / input_w and y by
    H / input_h, and the segmenter then builds each concept's mask from its own mapped
    boxes (the answer names the wolf first, the record lists the husky first)."""
    store = ManifestStore(workdir)
    records = []
    for index, size in enumerate(FRAMES):
        record = Record(
            id=f"gen-frame-{index}",
            group="test",
            concepts=[Concept(name=HUSKY), Concept(name=WOLF)],
            source=GeneratedSource(template="t", setting="s", seed=index),
            state=State.generated,
        )
        store_image(store, record, size)
        records.append(record)
    scripted_localizer.script = [ANSWERS[size] for size in FRAMES]
    run_stage(scripted_localizer, store, records)

    (call,) = scripted_localizer.calls  # one batched generate call for both images
    grid = call["image_grid_thw"].tolist()
    for frame, (_, grid_h, grid_w) in zip(FRAMES.values(), grid, strict=True):
        assert (grid_w * 14, grid_h * 14) == frame  # the frame of the resized input, per image
    for record, size in zip(records, FRAMES, strict=True):
        saved = store.get(record.id)
        assert saved.state == State.localized, saved.rejection
        assert saved.history[-1].params["input_size"] == list(FRAMES[size])
        assert saved.history[-1].params["image_size"] == list(size)
        for name, expected in EXPECTED[size].items():
            assert saved.concept(name).boxes == [pytest.approx(b, abs=1e-6) for b in expected], (size, name)

    run_stage(segmenter, store, [store.get(r.id) for r in records])
    for record, size in zip(records, FRAMES, strict=True):
        saved = store.get(record.id)
        assert saved.state == State.segmented, saved.rejection
        for name, expected in EXPECTED[size].items():
            assert np.array_equal(decode_mask(saved.concept(name).mask), fill(expected, (size[1], size[0])))
