"""`mcc deploy`: set up Prefect for the MCC flows in one idempotent command.

Against ``PREFECT_API_URL`` (or a local server it starts with ``--start-server``), it creates
what ``prefect.yaml`` needs and then deploys it:

1. the ``gpu`` and ``cpu`` process work pools, when missing;
2. one global concurrency limit ``gpu-<i>`` of 1 slot per GPU (``--gpus``, default: the CUDA
   devices of this machine, at least 1): a model task holds the slot of each GPU its models run
   on (``flows.pipeline.gpu_slot``), so one model task at a time per GPU;
3. ``prefect --no-prompt deploy --all`` from the repository root (the 6 deployments of
   ``prefect.yaml``; the review-sync schedule is created paused), their work dirs made
   absolute from ``--workdir`` / ``--smoke-workdir``;
4. the automation that marks flow runs whose heartbeats stopped (a killed worker) Crashed.

Then it prints the worker commands to start, one ``gpu`` worker per GPU. Running it again
changes nothing (and says so).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from flows.commands.common import console, fail

REPOSITORY = Path(__file__).resolve().parents[2]
POOLS = ("gpu", "cpu")
GPU_LIMIT = "gpu"
PREFECT = str(Path(sys.executable).parent / "prefect")


def _gpu_count() -> int:
    try:
        import torch

        return int(torch.cuda.device_count())
    except Exception:  # no torch build with CUDA: no GPU to count
        return 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(api_url: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{api_url.rstrip('/')}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _die_with_parent() -> None:
    """In a child before exec (Linux): the kernel sends it SIGTERM when this process dies, even by
    SIGKILL (``prctl(PR_SET_PDEATHSIG)``); elsewhere nothing."""
    import contextlib
    import ctypes
    import signal

    with contextlib.suppress(AttributeError, OSError):  # no prctl: not Linux
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1


def start_local_server(
    home: Path, port: int | None = None, timeout: float = 180.0, *, outlive: bool = True
) -> tuple[str, subprocess.Popen, Path]:
    """Start ``prefect server start`` on 127.0.0.1; returns (API URL, process, log path).

    ``outlive=True``: in its own session, it outlives this command (``mcc deploy --start-server``).
    ``outlive=False``: it ends with this process however it ends (``_die_with_parent``), for a
    server that exists only for one command. Raises RuntimeError with the log's end if it does
    not come up."""
    home.mkdir(parents=True, exist_ok=True)
    port = port or _free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    log_path = home / "prefect-server.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=outlive,
            preexec_fn=None if outlive else _die_with_parent,
            env={**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"},
        )
    deadline = time.monotonic() + timeout
    while not _healthy(api_url):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(
                f"the Prefect server did not start; end of {log_path}:\n{log_path.read_text()[-2000:]}"
            )
        time.sleep(1)
    return api_url, process, log_path


@contextlib.contextmanager
def own_prefect_api():
    """``PREFECT_API_URL`` if set; else a local Prefect server for this command only, which ends
    with it however it ends (Prefect's own temporary server would outlive a ``kill -9``)."""
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    if os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value():
        yield
        return
    try:
        api_url, process, _ = start_local_server(Path(PREFECT_HOME.value()), outlive=False)
    except RuntimeError as error:
        raise fail(str(error)) from None
    try:
        with temporary_settings({PREFECT_API_URL: api_url}):
            yield
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def ensure_pools_and_limits(api_url: str, gpus: int) -> list[str]:
    """Create the pools, one ``gpu-<i>`` limit of 1 slot per GPU and the zombie-run automation if
    missing (a limit of another size is set to 1); returns one line per thing, saying what was done
    (``created`` / ``exists`` / ``set``)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import (
        GlobalConcurrencyLimitCreate,
        GlobalConcurrencyLimitUpdate,
        WorkPoolCreate,
    )
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL, temporary_settings

    lines = []
    with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        for pool in POOLS:
            try:
                client.read_work_pool(pool)
                lines.append(f"work pool {pool!r}: exists")
            except ObjectNotFound:
                client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
                lines.append(f"work pool {pool!r}: created (type process)")
        for index in range(gpus):
            name = f"{GPU_LIMIT}-{index}"
            try:
                limit = client.read_global_concurrency_limit_by_name(name)
            except ObjectNotFound:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
                lines.append(
                    f"concurrency limit {name!r}: created (1 slot: one model task at a time on GPU {index})"
                )
            else:
                if limit.limit == 1:
                    lines.append(f"concurrency limit {name!r}: exists")
                else:
                    client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(limit=1))
                    lines.append(f"concurrency limit {name!r}: set from {limit.limit} to 1 slot")
        if client.read_automations_by_name(ZOMBIE_AUTOMATION):
            lines.append(f"automation {ZOMBIE_AUTOMATION!r}: exists")
        else:
            client.create_automation(zombie_automation())
            lines.append(
                f"automation {ZOMBIE_AUTOMATION!r}: created (a run without a heartbeat for "
                f"{ZOMBIE_AFTER_SECONDS} s is marked Crashed)"
            )
    return lines


HEARTBEAT_SECONDS = 30
"""``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` of the printed worker commands (Prefect's minimum)."""
ZOMBIE_AFTER_SECONDS = 3 * HEARTBEAT_SECONDS
ZOMBIE_AUTOMATION = "mcc: crash flow runs without heartbeats"


def zombie_automation():
    """Prefect's zombie-run detection (docs.prefect.io/v3/advanced/detect-zombie-flows): a flow run
    whose heartbeat is not followed within ``ZOMBIE_AFTER_SECONDS`` by another heartbeat or a final
    state (its worker or machine died) is set Crashed, so it holds nothing and a re-run of the
    deployment redoes its records."""
    from datetime import timedelta

    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    return AutomationCore(
        name=ZOMBIE_AUTOMATION,
        description="Flow runs whose worker died stay Running for good otherwise; created by `mcc deploy`.",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={
                "prefect.flow-run.heartbeat",
                "prefect.flow-run.Completed",
                "prefect.flow-run.Failed",
                "prefect.flow-run.Cancelled",
                "prefect.flow-run.Crashed",
            },
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=ZOMBIE_AFTER_SECONDS),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                message=f"no heartbeat for {ZOMBIE_AFTER_SECONDS} s: its worker or machine died",
            )
        ],
    )


def deploy_all(api_url: str, workdir: str, smoke_workdir: str) -> str:
    """``prefect --no-prompt deploy --all`` from the repository root, with the deployments' work
    dirs (``MCC_WORKDIR``, ``MCC_SMOKE_WORKDIR`` in prefect.yaml); its output. Raises RuntimeError."""
    result = subprocess.run(
        [PREFECT, "--no-prompt", "deploy", "--all"],
        cwd=REPOSITORY,
        env={
            **os.environ,
            "PREFECT_API_URL": api_url,
            "PREFECT_CLI_PROMPT": "false",
            "MCC_WORKDIR": workdir,
            "MCC_SMOKE_WORKDIR": smoke_workdir,
        },
        capture_output=True,
        text=True,
        timeout=600,
    )
    if result.returncode != 0:
        raise RuntimeError(f"prefect deploy --all failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return result.stdout


def worker_commands(gpus: int) -> list[str]:
    """One ``gpu`` worker per GPU (pinned with CUDA_VISIBLE_DEVICES, one flow run at a time, so the
    child runs of a fan-out spread over the GPUs) and one ``cpu`` worker, their flow runs sending
    heartbeats (``zombie_automation``)."""
    host = socket.gethostname().split(".")[0]
    beat = f"PREFECT_FLOWS_HEARTBEAT_FREQUENCY={HEARTBEAT_SECONDS}"
    lines = [
        f"CUDA_VISIBLE_DEVICES={i} {beat} {PREFECT} worker start --pool gpu --type process --limit 1 "
        f"--name {host}-gpu{i}"
        for i in range(max(1, gpus))
    ]
    return [*lines, f"{beat} {PREFECT} worker start --pool cpu --type process --name {host}-cpu"]


def deploy(
    gpus: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="GPUs of the gpu workers: one concurrency limit gpu-<i> of 1 slot each (default: this "
            "machine's GPUs, at least 1).",
        ),
    ] = None,
    start_server: Annotated[
        bool,
        typer.Option(
            "--start-server", help="With no PREFECT_API_URL: start a local Prefect server and use it."
        ),
    ] = False,
    workdir: Annotated[
        str,
        typer.Option(
            help="Work dir of the full-size deployments: an absolute path or URL shared by all workers "
            "(a relative path is made absolute here)."
        ),
    ] = "mcc-workdir",
    smoke_workdir: Annotated[
        str, typer.Option(help="Work dir of the smoke deployment (absolute path or URL).")
    ] = "demo-workdir",
) -> None:
    """Create the work pools, per-GPU limits and zombie-run automation, deploy prefect.yaml, print the worker commands (idempotent)."""
    workdir, smoke_workdir = (w if "://" in w else str(Path(w).resolve()) for w in (workdir, smoke_workdir))
    from prefect.settings import PREFECT_API_URL

    api_url = os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value()
    if not api_url:
        if not start_server:
            raise fail(
                "no Prefect server: set PREFECT_API_URL (e.g. export PREFECT_API_URL=http://127.0.0.1:4200/api "
                "after `prefect server start`), or pass --start-server to start a local one"
            )
        try:
            api_url, process, log = start_local_server(REPOSITORY / ".prefect-server")
            pid = process.pid
        except RuntimeError as error:
            raise fail(str(error)) from None
        console.print(
            f"started a local Prefect server at {api_url} (pid {pid}, log {log}); stop it with `kill {pid}`"
        )
        console.print(f"export PREFECT_API_URL={api_url}", highlight=False, soft_wrap=True)
    elif not _healthy(api_url):
        raise fail(
            f"the Prefect server at {api_url} does not answer /health; start it or fix PREFECT_API_URL"
        )
    found = _gpu_count()
    gpus = gpus or max(1, found)
    try:
        for line in ensure_pools_and_limits(api_url, gpus):
            console.print(line)
        output = deploy_all(api_url, workdir, smoke_workdir)
    except RuntimeError as error:
        raise fail(str(error)) from None
    deployed = sorted({line.split("'")[1] for line in output.splitlines() if "Deployment '" in line})
    console.print(
        f"deployed {len(deployed)} deployment(s) to {api_url}: {', '.join(deployed) or 'see above'}"
    )
    console.print(f"work dirs: {workdir} (full-size deployments), {smoke_workdir} (smoke)", soft_wrap=True)
    console.print(
        "the review sync (sync-reviews/every-30-min) is scheduled but paused: resume it once "
        "LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY are set for the cpu worker "
        "(`prefect deployment schedule ls sync-reviews/every-30-min`, then `... schedule resume`)",
        soft_wrap=True,
    )
    console.print(
        f"start the workers ({f'{found} GPU(s) found' if found else 'no GPU found'}, one gpu worker per GPU):"
    )
    for command in worker_commands(gpus):
        print(command)
