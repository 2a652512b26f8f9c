"""QwenLocalizer: the tiny Qwen2.5-VL under constrained decoding, and the localize stage."""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import pytest
import torch
from fixture_scopes import shared_unless_mutating
from PIL import Image
from qwen_vl_utils import process_vision_info

from annotators.grounding import grounding_schema
from annotators.localize import Generation, QwenLocalizer, build_tiny_qwen, verification_prompt
from manifests import Concept, GeneratedSource, ManifestStore, Record, State, WebSource
from manifests.stage import run_stage

GROUPS = [
    ["siberian husky", "gray wolf", "alaskan malamute"],
    ["lemon", "lime"],
    ["crow", "raven"],
    ["frog", "toad"],
]
SIZES = [(128, 96), (150, 200), (64, 64), (256, 192)]  # (width, height)


@pytest.fixture(scope=shared_unless_mutating)
def localizer():
    torch.set_num_threads(2)
    return QwenLocalizer("tiny", batch_size=4, max_boxes_per_concept=2)


def noise(size: tuple[int, int], seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def test_tiny_model_matches_tokenizer_and_config_rules():
    model, processor = build_tiny_qwen()
    tokenizer = processor.tokenizer
    text = model.config.text_config
    assert sum(text.rope_parameters["mrope_section"]) * 2 == text.hidden_size // text.num_attention_heads
    assert model.config.vision_config.out_hidden_size == text.hidden_size
    assert model.config.image_token_id == tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert model.get_output_embeddings().weight.shape[0] == len(tokenizer)
    again, _ = build_tiny_qwen()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters(), strict=True))


def test_constrained_batch_is_schema_valid_with_only_asked_labels(localizer, monkeypatch):
    images = [noise(size, i) for i, size in enumerate(SIZES)]
    calls = []
    generate = localizer.model.generate
    monkeypatch.setattr(localizer.model, "generate", lambda **kw: calls.append(kw) or generate(**kw))
    answers = localizer.ground(images, GROUPS)
    assert len(calls) == 1 and calls[0]["input_ids"].shape[0] == len(images)  # one batched generate call
    resized, _ = process_vision_info([localizer._messages(image, "") for image in images])
    labels_seen = set()
    for answer, concepts, image_in in zip(answers, GROUPS, resized, strict=True):
        assert answer.input_size == image_in.size  # the box frame is the resized input, exactly
        value = json.loads(answer.text)
        schema = grounding_schema(
            concepts, answer.input_size, localizer.max_boxes_per_concept * len(concepts)
        )
        jsonschema.validate(value, schema)
        assert {item["label"] for item in value} <= set(concepts)
        labels_seen |= {item["label"] for item in value}
    assert len(labels_seen) >= 2  # not one constant answer for every image


def test_unconstrained_tiny_output_is_rejected_with_raw_text(workdir):
    store = ManifestStore(workdir)
    record = stored_record(store, "gen-free", ["lemon", "lime"], noise((96, 96), 7))
    run_stage(QwenLocalizer("tiny", constrained=False, max_new_tokens=24), store, [record])
    saved = store.get("gen-free")
    assert saved.state == State.rejected and saved.rejection.stage == "localize"
    assert saved.rejection.reason in {"unparseable", "no_box"}
    assert saved.history[-1].params["raw_output"]  # the model's text is kept


def test_verify_answers_are_exactly_yes_or_no(localizer):
    crops = [noise((40, 60), 1), noise((80, 30), 2), noise((28, 28), 3)]
    grammar = localizer.compiler.compile_grammar('root ::= "yes" | "no"')
    concepts, others = ["lime", "lemon", "lime"], [["lemon"], ["lime"], ["lemon"]]
    prompts = [verification_prompt(c, o) for c, o in zip(concepts, others, strict=True)]
    assert prompts[0] == 'Is the main object in this image a "lime", not a "lemon"? Answer yes or no.'
    texts = [g.text for g in localizer.generate(crops, prompts, [grammar] * 3, max_new_tokens=4)]
    assert set(texts) <= {"yes", "no"}
    verdicts = localizer.verify(crops, concepts, others)
    assert verdicts == [t == "yes" for t in texts]


# -- the stage, with scripted answers -----------------------------------------------------------
def stored_record(
    store: ManifestStore,
    record_id: str,
    concepts: list[str],
    image: Image.Image,
    state: State = State.generated,
) -> Record:
    record = Record(
        id=record_id,
        group="test",
        concepts=[Concept(name=c) for c in concepts],
        source=GeneratedSource(template="t", setting="s", seed=0),
        state=state,
    )
    store.store_image(record, image)
    store.put(record)
    return record


class ScriptedLocalizer(QwenLocalizer):
    """The tiny localizer whose answers are scripted per image colour; ``poison`` colours raise."""

    def __init__(
        self, answers: dict[tuple, str], poison: tuple | None = None, box_frame: str = "input_pixels"
    ):
        super().__init__("tiny", batch_size=3, box_frame=box_frame)
        self.answers, self.poison, self.batches = answers, poison, []

    def ground(self, images, concepts):
        colours = [image.getpixel((0, 0)) for image in images]
        self.batches.append(len(images))
        if self.poison in colours:
            raise RuntimeError("CUDA error: device-side assert triggered")
        return [
            Generation(self.answers[c], self.input_size(image))
            for c, image in zip(colours, images, strict=True)
        ]


RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)
ANSWER = '```json\n[{"bbox_2d": [14, 28, 70, 84], "label": "lemon"}, {"bbox_2d": [84, 0, 140, 56], "label": "limes"}]\n```'


def three_records(store: ManifestStore) -> list[Record]:
    return [
        stored_record(store, f"gen-{name}", ["lemon", "lime"], Image.new("RGB", (200, 100), colour))
        for name, colour in (("red", RED), ("green", GREEN), ("blue", BLUE))
    ]


def test_localize_maps_boxes_to_stored_pixels_and_keeps_raw_text(workdir):
    store = ManifestStore(workdir)
    records = three_records(store)
    passing = stored_record(store, "web-done", ["lemon", "lime"], Image.new("RGB", (10, 10)), State.segmented)
    passing.source = WebSource(url="https://example.org/a.jpg")
    localizer = ScriptedLocalizer({RED: ANSWER, GREEN: ANSWER, BLUE: "I cannot see any fruit."})
    done = []
    run = run_stage(localizer, store, [*records, passing], progress=done.append)
    assert [r.id for r in run.records] == [
        r.id for r in records
    ] and run.skipped == 1  # passing is not touched
    assert sorted(r.id for r in done) == sorted(r.id for r in records) and passing.state == State.segmented
    red = store.get("gen-red")
    assert localizer.input_size(Image.new("RGB", (200, 100))) == (196, 112)  # multiples of 28
    # input 196 x 112 -> stored 200 x 100: x * 200/196, y * 100/112
    assert red.state == State.localized
    sx, sy = 200 / 196, 100 / 112
    assert red.concept("lemon").boxes == [pytest.approx((14 * sx, 28 * sy, 70 * sx, 84 * sy))]
    assert red.concept("lime").boxes == [pytest.approx((84 * sx, 0, 140 * sx, 56 * sy))]
    event = red.history[-1]
    assert event.stage == "localize" and event.params["raw_output"] == ANSWER
    assert event.params["input_size"] == [196, 112] and event.params["constrained"] is True
    assert event.note == "2 boxes"  # one per concept
    blue = store.get("gen-blue")
    assert (blue.state, blue.rejection.stage, blue.rejection.reason) == (
        State.rejected,
        "localize",
        "unparseable",
    )
    assert blue.history[-1].params["raw_output"] == "I cannot see any fruit."


def test_missing_concept_rejects_with_no_box_and_keeps_found_boxes(workdir):
    store = ManifestStore(workdir)
    record = three_records(store)[0]
    only_lemon = (
        '[{"bbox_2d": [14, 28, 70, 84], "label": "lemon"}, {"bbox_2d": [1, 1, 9, 9], "label": "orange"}]'
    )
    run_stage(ScriptedLocalizer({RED: only_lemon}), store, [record])
    saved = store.get(record.id)
    assert (saved.rejection.reason, saved.rejection.stage) == ("no_box", "localize")
    assert "lime" in saved.rejection.detail and saved.concept("lemon").boxes


def test_unreadable_image_in_the_middle_of_a_batch(workdir):
    store = ManifestStore(workdir)
    records = three_records(store)
    (workdir / records[1].image.path).unlink()
    localizer = ScriptedLocalizer({RED: ANSWER, GREEN: ANSWER, BLUE: ANSWER})
    run_stage(localizer, store, records)
    states = {r.id: (store.get(r.id).state, store.get(r.id).rejection) for r in records}
    assert states["gen-red"][0] == State.localized and states["gen-blue"][0] == State.localized
    assert states["gen-green"][0] == State.rejected and states["gen-green"][1].reason == "image_unreadable"
    assert store.get("gen-green").history[-1].params == localizer.params()  # which model refused it
    assert localizer.batches == [2]


def test_generation_error_in_the_middle_of_a_batch(workdir):
    store = ManifestStore(workdir)
    records = three_records(store)
    localizer = ScriptedLocalizer({RED: ANSWER, GREEN: ANSWER, BLUE: ANSWER}, poison=GREEN)
    run_stage(localizer, store, records)
    assert [store.get(r.id).state for r in records] == [State.localized, State.rejected, State.localized]
    green = store.get("gen-green")
    assert green.rejection.reason == "model_error" and "CUDA error" in green.rejection.detail
    assert localizer.batches == [3, 1, 1, 1]  # the batch failed, then image by image


@pytest.mark.slow
def test_tiny_localize_end_to_end(workdir, localizer):
    store = ManifestStore(workdir)
    records = [stored_record(store, f"gen-{i}", GROUPS[i], noise(SIZES[i], 10 + i)) for i in range(4)]
    run_stage(localizer, store, records)
    for record in records:
        saved = store.get(record.id)
        assert saved.state in (State.localized, State.rejected)
        assert json.loads(saved.history[-1].params["raw_output"])  # constrained: always valid JSON
        if saved.state == State.localized:
            width, height = saved.image.width, saved.image.height
            for concept in saved.concepts:
                assert concept.boxes
                for x1, y1, x2, y2 in concept.boxes:
                    assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
        else:
            assert saved.rejection.stage == "localize" and saved.rejection.reason == "no_box"


def test_bad_model_reference_says_what_to_do(tmp_path):
    with pytest.raises(OSError, match="tiny"):
        QwenLocalizer(str(tmp_path / "no-such-model"), device="cpu")
    with pytest.raises(ValueError, match="min_pixels"):
        QwenLocalizer("tiny", min_pixels=10_000, max_pixels=1_000)


def test_other_model_types_are_refused_before_loading_weights(tmp_path):
    from transformers import Qwen2VLConfig

    Qwen2VLConfig().save_pretrained(tmp_path)  # Qwen2-VL answers in a 0-1000 frame
    with pytest.raises(ValueError, match="qwen2_vl"):
        QwenLocalizer(str(tmp_path), device="cpu")


def test_every_concept_mode_places_each_concept_in_order():
    localizer = QwenLocalizer("tiny", batch_size=4, max_boxes_per_concept=1, require_every_concept=True)
    images = [noise(size, 20 + i) for i, size in enumerate(SIZES)]
    for answer, concepts in zip(localizer.ground(images, GROUPS), GROUPS, strict=True):
        labels = [item["label"] for item in json.loads(answer.text)]
        assert labels == concepts


def test_a_0_to_1000_box_frame_maps_by_the_grid_not_the_input_size(workdir):
    """``box_frame="relative_1000"`` (Qwen2-VL / Qwen3-VL): 0-1000 over the image, whatever the input size."""
    store = ManifestStore(workdir)
    record = stored_record(store, "gen-grid", ["lemon", "lime"], Image.new("RGB", (200, 100), RED))
    answer = '[{"bbox_2d": [500, 0, 1000, 500], "label": "lemon"}, {"bbox_2d": [0, 500, 250, 1000], "label": "lime"}]'
    localizer = ScriptedLocalizer({RED: answer}, box_frame="relative_1000")
    run_stage(localizer, store, [record])
    saved = store.get("gen-grid")
    assert saved.concept("lemon").boxes == [pytest.approx((100, 0, 200, 50))]
    assert saved.concept("lime").boxes == [pytest.approx((0, 50, 50, 100))]
    assert saved.history[-1].params["box_frame"] == "relative_1000"
    from annotators.grounding import frame_size  # the constrained schema's bounds come from it too

    assert frame_size("relative_1000", (196, 112)) == (1000, 1000)
    assert frame_size("input_pixels", (196, 112)) == (196, 112)
    with pytest.raises(ValueError, match="box_frame 'percent'"):
        QwenLocalizer("tiny", box_frame="percent")
