"""The flows end to end on the smoke profile, against Prefect's test harness (a temporary server)."""

from collections import Counter

import pytest
from prefect.testing.utilities import prefect_test_harness

from flows.config import load_profile
from flows.pipeline import publish_dataset, rebuild_dataset, score_benchmark
from manifests import ManifestStore

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def harness():
    with prefect_test_harness(server_startup_timeout=120):
        yield


def smoke_config(workdir, **overrides):
    return load_profile(
        "smoke",
        workdir=str(workdir),
        plan={"max_groups": 2, "per_group": 1},
        publish={"out": str(workdir / "dataset")},
        score={"out": str(workdir / "reports"), "methods": ["anchordiff"], "limit": 1},
        **overrides,
    )


def stage_events(store):
    return {r.id: Counter(e.stage for e in r.history) for r in store.iter()}


def test_rebuild_publish_score_and_resume(harness, workdir):
    config = smoke_config(workdir)
    result = rebuild_dataset(config)
    store = ManifestStore(workdir)
    records = list(store.iter())
    assert len(records) == 2  # the plan: 2 groups x 1 scene
    assert result["states"] == store.counts().by_state
    assert set(result["states"]) <= {"segmented", "rejected"}  # no record left half-way
    assert all(r.image is not None for r in records)
    events = stage_events(store)
    assert all(counts["generate"] == 1 for counts in events.values())

    # a second run finds nothing to do and changes nothing
    again = rebuild_dataset(config)
    assert again["shards"] == 0
    assert stage_events(store) == events

    assert result["states"].get("segmented", 0) >= 1  # seeded models: the same records pass every time
    published = publish_dataset(config)
    assert published["rows"] == result["states"]["segmented"]
    assert (workdir / "dataset" / "README.md").is_file()
    reports = score_benchmark(config)
    assert (workdir / "reports" / "sd3-noise-anchordiff" / "report.json").is_file()
    assert set(reports) == {"anchordiff"}
    # a smoke report says it is one, and carries what a citable report needs
    markdown = (workdir / "reports" / "sd3-noise-anchordiff" / "report.md").read_text()
    assert "> **Warning: these figures are not benchmark results.**" in markdown
    assert "random `tiny` generator" in markdown and "are machine masks" in markdown
    assert "| chance: constant map |" in markdown and "| chance: uniform random map |" in markdown
    assert f"version {config.publish.version}, split test" in markdown
    assert "95% confidence intervals (percentile bootstrap over images" in markdown
    assert "| **anchordiff" not in markdown  # a smoke run is never bold beside the published rows


def test_a_model_that_cannot_load_fails_the_run_with_that_error(harness, workdir):
    config = smoke_config(workdir, localize={"model": str(workdir / "no-such-model")})
    state = rebuild_dataset(config, return_state=True)
    assert state.is_failed()
    assert "no-such-model" in state.message
    # the records the generator finished are kept, waiting for the localizer
    assert set(ManifestStore(workdir).counts().by_state) == {"generated"}
