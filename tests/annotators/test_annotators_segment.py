"""Sam2Segmenter on the random hiera-tiny SAM2 (set_image takes seconds on CPU: few, small images)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from fixture_scopes import shared_unless_mutating
from hydra.core.global_hydra import GlobalHydra
from PIL import Image

from annotators.quality import QualityConfig, QualityGate
from annotators.segment import TINY_CONFIG, Sam2Segmenter, clean_mask, normalise_sam_output, sam2_configs
from manifests import Concept, GeneratedSource, ManifestStore, Record, State, decode_mask, encode_mask
from manifests.stage import run_stage

BOXES = np.array([[10, 10, 60, 50], [50, 20, 120, 90], [0, 0, 30, 30]], dtype=np.float32)


@pytest.fixture(scope=shared_unless_mutating)
def segmenter():
    torch.set_num_threads(2)
    return Sam2Segmenter(TINY_CONFIG, None, device="cpu", gate=QualityGate(QualityConfig.permissive()))


def noise(width: int, height: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_normalise_sam_output_shapes():
    one, score = normalise_sam_output(np.ones((1, 5, 7), np.float32), np.array([0.9]), 1)
    assert one.shape == (1, 5, 7) and one.dtype == bool and score.shape == (1,)
    many, scores = normalise_sam_output(np.zeros((3, 1, 5, 7), np.float32), np.ones((3, 1)), 3)
    assert many.shape == (3, 5, 7) and not many.any() and scores.shape == (3,)
    with pytest.raises(ValueError, match="multimask_output=False"):
        normalise_sam_output(np.zeros((2, 3, 5, 7)), np.ones((2, 3)), 2)
    with pytest.raises(ValueError, match="2 boxes"):
        normalise_sam_output(np.zeros((1, 5, 7)), np.ones(1), 2)


@pytest.mark.slow
def test_one_two_three_boxes_on_one_embedding(segmenter):
    image = noise(128, 96, 0)
    embeds = []
    hook = segmenter.model.image_encoder.register_forward_hook(lambda module, args, out: embeds.append(1))
    segmenter.predictor.set_image(image)
    for n in (1, 2, 3):
        raw_masks, raw_scores, _ = segmenter.predictor.predict(
            box=BOXES[:n] if n > 1 else BOXES[0], multimask_output=False
        )
        assert raw_masks.shape == ((1, 96, 128) if n == 1 else (n, 1, 96, 128))  # SAM2's own shapes
        masks, scores = normalise_sam_output(raw_masks, raw_scores, n)
        assert masks.shape == (n, 96, 128) and masks.dtype == bool and scores.shape == (n,)
        for mask in masks:
            assert np.array_equal(decode_mask(encode_mask(mask)), mask)  # RLE round trip
    hook.remove()
    assert len(embeds) == 1  # one image embedding for all prompts


def test_clean_mask_drops_islands_and_fills_holes():
    mask = np.zeros((40, 40), dtype=bool)
    mask[5:25, 5:25] = True
    mask[10:12, 10:12] = False  # a 4 px hole
    mask[30, 30] = True  # a 1 px island
    mask[0:3, 35:40] = True  # a 15 px island on the border
    cleaned = clean_mask(mask, min_island=10, max_hole=10)
    assert cleaned[10:12, 10:12].all() and not cleaned[30, 30] and cleaned[0:3, 35:40].all()
    assert cleaned.sum() == 400 + 15
    assert np.array_equal(clean_mask(mask, 0, 0), mask)
    # a big hole stays a hole, and the background touching the border is never filled
    ring = np.ones((30, 30), dtype=bool)
    ring[5:25, 5:25] = False
    assert np.array_equal(clean_mask(ring, 10, 100), ring)


def make_record(store: ManifestStore, record_id: str, boxes: dict[str, list], image: np.ndarray) -> Record:
    record = Record(
        id=record_id,
        group="test",
        concepts=[Concept(name=n, boxes=b) for n, b in boxes.items()],
        source=GeneratedSource(template="t", setting="s", seed=0),
        state=State.localized,
    )
    store.store_image(record, Image.fromarray(image))
    store.put(record)
    return record


@pytest.mark.slow
def test_segment_batch_with_a_failing_image_in_the_middle(segmenter, workdir, monkeypatch):
    store = ManifestStore(workdir)
    first = make_record(
        store, "gen-a", {"lemon": [(10, 10, 60, 50)], "lime": [(70, 20, 120, 90)]}, noise(128, 96, 1)
    )
    broken = make_record(store, "gen-b", {"lemon": [(1, 1, 5, 5)], "lime": [(6, 6, 9, 9)]}, noise(16, 16, 2))
    last = make_record(
        store,
        "gen-c",
        {"frog": [(0, 0, 40, 40), (50, 10, 90, 60)], "toad": [(60, 40, 100, 90)], "newt": [(5, 50, 45, 95)]},
        noise(112, 100, 3),
    )
    (workdir / broken.image.path).unlink()
    already = first.model_copy(deep=True)
    already.id, already.state = "gen-done", State.segmented
    calls = []
    predict = segmenter.predictor.predict
    monkeypatch.setattr(
        segmenter.predictor, "predict", lambda **kw: calls.append(kw["box"].shape) or predict(**kw)
    )
    done, embeds = [], []
    hook = segmenter.model.image_encoder.register_forward_hook(lambda module, args, out: embeds.append(1))
    run_stage(segmenter, store, [first, broken, last, already], progress=done.append)
    hook.remove()
    assert calls == [(2, 4), (4, 4)] and len(done) == 3  # all boxes of an image in one call
    assert len(embeds) == 2  # one embedding per readable image, none per box
    assert already.state == State.segmented and not store.exists("gen-done")  # passed through
    b = store.get("gen-b")
    assert (b.state, b.rejection.stage, b.rejection.reason) == (State.rejected, "segment", "image_unreadable")
    for record_id, size in (("gen-a", (96, 128)), ("gen-c", (100, 112))):
        saved = store.get(record_id)
        assert saved.state == State.segmented, saved.rejection
        for concept in saved.concepts:
            mask = decode_mask(concept.mask)
            assert mask.shape == size and mask.any()
            assert 0.0 <= concept.scores["sam"] <= 1.0
        assert saved.history[-1].stage == "quality" and any(e.stage == "segment" for e in saved.history)
    report = segmenter.gate.last_report.as_dict()  # the run's counts, also written to reports/
    (written,) = (workdir / "reports").glob("quality-*.json")
    assert json.loads(written.read_text()) == report
    assert report["seen"] >= 2 and report["kept"] >= 2


def test_unknown_config_and_missing_checkpoint_fail_up_front(tmp_path):
    assert TINY_CONFIG in sam2_configs() and "configs/sam2.1/sam2.1_hiera_l.yaml" in sam2_configs()
    with pytest.raises(ValueError, match="sam2.1_hiera_t.yaml"):
        Sam2Segmenter("configs/sam2.1/sam2.1_hiera_xl.yaml", None, device="cpu")
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        Sam2Segmenter(TINY_CONFIG, str(tmp_path / "missing.pt"), device="cpu")


def test_hydra_state_of_the_caller_is_restored():
    from hydra import initialize_config_module

    GlobalHydra.instance().clear()
    with initialize_config_module("hydra.test_utils.configs", version_base="1.2"):
        Sam2Segmenter(TINY_CONFIG, None, device="cpu")
        assert GlobalHydra.instance().is_initialized()
        source = GlobalHydra.instance().config_loader().get_sources()
        assert any("hydra.test_utils.configs" in str(s.path) for s in source)


def test_from_config_hands_the_config_checkpoint_device_gate_and_options_to_sam2(monkeypatch):
    """``CONFIG:CHECKPOINT`` is split into SAM2's config and checkpoint (``tiny``: the tiny config, no
    checkpoint); the device, a quality gate over the given settings and the custom options follow."""
    import annotators.segment as segment
    from annotators.config import SegmentConfig

    built = []
    monkeypatch.setattr(
        segment, "Sam2Segmenter", lambda *args, **kwargs: built.append((args, kwargs)) or "sam2"
    )
    quality = QualityConfig(min_area_fraction=0.01)
    config = SegmentConfig(model="configs/x.yaml:/models/x.pt", device="cuda:1", options={"seed": 3})
    assert segment.from_config(config, quality=quality, verifier="judge") == "sam2"
    segment.from_config(SegmentConfig(model="tiny", device="cpu"))
    (args, kwargs), (tiny_args, tiny_kwargs) = built
    assert args == ("configs/x.yaml", "/models/x.pt") and tiny_args == (TINY_CONFIG, None)
    assert kwargs["device"] == "cuda:1" and kwargs["seed"] == 3 and tiny_kwargs["device"] == "cpu"
    assert kwargs["gate"].config == quality and kwargs["gate"].verifier == "judge"


def test_background_touching_only_the_left_or_top_border_is_not_a_hole():
    """Each border (first / last row, first / last column) keeps its background: a 2 px notch in one edge
    stays, though it is smaller than ``max_hole``."""
    for notch in ((slice(4, 6), 0), (slice(4, 6), -1), (0, slice(4, 6)), (-1, slice(4, 6))):
        mask = np.ones((10, 10), dtype=bool)
        mask[notch] = False
        assert np.array_equal(clean_mask(mask, min_island=0, max_hole=50), mask), notch


def bare_segmenter() -> Sam2Segmenter:
    """A Sam2Segmenter without a model (its rejections need none)."""
    segmenter = object.__new__(Sam2Segmenter)
    segmenter.config, segmenter.checkpoint = "configs/x.yaml", "/models/x.pt"
    segmenter.min_island_fraction, segmenter.max_hole_fraction = 1e-4, 2e-4
    segmenter.device, segmenter.dtype = torch.device("cpu"), torch.bfloat16
    return segmenter


def test_segment_rejections_name_the_reason_the_detail_and_the_segmenter(workdir, monkeypatch):
    """No box for a concept, an unreadable image and a SAM2 failure each reject with their own reason and
    detail, and the history records which SAM2 (config, checkpoint, cleaning fractions) refused it."""
    segmenter = bare_segmenter()
    params = {"config": "configs/x.yaml", "checkpoint": "/models/x.pt", "min_island_fraction": 1e-4,
              "max_hole_fraction": 2e-4}  # fmt: skip
    assert segmenter.params() == params
    store = ManifestStore(workdir)
    boxless = make_record(store, "gen-a", {"lemon": [(1, 1, 5, 5)], "lime": []}, noise(16, 16, 1))
    missing = make_record(store, "gen-b", {"lemon": [(1, 1, 5, 5)], "lime": [(6, 6, 9, 9)]}, noise(16, 16, 2))
    (workdir / missing.image.path).unlink()
    failing = make_record(store, "gen-c", {"lemon": [(1, 1, 5, 5)], "lime": [(6, 6, 9, 9)]}, noise(16, 16, 3))

    def out_of_memory(record, image):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(segmenter, "masks_for", out_of_memory)
    for record in (boxless, missing, failing):
        segmenter._segment_one(record, store)
        assert record.state == State.rejected and record.rejection.stage == "segment"
        assert record.history[-1].params == params
    assert (boxless.rejection.reason, boxless.rejection.detail) == (
        "no_box", "a localized record without boxes for every concept",
    )  # fmt: skip
    assert missing.rejection.reason == "image_unreadable" and "FileNotFoundError" in missing.rejection.detail
    assert (failing.rejection.reason, failing.rejection.detail) == (
        "model_error",
        "RuntimeError: CUDA out of memory",
    )


def test_autocast_only_on_cuda_with_a_lower_precision():
    segmenter = bare_segmenter()
    context = segmenter._autocast()
    assert (context.device, context._enabled) == ("cpu", False)  # CPU: float32, whatever dtype was asked
    segmenter.device = torch.device("cuda")
    context = segmenter._autocast()
    assert (context.device, context.fast_dtype) == ("cuda", torch.bfloat16)
    segmenter.dtype = torch.float32
    assert segmenter._autocast().device == "cpu"


def test_cleaning_fractions_of_zero_turn_cleaning_off_and_one_is_refused():
    off = Sam2Segmenter(TINY_CONFIG, None, device="cpu", min_island_fraction=0, max_hole_fraction=0)
    assert (off.min_island_fraction, off.max_hole_fraction) == (0, 0)
    for bad in ({"min_island_fraction": 1.0}, {"max_hole_fraction": 1.0}, {"max_hole_fraction": -0.1}):
        with pytest.raises(ValueError):
            Sam2Segmenter(TINY_CONFIG, None, device="cpu", **bad)
