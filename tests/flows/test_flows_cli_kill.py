"""`mcc rebuild` killed (SIGKILL or SIGTERM) leaves no process behind, and a re-run loses and
duplicates nothing (issue: worker processes of every command exit with their parent).

Without PREFECT_API_URL the command starts a Prefect server of its own; Prefect's temporary
server would have outlived a `kill -9` of the command.
"""

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest

from manifests import ManifestStore

MCC = str(Path(sys.executable).parent / "mcc")


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.slow
@pytest.mark.parametrize("kill_signal", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_a_killed_rebuild_leaves_no_process_and_a_rerun_loses_nothing(tmp_path, kill_signal):
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    workdir = tmp_path / "work"
    command = [MCC, "rebuild", "--profile", "smoke", "--workdir", str(workdir)]
    with open(tmp_path / "killed.log", "wb") as log:
        parent = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while not any(r.image for r in ManifestStore(workdir).iter()):
        assert parent.poll() is None, (tmp_path / "killed.log").read_text()[-2000:]
        assert time.monotonic() < deadline, "no record was generated in time"
        time.sleep(0.2)
    started = psutil.Process(parent.pid).children(recursive=True)
    assert any("server" in " ".join(p.cmdline()) for p in started), "no local Prefect server was running"
    parent.send_signal(kill_signal)
    parent.wait(timeout=30)
    killed_at = time.monotonic()
    while any(_alive(p) for p in started) and time.monotonic() - killed_at < 10:
        time.sleep(0.2)
    survivors = [p.pid for p in started if _alive(p)]
    for pid in survivors:  # do not leak them into the rest of the run
        os.kill(pid, signal.SIGKILL)
    assert survivors == [], f"processes {survivors} outlived `mcc rebuild` by 10 s"

    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    records = list(ManifestStore(workdir).iter())
    assert len(records) == 6 and all(r.state.value in ("segmented", "rejected") for r in records)
    assert all(Counter(e.stage for e in r.history)["generate"] == 1 for r in records)
