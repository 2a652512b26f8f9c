"""One configuration: every `mcc` flag sets a field of the profile model, and profile < flag < --set."""

from __future__ import annotations

import types
import typing

import pytest
import typer
from pydantic import BaseModel
from typer.testing import CliRunner

from flows.cli import app
from flows.commands import annotate, dataset, generate, publish, review, score
from flows.config import PipelineConfig, cli_config
from manifests import ManifestStore

# Every command of the app, with the table that maps its flags to profile fields; None for a
# command that runs no stage and has no settings a profile could hold (the reason says why).
TABLES = {
    "plan": dataset.PLAN_FLAGS,
    "generate": generate.GENERATE_FLAGS,
    "scrape": generate.SCRAPE_FLAGS,
    "annotate": annotate.ANNOTATE_FLAGS,
    "publish": publish.PUBLISH_FLAGS,
    "score": score.SCORE_FLAGS,
    "sweep": score.SWEEP_FLAGS,
    "review push": review.REVIEW_FLAGS,
    "review pull": review.PULL_FLAGS,
}
NOT_PROFILE_COMMANDS = {
    "status": "reads the work dir",
    "show": "draws one record",
    "rebuild": "takes the profile itself",
    "review stats": "reads the work dir",
    "labelstudio start": "runs a local server for a work dir",
    "labelstudio stop": "stops that server",
    "labelstudio status": "asks that server",
    "deploy": "sets up a Prefect server for prefect.yaml's deployments",
}
NOT_CONFIG = {
    "profile",
    "set_",
    *generate.SECRET_FLAGS,
    *review.SECRET_FLAGS,
    *score.DISPLAY_FLAGS,
}


def commands(group=None, prefix=""):
    group = group or typer.main.get_command(app)
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from commands(command, f"{prefix}{name} ")
        else:
            yield f"{prefix}{name}", command


def field_exists(path: str) -> bool:
    model: typing.Any = PipelineConfig
    for part in path.split("."):
        fields = getattr(model, "model_fields", None)
        if fields is None or part not in fields:
            return False
        annotation = fields[part].annotation
        candidates = [a for a in (typing.get_args(annotation) or (annotation,)) if isinstance(a, type)]
        model = next((a for a in candidates if issubclass(a, BaseModel)), None)
    return True


def targets(flag) -> list[str]:
    if isinstance(flag, str):
        return [flag]
    if len(flag) == 2 and callable(flag[1]):
        return [flag[0]]
    return list(flag)


def test_every_command_is_accounted_for():
    names = {name for name, _ in commands()}
    assert names == set(TABLES) | set(NOT_PROFILE_COMMANDS)


@pytest.mark.parametrize("name", sorted(TABLES))
def test_every_flag_of_a_command_sets_a_field_of_the_profile(name):
    command = dict(commands())[name]
    params = {p.name for p in command.params} - NOT_CONFIG
    table = TABLES[name]
    assert params <= set(table), f"flags of `mcc {name}` with no profile field: {sorted(params - set(table))}"
    for param in params:
        for path in targets(table[param]):
            assert field_exists(path), f"`mcc {name} --{param}` maps to {path}, which PipelineConfig lacks"


def test_the_field_walk_refuses_paths_that_do_not_exist():
    assert field_exists("scrape.download.per_host_rate") and field_exists("quality.min_area_fraction")
    assert not field_exists("scrape.download.no_such") and not field_exists("generate.steps.deeper")


def test_cli_config_applies_profile_then_flags_then_sets(tmp_path):
    profile = tmp_path / "p.yaml"
    profile.write_text("workdir: w\ngenerate:\n  steps: 7\n  guidance: 2.0\nquality:\n  preset: permissive\n")
    config = cli_config(
        str(profile),
        {"generate.steps": 9, "generate.model": None},
        ["generate.guidance=5.5", "quality.min_area_fraction=0.01", "scrape.allowed_licences=[cc0]"],
    )
    assert config.generate.steps == 9  # the flag given beats the profile
    assert config.generate.model == "black-forest-labs/FLUX.1-dev"  # a flag not given leaves the default
    assert config.generate.guidance == 5.5  # --set beats the profile
    assert (
        config.quality.min_area_fraction == 0.01 and config.quality.min_sam_score is None
    )  # preset, then set
    assert config.scrape.allowed_licences == frozenset({"cc0"})
    with pytest.raises(ValueError, match=r"generate\.stepz: Extra inputs"):
        cli_config(None, {}, ["generate.stepz=1"])
    with pytest.raises(ValueError, match="section.field=value"):
        cli_config(None, {}, ["generate.steps"])


def test_mcc_plan_honours_profile_flag_and_set(tmp_path):
    profile = tmp_path / "p.yaml"
    profile.write_text("plan:\n  max_groups: 2\n  per_group: 2\n")
    runner = CliRunner()

    def planned(workdir, *extra):
        result = runner.invoke(app, ["plan", "--workdir", str(workdir), "--profile", str(profile), *extra])
        assert result.exit_code == 0, result.output
        return ManifestStore(workdir).counts().total

    assert planned(tmp_path / "a") == 4
    assert planned(tmp_path / "b", "--per-group", "3") == 6
    assert planned(tmp_path / "c", "--per-group", "3", "--set", "plan.max_groups=1") == 3


def test_flag_converters_land_in_the_profile_types():
    table = generate.SCRAPE_FLAGS
    values = {name: None for name in table} | {
        "max_mb": 1.5,
        "licence": ["CC-BY"],
        "urls": types.SimpleNamespace(),
    }
    from flows.commands.common import flag_values

    out = flag_values(table, {**values, "urls": "list.csv"})
    assert out["scrape.download.max_bytes"] == int(1.5 * 2**20) and out["scrape.allowed_licences"] == [
        "cc-by"
    ]
    assert out["scrape.urls"] == "list.csv"
