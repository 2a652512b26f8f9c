"""Deployments for real: a Prefect server on loopback, `prefect deploy --all`, process workers.

One server for the module; each test starts and stops its own workers. The smoke profile
runs with ``fan_out=4`` over four one-record shards: four child runs of the deployment.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import psutil
import pytest

from manifests import ManifestStore

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
PREFECT = str(Path(sys.executable).parent / "prefect")
DEPLOYMENTS = {
    "rebuild-dataset/full",
    "rebuild-dataset/smoke",
    "sync-reviews/every-30-min",
    "publish-dataset/hub",
    "score-benchmark/sd3",
    "score-benchmark/sd35",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A Prefect server on a free loopback port, its env, and the pools and deployments."""
    home = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home}/prefect.db",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_CLI_PROMPT": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(home / "results"),
    }
    log = open(home / "server.log", "wb")  # noqa: SIM115 (open for the server's lifetime)
    process = subprocess.Popen(
        [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"prefect server did not start: {(home / 'server.log').read_text()[-2000:]}"
                )
            time.sleep(1)
        first = mcc_deploy(env)
        assert "work pool 'gpu': created" in first
        assert "concurrency limit 'gpu-0': created" in first and "concurrency limit 'gpu-1': created" in first
        assert "deployed 6 deployment(s)" in first and "CUDA_VISIBLE_DEVICES=0" in first
        assert "automation 'mcc: crash flow runs without heartbeats': created" in first
        assert "PREFECT_FLOWS_HEARTBEAT_FREQUENCY=30" in first
        yield env
    finally:
        kill_tree(process.pid)
        log.close()


def mcc_deploy(env) -> str:
    """`mcc deploy --gpus 2` against the test server; its output."""
    mcc = str(Path(sys.executable).parent / "mcc")
    result = subprocess.run(
        [mcc, "deploy", "--gpus", "2"], env={**env, "COLUMNS": "200"}, cwd=REPO, capture_output=True,
        text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, f"mcc deploy failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def api_filter(env, path: str) -> list[dict]:
    response = httpx.post(f"{env['PREFECT_API_URL']}/{path}/filter", json={}, timeout=10)
    response.raise_for_status()
    return response.json()


def run_cli(env, *args) -> str:
    result = subprocess.run([PREFECT, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"prefect {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def kill_tree(pid: int) -> None:
    """SIGKILL a process and everything it started (a worker and its flow-run processes)."""
    try:
        parent = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    for process in [*parent.children(recursive=True), parent]:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(signal.SIGKILL)
    psutil.wait_procs([parent], timeout=10)


class Workers:
    """Process workers on the `cpu` pool, stopped (with their flow runs) on exit."""

    def __init__(self, env, tmp_path, count: int, *, limit: int | None = None, gpus: list[str] | None = None):
        """``limit``: flow runs per worker at once; ``gpus``: each worker's CUDA_VISIBLE_DEVICES."""
        self.env, self.tmp_path, self.count, self.limit, self.gpus = env, tmp_path, count, limit, gpus
        self.processes: list[subprocess.Popen] = []

    def __enter__(self):
        for index in range(self.count):
            log = open(self.tmp_path / f"worker-{index}-{time.monotonic_ns()}.log", "wb")
            env = self.env if self.gpus is None else {**self.env, "CUDA_VISIBLE_DEVICES": self.gpus[index]}
            limit = ["--limit", str(self.limit)] if self.limit else []
            self.processes.append(
                subprocess.Popen(
                    [
                        PREFECT,
                        "worker",
                        "start",
                        "--pool",
                        "cpu",
                        "--type",
                        "process",
                        *limit,
                        "--name",
                        f"w{index}-{time.monotonic_ns()}",
                    ],
                    env=env,
                    cwd=REPO,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        return self

    def kill(self):
        for process in self.processes:
            kill_tree(process.pid)

    def __exit__(self, *exc):
        self.kill()


def start_run(env, config: dict) -> str:
    """Create a run of rebuild-dataset/smoke; returns its id."""
    out = run_cli(
        env, "deployment", "run", "rebuild-dataset/smoke", "--params", json.dumps({"config": config})
    )
    for line in out.splitlines():
        if "UUID:" in line:
            return line.split("UUID:")[1].strip()
    raise AssertionError(f"no flow run id in: {out}")


def read_run(env, run_id: str) -> dict:
    response = httpx.get(f"{env['PREFECT_API_URL']}/flow_runs/{run_id}", timeout=10)
    response.raise_for_status()
    return response.json()


def child_runs(env, parent_name: str) -> list[dict]:
    body = {"flow_runs": {"name": {"like_": f"{parent_name}-shards-"}}}
    response = httpx.post(f"{env['PREFECT_API_URL']}/flow_runs/filter", json=body, timeout=10)
    response.raise_for_status()
    return response.json()


def wait_final(env, run_id: str, timeout: float = 900) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = read_run(env, run_id)
        if run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return run
        time.sleep(2)
    raise AssertionError(f"flow run {run_id} not finished after {timeout} s: {run['state']}")


def smoke_params(workdir: Path) -> dict:
    return {
        "profile": "smoke",
        "workdir": str(workdir),
        "fan_out": 4,
        "shard_size": 1,
        "plan": {"max_groups": 2, "per_group": 2},
        "generate": {"batch_size": 1},
        "localize": {"batch_size": 1},
    }


def manifest_outcome(workdir: Path) -> dict:
    """What a run decided per record (no timestamps): state, reason, boxes, masks."""
    return {
        r.id: (
            r.state.value,
            r.rejection.reason if r.rejection else None,
            [(c.boxes, c.mask.counts if c.mask else None) for c in r.concepts],
        )
        for r in ManifestStore(workdir).iter()
    }


def test_mcc_deploy_twice_changes_nothing(server):
    """The second `mcc deploy` finds everything in place: still 6 deployments, 2 pools, 1 limit of 2
    slots, the review sync's schedule paused."""
    before = {d["name"]: d["id"] for d in api_filter(server, "deployments")}
    again = mcc_deploy(server)
    assert "created" not in again and "resized" not in again, again
    assert "work pool 'cpu': exists" in again and "concurrency limit 'gpu-1': exists" in again
    assert "automation 'mcc: crash flow runs without heartbeats': exists" in again
    assert len(api_filter(server, "automations")) == 1
    deployments = api_filter(server, "deployments")
    assert {d["name"]: d["id"] for d in deployments} == before and len(deployments) == 6
    assert sorted(p["name"] for p in api_filter(server, "work_pools")) == ["cpu", "gpu"]
    limits = api_filter(server, "v2/concurrency_limits")
    assert sorted((limit["name"], limit["limit"]) for limit in limits) == [("gpu-0", 1), ("gpu-1", 1)]
    (sync,) = [d for d in deployments if d["name"] == "every-30-min"]
    assert [s["active"] for s in sync["schedules"]] == [False]


def test_all_deployments_exist(server):
    listed = run_cli(server, "deployment", "ls")
    for name in DEPLOYMENTS:
        flow_name, deployment = name.split("/")
        assert flow_name in listed and deployment in listed, name
    # the run form of each rebuild deployment offers `config` only: the fan-out's `shard_ids` is internal
    rebuilds = [
        d for d in api_filter(server, "deployments") if "shard_ids" in str(d["parameter_openapi_schema"])
    ]
    assert rebuilds == []
    schemas = [d["parameter_openapi_schema"] for d in api_filter(server, "deployments")]
    assert all(list(schema["properties"]) == ["config"] for schema in schemas), schemas


def test_fan_out_processes_every_shard_once_then_survives_a_killed_worker(server, tmp_path):
    # 1. the uninterrupted run: 4 shards over 4 child runs on two workers
    reference = tmp_path / "reference"
    with Workers(server, tmp_path, count=2):
        parent = wait_final(server, start_run(server, smoke_params(reference)))
        assert parent["state"]["type"] == "COMPLETED", parent["state"]
        children = child_runs(server, parent["name"])
    assert len(children) == 4
    assert all(child["state"]["type"] == "COMPLETED" for child in children)
    assert len({child["parameters"]["shard_ids"][0][0] for child in children}) == 4  # each its own shard
    store = ManifestStore(reference)
    records = list(store.iter())
    assert len(records) == 4  # the plan: 2 groups x 2 scenes
    assert all(Counter(e.stage for e in r.history)["generate"] == 1 for r in records)  # processed once
    assert all(r.state.value in ("segmented", "rejected") for r in records)

    # 2. kill the workers mid-run, start new ones, run again: same manifest as uninterrupted
    interrupted = tmp_path / "interrupted"
    with Workers(server, tmp_path, count=2) as workers:
        start_run(server, smoke_params(interrupted))
        deadline = time.monotonic() + 600
        while not any(r.image for r in ManifestStore(interrupted).iter()):
            assert time.monotonic() < deadline, "no record was generated in time"
            time.sleep(0.5)
        workers.kill()
    assert manifest_outcome(interrupted) != manifest_outcome(reference)  # it really was cut short
    with Workers(server, tmp_path, count=2):
        rerun = wait_final(server, start_run(server, smoke_params(interrupted)))
        assert rerun["state"]["type"] == "COMPLETED", rerun["state"]
    assert manifest_outcome(interrupted) == manifest_outcome(reference)


def test_deployments_have_absolute_work_dirs_and_a_run_keeps_the_fields_it_does_not_set(server, tmp_path):
    """Prefect replaces a deployment's `config` parameter as a whole when a run passes one;
    `run_config` merges the run's fields over it instead. A run of the smoke deployment that
    sets only its work dir and a small plan (no profile) runs on the deployment's smoke
    profile, with the tiny models; nothing resolves into the repository."""
    deployments = {d["name"]: d for d in api_filter(server, "deployments")}
    sd35 = deployments["sd35"]["parameters"]["config"]
    assert (sd35["profile"], sd35["score"]["preset"]) == ("full", "sd35")
    assert (
        sd35["workdir"] == str(REPO / "mcc-workdir")
        and sd35["score"]["out"] == f"{REPO}/mcc-workdir/reports/sd35"
    )
    assert deployments["smoke"]["parameters"]["config"]["workdir"] == str(REPO / "demo-workdir")
    assert all(Path(d["parameters"]["config"]["workdir"]).is_absolute() for d in deployments.values())

    workdir = tmp_path / "set-fields-only"
    fields = {key: value for key, value in smoke_params(workdir).items() if key != "profile"}
    fields.update(fan_out=1, plan={"max_groups": 1, "per_group": 1})
    with Workers(server, tmp_path, count=1):
        run = wait_final(server, start_run(server, fields))
    assert run["state"]["type"] == "COMPLETED", run["state"]
    (record,) = ManifestStore(workdir).iter()
    assert record.source.model == "tiny"  # the deployment's smoke profile, not the full-size defaults
    assert not (REPO / "demo-workdir" / "records" / f"{record.id}.json").exists()


def test_a_run_killed_with_its_worker_is_marked_crashed_and_a_rerun_redoes_its_work(server, tmp_path):
    """`mcc deploy`'s zombie automation: a run whose worker was killed stops sending heartbeats
    and is set Crashed (instead of Running for good); a new run finishes what it left, each record
    generated once."""
    (automation,) = api_filter(server, "automations")
    assert automation["name"] == "mcc: crash flow runs without heartbeats" and automation["enabled"]
    beating = {**server, "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30"}  # as `mcc deploy` prints the workers
    workdir = tmp_path / "killed"
    params = {**smoke_params(workdir), "fan_out": 1, "plan": {"max_groups": 3, "per_group": 2}}
    with Workers(beating, tmp_path, count=1) as workers:
        run_id = start_run(server, params)
        deadline = time.monotonic() + 600
        while not any(r.image for r in ManifestStore(workdir).iter()):
            assert time.monotonic() < deadline, "no record was generated in time"
            time.sleep(0.5)
        workers.kill()
    assert read_run(server, run_id)["state"]["type"] == "RUNNING"  # what Prefect alone would leave
    crashed = wait_final(server, run_id, timeout=300)
    assert crashed["state"]["type"] == "CRASHED", crashed["state"]
    assert "no heartbeat for 90 s" in crashed["state"]["message"]
    left = [
        r for r in ManifestStore(workdir).iter() if r.state.value in ("planned", "generated", "localized")
    ]
    assert left, "the run was not cut short"
    with Workers(beating, tmp_path, count=1):
        rerun = wait_final(server, start_run(server, params))
    assert rerun["state"]["type"] == "COMPLETED", rerun["state"]
    records = list(ManifestStore(workdir).iter())
    assert len(records) == 6 and all(r.state.value in ("segmented", "rejected") for r in records)
    assert all(Counter(e.stage for e in r.history)["generate"] == 1 for r in records)


def _model_work(workdir: Path, records) -> tuple:
    """(first, last) time of a child run's generate / localize / segment events: inside its gpu slot."""
    times = [
        e.time
        for r in records
        for e in r.history
        if e.stage in ("generate", "localize", "segment", "quality")
    ]
    return min(times), max(times)


def _fan_out_on_gpus(server, tmp_path, gpus: list[str]) -> list[tuple]:
    """A fan-out of 2 children, each on a worker pinned to ``gpus[i]``, with ``model_slots: gpu``
    (CPU models that take GPU slots: simulated GPUs); each child's model work span."""
    workdir = tmp_path / f"gpus-{'-'.join(gpus)}"
    params = {
        **smoke_params(workdir),
        "fan_out": 2,
        "shard_size": 3,
        "model_slots": "gpu",
        "plan": {"max_groups": 1, "per_group": 6},
    }
    with Workers(server, tmp_path, count=1, limit=1):  # the parent's worker: it waits there for its children
        run_id = start_run(server, params)
        deadline = time.monotonic() + 300
        while read_run(server, run_id)["state"]["type"] != "RUNNING":
            assert time.monotonic() < deadline, "the parent run did not start"
            time.sleep(0.5)
        with Workers(server, tmp_path, count=2, limit=1, gpus=gpus):
            parent = wait_final(server, run_id)
    assert parent["state"]["type"] == "COMPLETED", parent["state"]
    children = child_runs(server, parent["name"])
    assert len(children) == 2 and all(c["state"]["type"] == "COMPLETED" for c in children)
    store = ManifestStore(workdir)
    return [
        _model_work(workdir, [store.get(i) for shard in c["parameters"]["shard_ids"] for i in shard])
        for c in children
    ]


def test_model_tasks_run_at_once_on_two_gpus_and_one_at_a_time_on_one(server, tmp_path):
    """One `gpu-<i>` slot per GPU: two children on workers pinned to GPUs 0 and 1 do their model
    work at the same time; pinned both to GPU 0, one after the other."""
    (a, b) = _fan_out_on_gpus(server, tmp_path, ["0", "1"])
    assert a[0] < b[1] and b[0] < a[1], f"no overlap on two GPUs: {a}, {b}"
    (a, b) = _fan_out_on_gpus(server, tmp_path, ["0", "0"])
    assert a[1] < b[0] or b[1] < a[0], f"overlap on one GPU: {a}, {b}"


def test_mcc_deploy_without_a_server_names_the_fix_and_can_start_one(tmp_path):
    from flows.commands.deploy import start_local_server

    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update({"PREFECT_HOME": str(tmp_path / "home"), "COLUMNS": "200"})
    mcc = str(Path(sys.executable).parent / "mcc")
    result = subprocess.run([mcc, "deploy"], env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    message = " ".join((result.stdout + result.stderr).split())
    assert result.returncode == 2 and "set PREFECT_API_URL" in message and "--start-server" in message
    api_url, process, log = start_local_server(tmp_path / "local")
    pid = process.pid
    try:
        assert httpx.get(f"{api_url}/health", timeout=5).status_code == 200
        assert log.is_file() and psutil.pid_exists(pid)
    finally:
        kill_tree(pid)
