"""Configuration errors fail at once, naming the field and the fix; transient errors are retried
(issue 18 item 6). Flows run against Prefect's test harness (a temporary server); the CLI in process."""

from __future__ import annotations

import pytest
from prefect.testing.utilities import prefect_test_harness
from typer.testing import CliRunner

import flows.pipeline as pipeline
from flows.cli import app
from flows.config import load_profile

pytestmark = pytest.mark.slow
runner = CliRunner()


@pytest.fixture(scope="module")
def harness():
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def counted_token(monkeypatch):
    """``_labelstudio_token`` replaced by one that counts its calls and raises the given error."""
    calls = []

    def install(error: Exception):
        def token():
            calls.append(error)
            raise error

        monkeypatch.setattr(pipeline, "_labelstudio_token", token)
        # the same task, retries and retry condition, without the 10 s wait between attempts
        monkeypatch.setattr(
            pipeline, "pull_reviews_task", pipeline.pull_reviews_task.with_options(retry_delay_seconds=0)
        )
        return calls

    return install


def config(workdir):
    return load_profile("smoke", workdir=str(workdir), review={"url": "http://127.0.0.1:9"})


def test_a_missing_token_fails_the_flow_at_once_with_the_variable_to_set(
    harness, workdir, counted_token, monkeypatch
):
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    calls = counted_token(
        ValueError("no Label Studio token: export LABEL_STUDIO_API_KEY (printed by `mcc labelstudio start`)")
    )
    state = pipeline.sync_reviews(config(workdir), return_state=True)
    assert state.is_failed()
    assert len(calls) == 1  # the task allows 2 retries: none was spent on a configuration error
    with pytest.raises(ValueError, match="export LABEL_STUDIO_API_KEY"):
        state.result()


def test_a_transient_error_is_retried(harness, workdir, counted_token):
    calls = counted_token(ConnectionError("Label Studio is restarting"))
    state = pipeline.sync_reviews(config(workdir), return_state=True)
    assert state.is_failed() and len(calls) == 3  # the first attempt and its 2 retries


def test_a_flow_called_with_a_bad_field_or_profile_fails_before_any_task(harness, workdir, counted_token):
    calls = counted_token(ConnectionError("never reached"))
    for parameters, message in (
        ({"profile": "smoke", "workdir": str(workdir), "review": {"projekt": "x"}}, r"review\.projekt"),
        ({"profile": "nope", "workdir": str(workdir)}, "unknown profile 'nope': use one of"),
        ({"profile": "smoke", "workdir": str(workdir), "plan": {"per_group": "many"}}, r"plan\.per_group"),
    ):
        state = pipeline.sync_reviews(parameters, return_state=True)
        assert state.is_failed()
        with pytest.raises(Exception, match=message):
            state.result()
    assert calls == []


@pytest.mark.parametrize(
    "arguments, message",
    [
        (
            ["plan", "--profile", "nope"],
            "unknown profile 'nope': use one of ('smoke', 'full') or the path of a YAML file",
        ),
        (
            ["plan", "--profile", "smoke", "--set", "plan.per_grp=3"],
            "plan.per_grp: Extra inputs are not permitted",
        ),
        (
            ["plan", "--profile", "smoke", "--set", "plan.per_group=abc"],
            "plan.per_group: Input should be a valid integer",
        ),
        (
            ["review", "push"],
            "no API token for http://127.0.0.1:8080: pass --token or set LABEL_STUDIO_API_KEY",
        ),
    ],
)
def test_cli_configuration_errors_name_the_field_and_the_fix(arguments, message, workdir, monkeypatch):
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    monkeypatch.delenv("LABEL_STUDIO_URL", raising=False)
    before = sorted(workdir.rglob("*")) if workdir.exists() else []
    result = runner.invoke(app, [*arguments, "--workdir", str(workdir)], terminal_width=400)
    assert result.exit_code != 0
    assert message in " ".join(result.output.split())
    after = sorted(workdir.rglob("*")) if workdir.exists() else []
    assert [p for p in after if p.is_file()] == [p for p in before if p.is_file()]  # nothing was written
