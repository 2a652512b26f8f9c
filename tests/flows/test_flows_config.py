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


def test_the_rebuild_flow_selects_records_by_the_profiles_groups_and_limits(tmp_path):
    """``generate.groups`` and the smaller of ``generate.limit`` / ``localize.limit`` apply to the flow's shards."""
    from flows.pipeline import pending_shards
    from manifests import ManifestStore, add_planned, load_groups, plan_scenes

    groups = load_groups()[:2]
    store = ManifestStore(tmp_path / "work")
    add_planned(store, plan_scenes(groups, per_group=3, seed=0))
    config = load_profile("smoke", workdir=str(tmp_path / "work"), shard_size=2)
    assert sum(map(len, pending_shards(config))) == 6
    only = config.model_copy(
        update={"generate": config.generate.model_copy(update={"groups": [groups[1].id]})}
    )
    picked = [store.get(i) for shard in pending_shards(only) for i in shard]
    assert len(picked) == 3 and {r.group for r in picked} == {groups[1].id}
    capped = load_profile(
        "smoke", workdir=str(tmp_path / "work"), shard_size=2, generate={"limit": 5}, localize={"limit": 3}
    )
    assert [len(shard) for shard in pending_shards(capped)] == [2, 1]


def test_the_fan_out_parent_waits_with_a_deadline_and_names_what_did_not_finish():
    """A child stuck in Running (its worker died) fails the parent after fan_out_timeout, naming it;
    a crashed child fails it at once; all completed returns the runs."""
    from types import SimpleNamespace

    from flows.pipeline import wait_for_children

    def run(name, state_name, final, completed):
        state = SimpleNamespace(name=state_name, is_final=lambda: final, is_completed=lambda: completed)
        return SimpleNamespace(name=name, state=state)

    done, stuck = run("p-shards-0", "Completed", True, True), run("p-shards-1", "Running", False, False)
    seen = []
    with pytest.raises(
        RuntimeError, match=r"not finished after 0 s: p-shards-1 \(Running\).*prefect flow-run cancel"
    ):
        wait_for_children(lambda: [done, stuck], timeout=0.05, on_progress=seen.append, poll=0.01)
    assert seen and seen[-1] == 0.5
    crashed = run("p-shards-2", "Crashed", True, False)
    with pytest.raises(RuntimeError, match=r"did not complete: p-shards-2 \(Crashed\)"):
        wait_for_children(lambda: [done, crashed], timeout=60)
    assert wait_for_children(lambda: [done], timeout=60) == [done]
    assert PipelineConfig().fan_out_timeout == 6 * 3600.0


def test_a_runs_fields_merge_over_its_deployments_config():
    """What a run set (and only that) replaces the deployment's values, section by section."""
    from flows.config import merge_run_config

    deployment = {
        "profile": "full",
        "workdir": "/data/mcc",
        "score": {"preset": "sd35", "model": "stabilityai/stable-diffusion-3.5-large", "out": "/data/mcc/r"},
    }
    run = PipelineConfig.model_validate({"workdir": "/data/other", "score": {"limit": 3}})
    given = run.model_dump(mode="json", exclude_unset=True)
    assert given == {"workdir": "/data/other", "score": {"limit": 3}}
    merged = PipelineConfig.model_validate(merge_run_config(deployment, given))
    assert (merged.profile, merged.workdir) == ("full", "/data/other")
    assert (merged.score.preset, merged.score.model, merged.score.limit) == (
        "sd35",
        deployment["score"]["model"],
        3,
    )
    assert merged.generate.model == "black-forest-labs/FLUX.1-dev"  # the deployment's profile, filled in
    assert merge_run_config(None, given) == given


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"workdir": "/data/mcc"}, "config has no profile"),
        (
            {"profile": "smoke", "workdir": "demo-workdir"},
            "config.workdir is 'demo-workdir', a relative path",
        ),
        ({"profile": "smoke", "workdir": "/w", "score": {"out": "reports"}}, "config.score.out is 'reports'"),
        ({"profile": "smoke", "workdir": "/w", "publish": {"out": "ds"}}, "config.publish.out is 'ds'"),
        ({"profile": "full", "workdir": "{{ $MCC_WORKDIR }}"}, "mcc deploy --workdir DIR"),
    ],
)
def test_a_flow_run_refuses_no_profile_and_relative_folders(values, message):
    from flows.config import check_deployable

    with pytest.raises(ValueError, match=message.replace("$", r"\$").replace("{", r"\{")):
        check_deployable(PipelineConfig.model_validate(values))


@pytest.mark.parametrize("workdir", ["/data/mcc", "s3://bucket/mcc", "memory://mcc"])
def test_absolute_and_url_work_dirs_are_accepted(workdir):
    from flows.config import check_deployable

    config = PipelineConfig.model_validate({"profile": "smoke", "workdir": workdir})
    assert check_deployable(config) is config


def test_a_model_task_waiting_for_a_gpu_slot_says_so_and_its_own_errors_pass_through(monkeypatch):
    import contextlib

    import flows.pipeline as pipeline

    calls, logged = [], []

    @contextlib.contextmanager
    def busy_twice(names, occupy, timeout_seconds, lease_duration):
        calls.append((names, occupy, timeout_seconds, lease_duration))
        if len(calls) <= 2:
            raise TimeoutError("every slot is held")
        yield

    class Logger:
        def info(self, message, *args):
            logged.append(message % args)

    monkeypatch.setattr(pipeline, "concurrency", busy_twice)
    monkeypatch.setattr(pipeline, "get_run_logger", Logger)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    ran = []
    with pipeline.gpu_slot("cpu", "cuda:1"):
        ran.append(True)
    assert ran == [True] and len(calls) == 3
    assert calls[0] == (["gpu-1"], 1, pipeline.GPU_WAIT_LOG_SECONDS, pipeline.GPU_LEASE_SECONDS)
    assert len(logged) == 2 and "waiting for the slot of gpu-1" in logged[0]
    assert f"returns within {pipeline.GPU_LEASE_SECONDS} s" in logged[0]
    calls.clear()
    calls.extend([None, None])  # the next acquisition succeeds at once
    with pytest.raises(TimeoutError, match="the task's own"), pipeline.gpu_slot("cuda"):
        raise TimeoutError("the task's own timeout")
    assert len(calls) == 3  # not retried


def test_a_model_task_on_the_cpu_takes_no_gpu_slot(monkeypatch):
    """A smoke run (every model on the CPU, or no CUDA for the automatic device) never waits for
    or holds a slot of the gpu limit."""
    import flows.pipeline as pipeline

    def no_slot(*args, **kwargs):
        raise AssertionError("a CPU task asked for a gpu slot")

    monkeypatch.setattr(pipeline, "concurrency", no_slot)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pipeline.gpu_slot("cpu", None, "cpu"):
        pass
    assert pipeline.uses_gpu("cpu", "cuda") and not pipeline.uses_gpu("cpu", None)
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    assert pipeline.uses_gpu("cpu", None)  # the automatic device picks the GPU there


def test_a_model_task_takes_the_slot_of_each_physical_gpu_it_uses(monkeypatch):
    """``cuda:N`` is the N-th GPU of the worker's CUDA_VISIBLE_DEVICES: a worker pinned to GPU 3
    takes gpu-3's slot, whatever the devices are called inside it."""
    from flows.pipeline import gpu_limits

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert gpu_limits(("cuda", "cuda:0", "cpu"), "auto") == ["gpu-3"]
    assert gpu_limits(("cuda", "cuda:1"), "auto") == ["gpu-3", "gpu-5"]
    assert gpu_limits(("cpu", "cpu"), "auto") == []
    assert gpu_limits(("cpu", "cpu"), "gpu") == ["gpu-3"]  # as if on the worker's GPU
    assert gpu_limits(("cuda:1",), "none") == []
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert gpu_limits(("cuda", "cuda:2"), "auto") == ["gpu-0", "gpu-2"]
