"""Checked contracts of the record: reason codes per stage (``manifests.reasons``) and state moves (``TRANSITIONS``)."""

from __future__ import annotations

import pytest

from manifests.reasons import REASONS, DownloadReason, ScrapeReason, check_reason
from manifests.record import TRANSITIONS, Concept, GeneratedSource, Record, State


def record() -> Record:
    return Record(
        id="gen-x",
        group="lemon-lime",
        concepts=[Concept(name="lemon"), Concept(name="lime")],
        source=GeneratedSource(template="t", setting="s", seed=0),
    )


def test_a_stage_rejects_only_with_its_own_codes():
    r = record().reject("localize", "no_box", "no usable box for ['lime']")
    assert (r.rejection.stage, r.rejection.reason) == ("localize", "no_box")
    with pytest.raises(ValueError, match=r"'the wolf is a husky' is not a reason code of stage 'review'"):
        record().reject("review", "the wolf is a husky")
    with pytest.raises(ValueError, match="no_box"):  # a code of another stage is refused too
        record().reject("review", "no_box")
    assert (
        record().reject("my-own-stage", "anything").rejection.reason == "anything"
    )  # unlisted stages are free
    assert check_reason("scrape", "duplicate") == "duplicate"


def test_every_stage_list_has_the_runners_error_code_and_scrape_keeps_every_download_reason():
    assert all("error" in codes.__members__ for codes in REASONS.values())
    assert set(DownloadReason) <= set(ScrapeReason)


def test_the_reason_lists_the_stages_export_are_the_enums():
    from generators.download import FAILURE_REASONS
    from generators.flux import GENERATE_FAILURE_REASONS
    from generators.web import SCRAPE_FAILURE_REASONS

    assert set(FAILURE_REASONS) == set(DownloadReason)
    assert set(SCRAPE_FAILURE_REASONS) == set(ScrapeReason)
    assert set(GENERATE_FAILURE_REASONS) == set(REASONS["generate"])


def test_the_pipeline_order_is_the_only_way_forward():
    r = record()
    for state, stage in [
        (State.generated, "generate"),
        (State.localized, "localize"),
        (State.segmented, "segment"),
        (State.segmented, "quality"),  # a re-check stays segmented
        (State.in_review, "review"),
        (State.segmented, "review"),  # the task was deleted
        (State.in_review, "review"),
        (State.reviewed, "review"),
        (State.reviewed, "review"),  # a revised annotation applied again
    ]:
        r.advance(state, stage)
        assert r.state == state and r.history[-1].stage == stage
    with pytest.raises(
        ValueError,
        match=r"cannot move a 'reviewed' record to 'in_review' \(from 'reviewed': \['reviewed'\]\)",
    ):
        r.advance(State.in_review, "review")


def test_skipping_a_stage_is_refused_and_the_record_is_unchanged():
    r = record()
    with pytest.raises(
        ValueError, match=r"stage 'segment' cannot move a 'planned' record to 'segmented'.*\['generated'\]"
    ):
        r.advance(State.segmented, "segment")
    assert r.state == State.planned and r.history == []


def test_a_rejected_record_can_only_be_planned_again_or_reviewed():
    """Planned again (a scrape retried) or reviewed (a reviewer revised a reject to an accept)."""
    r = record().reject("scrape", "timeout", "slow")
    assert TRANSITIONS[State.rejected] == frozenset({State.planned, State.reviewed})
    with pytest.raises(ValueError):
        r.advance(State.generated, "scrape")
    r.advance(State.planned, "scrape", note="retry after timeout")
    assert r.state == State.planned and r.rejection is None
