import pytest
from pydantic import ValidationError

from flows.config import PipelineConfig, load_profile


def test_packaged_profiles_load_and_differ():
    smoke, full = load_profile("smoke"), load_profile("full")
    assert smoke.generate.model == "tiny" and smoke.localize.model == "tiny" and smoke.segment.model == "tiny"
    assert full.generate.model == "black-forest-labs/FLUX.1-dev"
    assert full.localize.model == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert full.review.mode == "labelstudio" and not full.publish.include_unreviewed
    assert smoke.review.mode == "auto" and smoke.publish.include_unreviewed


def test_fields_override_the_profile_section_by_section():
    config = PipelineConfig.model_validate(
        {"profile": "smoke", "workdir": "/tmp/x", "generate": {"steps": 5}, "fan_out": 3}
    )
    assert config.workdir == "/tmp/x" and config.fan_out == 3
    assert config.generate.steps == 5 and config.generate.model == "tiny"  # the rest of the section stays
    # a dumped config validates to itself (child runs of a fan-out receive it this way)
    assert PipelineConfig.model_validate(config.model_dump(mode="json")) == config


def test_profile_file_and_bad_input(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("workdir: somewhere\nshard_size: 7\n")
    assert load_profile(str(path)).shard_size == 7
    with pytest.raises(ValidationError, match="unknown profile 'nope'"):
        load_profile("nope")
    with pytest.raises(ValidationError, match="extra"):
        PipelineConfig.model_validate({"profile": "smoke", "generate": {"stepz": 3}})
