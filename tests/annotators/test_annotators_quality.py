"""The quality gate's checks, one test each, on masks drawn by hand (100 x 100 images)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from quality_samples import SIZE, good_sample, rect

from annotators.quality import (
    CHECKS,
    GateSample,
    QualityConfig,
    QualityGate,
    crop_concept,
    distinct_boxes,
    mask_fills_box,
    mask_in_box,
    masks_overlap,
    masks_present,
    min_area,
    min_sam_score,
    resolve_overlaps,
)
from manifests import Concept, GeneratedSource, ManifestStore, Record, State, decode_mask, encode_mask
from manifests.stage import run_stage


def test_good_sample_passes_every_check():
    sample, config = good_sample(), QualityConfig()
    assert all(check(sample, config) is None for check in CHECKS.values())
    assert QualityGate(config).evaluate(sample).keep


def test_masks_present():
    sample = good_sample()
    sample.masks["lime"] = np.zeros((SIZE, SIZE), dtype=bool)
    failure = masks_present(sample, QualityConfig())
    assert failure is not None and failure.reason == "missing_mask" and "lime" in failure.detail
    sample.masks["lime"] = None
    assert masks_present(sample, QualityConfig()).reason == "missing_mask"


def test_min_sam_score():
    sample = good_sample()
    sample.scores["lemon"] = 0.3
    assert min_sam_score(sample, QualityConfig(min_sam_score=0.5)).reason == "low_sam_score"
    assert min_sam_score(sample, QualityConfig(min_sam_score=0.25)) is None


def test_distinct_boxes():
    sample = good_sample()
    sample.boxes["lime"] = [(60, 60, 90, 90), (11, 11, 41, 41)]  # its second box is the lemon's object
    failure = distinct_boxes(sample, QualityConfig())
    assert failure is not None and failure.reason == "same_object" and "lemon/lime" in failure.detail
    sample.boxes["lime"] = [(25, 10, 55, 40)]  # IoU 1/3: neighbours, not the same object
    assert distinct_boxes(sample, QualityConfig()) is None


def test_masks_overlap_and_resolution():
    sample = good_sample()
    sample.masks["lime"] = rect(30, 12, 60, 38)  # shares 8 of its 30 columns with the lemon
    failure = masks_overlap(sample, QualityConfig(max_overlap=0.1))
    assert failure is not None and failure.reason == "masks_overlap"
    assert masks_overlap(sample, QualityConfig(max_overlap=0.5)) is None
    resolved, lost = resolve_overlaps(sample.masks, sample.scores)
    assert lost == {"lime": 8 * 26}  # the lime scores lower: it loses the contested pixels
    assert not np.logical_and(resolved["lemon"], resolved["lime"]).any()
    assert resolved["lemon"].sum() == sample.masks["lemon"].sum()


def test_gate_notes_resolved_overlap_on_the_record():
    sample = good_sample()
    sample.masks["lime"] = rect(36, 12, 62, 38)
    sample.boxes["lime"] = [(36, 10, 62, 40)]
    record = make_record(sample)
    gate = QualityGate(QualityConfig(max_overlap=0.2))
    result = gate.evaluate(sample)
    assert result.keep and result.lost_pixels == {"lime": 2 * 26}
    gate.apply(record, result)
    assert record.state == State.segmented and record.history[-1].note == "passed the quality gate"
    assert record.history[-1].params == {"quality": gate.config.model_dump()}
    assert any("overlap resolved" in (event.note or "") for event in record.history)
    stored = decode_mask(record.concept("lime").mask)
    assert not np.logical_and(stored, decode_mask(record.concept("lemon").mask)).any()


def test_mask_in_box():
    sample = good_sample()
    sample.masks["lemon"] = rect(12, 12, 38, 38) | rect(12, 50, 38, 70)  # a second blob outside the box
    failure = mask_in_box(sample, QualityConfig())
    assert failure is not None and failure.reason == "mask_outside_box" and "lemon" in failure.detail
    sample.boxes["lemon"].append((10, 48, 40, 72))  # ... which a second box explains
    assert mask_in_box(sample, QualityConfig()) is None


def test_mask_fills_box():
    sample = good_sample()
    sample.masks["lime"] = rect(62, 62, 70, 70)  # 64 px in a 900 px box
    failure = mask_fills_box(sample, QualityConfig())
    assert failure is not None and failure.reason == "mask_underfills_box" and "lime" in failure.detail
    assert mask_fills_box(sample, QualityConfig(min_box_fill=0.05)) is None


def test_min_area():
    sample = good_sample()
    sample.masks["lime"] = rect(62, 62, 67, 67)  # 25 px = 0.25 % of the image
    failure = min_area(sample, QualityConfig())
    assert failure is not None and failure.reason == "mask_too_small"
    assert min_area(sample, QualityConfig(min_area_fraction=0.002)) is None


def test_permissive_config_keeps_noise_but_not_empty_masks():
    sample = good_sample()
    sample.masks = {"lemon": np.ones((SIZE, SIZE), bool), "lime": rect(0, 0, 100, 50)}
    sample.scores = {"lemon": 0.2, "lime": 0.1}
    assert not QualityGate().evaluate(sample).keep
    result = QualityGate(QualityConfig.permissive()).evaluate(sample)
    assert not result.keep and result.failures[0].reason == "mask_too_small"  # the lime lost every pixel
    sample.scores = {"lemon": 0.1, "lime": 0.9}
    assert QualityGate(QualityConfig.permissive()).evaluate(sample).keep


def test_report_counts_first_reason_and_every_failure():
    gate = QualityGate()
    bad = good_sample()
    bad.scores["lime"] = 0.1
    bad.masks["lime"] = rect(62, 62, 66, 66)
    for sample in (good_sample(), bad, bad):
        gate.report.add(gate.evaluate(sample))
    report = gate.report.as_dict()
    assert report["seen"] == 3 and report["kept"] == 1
    assert report["rejected_by"] == {"low_sam_score": 2}
    assert report["failures"] == {"low_sam_score": 2, "mask_underfills_box": 2, "mask_too_small": 2}


class FakeVerifier:
    """Says yes to every concept except ``refuse``; records what it was shown."""

    def __init__(self, refuse: str | None = None):
        self.refuse = refuse
        self.calls: list[tuple[tuple[int, int], str, list[str]]] = []

    def verify(self, crops, concepts, others):
        self.calls += [(c.size, n, list(o)) for c, n, o in zip(crops, concepts, others, strict=True)]
        return [n != self.refuse for n in concepts]


def test_second_look_asks_per_concept_crop_and_rejects_a_no():
    image = Image.new("RGB", (SIZE, SIZE))
    verifier = FakeVerifier(refuse="lime")
    gate = QualityGate(QualityConfig(second_look=True), verifier=verifier)
    result = gate.evaluate(good_sample(), image)
    assert [f.reason for f in result.failures] == ["vlm_disagrees"]
    assert [(name, others) for _, name, others in verifier.calls] == [
        ("lemon", ["lime"]),
        ("lime", ["lemon"]),
    ]
    assert verifier.calls[0][0] == (36, 36)  # the 30 px box with 10 % padding each side
    assert (
        QualityGate(QualityConfig(second_look=True), verifier=FakeVerifier())
        .evaluate(good_sample(), image)
        .keep
    )
    with pytest.raises(ValueError, match="verifier"):
        QualityGate(QualityConfig(second_look=True))


def test_crop_concept_pads_clips_and_upsizes_tiny_crops():
    image = Image.new("RGB", (200, 100))
    assert crop_concept(image, [(0, 0, 100, 50)], 0.1).size == (110, 55)
    assert min(crop_concept(image, [(10, 10, 14, 12)], 0.0).size) == 28


def make_record(sample: GateSample) -> Record:
    record = Record(
        id="gen-test",
        group="lemon-lime",
        concepts=[Concept(name=c) for c in sample.concepts],
        source=GeneratedSource(template="t", setting="s", seed=0),
        state=State.localized,
    )
    for concept in record.concepts:
        concept.boxes = sample.boxes[concept.name]
    return record


def test_gate_rechecks_stored_segmented_records(workdir):
    store = ManifestStore(workdir)
    records = []
    for i, lime_mask in enumerate([rect(62, 62, 88, 88), rect(62, 62, 66, 66)]):
        sample = good_sample()
        sample.masks["lime"] = lime_mask
        record = make_record(sample)
        record.id = f"gen-test{i}"
        store.store_image(record, Image.new("RGB", (SIZE, SIZE)))
        for concept in record.concepts:
            concept.mask = encode_mask(sample.masks[concept.name])
            concept.scores["sam"] = sample.scores[concept.name]
        record.advance(State.segmented, "quality")
        store.put(record)
        records.append(record)
    untouched = make_record(good_sample())  # not segmented: passes through
    run_stage(QualityGate(), store, [*records, untouched])
    assert store.get("gen-test0").state == State.segmented
    rejected = store.get("gen-test1")
    assert rejected.state == State.rejected and rejected.rejection.stage == "quality"
    assert rejected.rejection.reason == "mask_underfills_box"
    assert untouched.state == State.localized
