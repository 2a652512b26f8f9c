"""The review steps of the Prefect flows against the real server: push in rebuild, pull in sync."""

import pytest
from prefect.testing.utilities import prefect_test_harness
from review_records import make_segmented
from test_review_labelstudio import _annotate, _prediction, _verdict

from flows.config import load_profile
from flows.pipeline import rebuild_dataset, sync_reviews
from manifests import State

pytestmark = [pytest.mark.labelstudio, pytest.mark.slow]


def test_rebuild_pushes_for_review_and_sync_reviews_pulls(labelstudio, review_store, monkeypatch):
    info, _ = labelstudio
    store, project = review_store
    make_segmented(store, "gen-a", seed=1)
    make_segmented(store, "gen-b", seed=2)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", info.token)
    config = load_profile(
        "smoke",
        workdir=store.workdir,
        plan={"max_groups": 0},  # nothing new to generate: only the review step runs
        review={"mode": "labelstudio", "url": info.url, "project": project},
    )
    with prefect_test_harness(server_startup_timeout=120):
        rebuilt = rebuild_dataset(config)
        assert rebuilt["review"]["pushed"] == 2
        assert store.counts().by_state == {"in_review": 2}
        task = store.get("gen-a").review_task
        _annotate(info, task, _prediction(info, task) + [_verdict("accept")])
        pulled = sync_reviews(config)
    assert (pulled["reviewed"], pulled["pending"]) == (1, 1)
    assert store.get("gen-a").state == State.reviewed
    assert [c.review for c in store.get("gen-a").concepts] == ["accepted", "accepted"]
    assert store.get("gen-b").state == State.in_review


def test_missing_token_fails_the_push_with_what_to_do(labelstudio, review_store, monkeypatch):
    info, _ = labelstudio
    store, project = review_store
    make_segmented(store, "gen-a", seed=1)
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    config = load_profile(
        "smoke",
        workdir=store.workdir,
        plan={"max_groups": 0},
        review={"mode": "labelstudio", "url": info.url, "project": project},
    )
    with prefect_test_harness(server_startup_timeout=120):
        state = rebuild_dataset(config, return_state=True)
    assert state.is_failed() and "LABEL_STUDIO_API_KEY" in state.message
    assert store.get("gen-a").state == State.segmented
