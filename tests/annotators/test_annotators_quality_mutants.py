"""Pins of the quality gate (``annotators.quality``) beyond its per-check tests: a concept without a
SAM score counts as score 0, checks skip a concept with no mask, the report counts resolved
overlaps, and the failure details quote the threshold and the values that failed it."""

from __future__ import annotations

import numpy as np
from quality_samples import SIZE, good_sample, rect

from annotators.quality import QualityConfig, QualityGate, mask_in_box, min_area, min_sam_score


def test_a_concept_without_a_sam_score_counts_as_score_zero():
    """``scores`` without the concept: it is below any positive threshold, reported as 0.0."""
    s = good_sample()
    del s.scores["lime"]
    failure = min_sam_score(s, QualityConfig(min_sam_score=0.5))
    assert failure is not None and failure.reason == "low_sam_score"
    assert failure.detail == "SAM score below 0.5: {'lime': 0.0}"


def test_mask_in_box_skips_a_concept_without_a_mask():
    """A missing or empty mask is masks_present's failure, not mask_in_box's (no error either)."""
    s = good_sample()
    s.masks["lime"] = None
    assert mask_in_box(s, QualityConfig()) is None
    s.masks["lime"] = np.zeros((SIZE, SIZE), bool)
    assert mask_in_box(s, QualityConfig()) is None
    s.masks["lemon"] = rect(12, 12, 38, 38) | rect(12, 50, 38, 70)
    assert mask_in_box(s, QualityConfig()).detail == "mask part inside its boxes below 90%: {'lemon': '57%'}"


def test_min_area_detail_quotes_the_threshold():
    """The detail names the area floor (0.30 % by default) and each small mask's share."""
    s = good_sample()
    s.masks["lime"] = rect(62, 62, 67, 67)
    assert min_area(s, QualityConfig()).detail == "mask area below 0.30% of the image: {'lime': '0.25%'}"


def test_report_counts_records_whose_overlap_was_resolved():
    """``overlaps_resolved`` in the report counts the records that lost contested pixels."""
    gate = QualityGate(QualityConfig(max_overlap=0.2))
    overlapping = good_sample()
    overlapping.masks["lime"] = rect(36, 12, 62, 38)
    overlapping.boxes["lime"] = [(36, 10, 62, 40)]
    for s in (good_sample(), overlapping):
        gate.report.add(gate.evaluate(s))
    assert gate.report.as_dict() == {
        "seen": 2,
        "kept": 2,
        "rejected_by": {},
        "failures": {},
        "overlaps_resolved": 1,
    }


def test_a_box_at_the_image_edge_covers_its_first_row_and_column():
    from annotators.quality import _box_mask

    region = _box_mask((0.0, 0.0, 3.0, 2.0), (4, 5))
    assert region.tolist() == [[True, True, True, False, False], [True, True, True, False, False],
                               [False] * 5, [False] * 5]  # fmt: skip
    assert _box_mask((-3.0, -2.0, 1.0, 1.0), (4, 5)).sum() == 1  # clipped at the edges


def test_a_stored_record_without_a_sam_score_scores_zero_and_an_unreadable_one_is_rejected(tmp_path):
    from PIL import Image

    from annotators.quality import GateSample
    from manifests.masks import encode_mask
    from manifests.record import SAM_SCORE, Concept, GeneratedSource, Record, State
    from manifests.store import ManifestStore

    store = ManifestStore(tmp_path / "work")
    masks = good_sample().masks
    record = Record(
        id="r1", group="citrus",
        concepts=[Concept(name="lemon", boxes=[(10, 10, 40, 40)], mask=encode_mask(masks["lemon"]),
                          scores={SAM_SCORE: 0.7}),
                  Concept(name="lime", boxes=[(60, 60, 90, 90)], mask=encode_mask(masks["lime"]))],
        source=GeneratedSource(template="t", setting="s", seed=0),
    )  # fmt: skip
    store.store_image(record, Image.new("RGB", (SIZE, SIZE)))
    sample = GateSample.from_record(record)
    assert sample.scores == {"lemon": 0.7, "lime": 0.0} and sample.image_size == (SIZE, SIZE)

    record.state = State.segmented
    broken = record.model_copy(deep=True)
    broken.image = None  # a segmented record without its image: the manifest is inconsistent
    gate = QualityGate(QualityConfig(second_look=False))
    (out,) = gate.run([broken], store)
    assert out.state == State.rejected and out.rejection.stage == "quality"
    assert out.rejection.reason == "unreadable"
    assert out.rejection.detail == "ValueError: record r1 has no image; the gate needs its size"


def test_failures_name_their_check_and_detail_the_values():
    """Each failure names the check that raised it (the report's rejected_by / failures count by reason,
    the record's detail by check); SAM scores show to 3 decimals, a missing mask as 0.00% of the image."""
    from annotators.quality import distinct_boxes

    sample = good_sample()
    sample.scores["lime"] = 0.12345
    low = min_sam_score(sample, QualityConfig(min_sam_score=0.5))
    assert (low.check, low.reason) == ("min_sam_score", "low_sam_score") and "{'lime': 0.123}" in low.detail
    sample.boxes["lime"] = [(11, 11, 40, 40)]
    same = distinct_boxes(sample, QualityConfig(max_box_iou=0.8))
    assert (same.check, same.reason) == ("distinct_boxes", "same_object")
    outside = good_sample()
    outside.masks["lemon"] = rect(12, 12, 38, 38) | rect(12, 50, 38, 70)
    assert mask_in_box(outside, QualityConfig()).check == "mask_in_box"
    missing = good_sample()
    missing.masks["lime"] = None
    small = min_area(missing, QualityConfig(min_area_fraction=0.0))
    assert small.check == "min_area" and "'lime': '0.00%'" in small.detail


def test_overlaps_go_to_the_highest_score_against_every_higher_mask():
    """Three masks, scores a > b > c: c loses what a holds although b does not touch it."""
    from annotators.quality import resolve_overlaps

    a, b, c = rect(0, 0, 10, 10), rect(20, 20, 30, 30), rect(5, 0, 15, 10)
    resolved, lost = resolve_overlaps({"a": a, "b": b, "c": c}, {"a": 0.9, "b": 0.8, "c": 0.7})
    assert lost == {"c": 50} and not (resolved["c"] & a).any() and resolved["c"].sum() == 50
    assert np.array_equal(resolved["a"], a) and np.array_equal(resolved["b"], b)


def test_the_report_counts_every_record_with_a_resolved_overlap():
    from annotators.quality import GateReport, GateResult

    report = GateReport()
    for lost in ({"a": 3}, {}, {"b": 1}):
        report.add(GateResult(failures=[], masks={}, lost_pixels=lost))
    assert report.as_dict()["overlaps_resolved"] == 2 and report.as_dict()["seen"] == 3
