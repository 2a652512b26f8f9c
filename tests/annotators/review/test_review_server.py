"""The server's start/stop/status logic with a stand-in `label-studio` program (fast, no real server)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

from annotators import labelstudio_server as server


@pytest.fixture
def fake_venv(tmp_path, monkeypatch):
    """A venv whose `label-studio` is a script we control; marked installed by the stamp."""
    venv = tmp_path / "fake-venv"
    (venv / "bin").mkdir(parents=True)
    program = venv / "bin" / "label-studio"
    (venv / ".mcc-installed").write_text(server.LABEL_STUDIO_VERSION + "\n")
    monkeypatch.setenv(server.VENV_ENV, str(venv))

    def write(body: str) -> None:
        program.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
        program.chmod(0o755)

    return write


def test_ensure_venv_is_a_no_op_when_the_stamp_matches(fake_venv):
    fake_venv("print('hi')\n")
    assert server.ensure_venv() == server.default_venv() / "bin" / "label-studio"


def test_start_fails_with_the_log_tail_when_the_program_exits(workdir, fake_venv):
    fake_venv("""
        import sys
        print("boom: something is wrong", flush=True)
        sys.exit(3)
    """)
    with pytest.raises(server.LabelStudioServerError, match="exited with code 3") as error:
        server.start(workdir, port=server.free_port(), log=lambda m: None, timeout=30)
    assert "boom: something is wrong" in str(error.value)
    assert not (workdir / "labelstudio" / "server.json").exists()


def test_start_passes_the_settings_and_times_out_with_the_log_tail(workdir, fake_venv):
    fake_venv("""
        import json, os, sys, time
        keys = ["LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED", "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT",
                "LABEL_STUDIO_LATEST_VERSION_CHECK", "LABEL_STUDIO_SENTRY_DSN", "LABEL_STUDIO_COLLECT_ANALYTICS",
                "LABEL_STUDIO_USERNAME", "LABEL_STUDIO_USER_TOKEN", "HOST"]
        print(json.dumps({"argv": sys.argv[1:], "env": {k: os.environ.get(k) for k in keys}}), flush=True)
        time.sleep(60)
    """)
    os.environ["HOST"] = "somewhere.else"  # a shell's HOST must not reach Label Studio
    try:
        with pytest.raises(server.LabelStudioServerError, match="did not answer") as error:
            server.start(workdir, port=server.free_port(), log=lambda m: None, timeout=3)
    finally:
        del os.environ["HOST"]
    seen = json.loads(next(line for line in str(error.value).splitlines() if line.startswith("{")))
    argv = seen["argv"]
    assert argv[0] == "start" and "--enable-legacy-api-token" in argv
    assert argv[argv.index("--internal-host") + 1] == "127.0.0.1"
    assert argv[argv.index("--data-dir") + 1] == str(workdir.resolve() / "labelstudio")
    env = seen["env"]
    assert env["LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED"] == "true"
    assert env["LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"] == str(workdir.resolve())
    assert env["LABEL_STUDIO_LATEST_VERSION_CHECK"] == "false" and env["LABEL_STUDIO_SENTRY_DSN"] == ""
    assert env["LABEL_STUDIO_COLLECT_ANALYTICS"] == "false" and env["HOST"] is None
    credentials = json.loads((workdir / "labelstudio" / "credentials.json").read_text())
    assert env["LABEL_STUDIO_USER_TOKEN"] == credentials["token"] and len(credentials["token"]) == 40
    assert (workdir / "labelstudio" / "credentials.json").stat().st_mode & 0o077 == 0
    assert server.status(workdir)["running"] is False  # the stand-in was ended


def test_start_refuses_a_busy_port(workdir, fake_venv):
    fake_venv("raise SystemExit('must not run')\n")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(server.LabelStudioServerError, match=f"port {port} .* in use"):
            server.start(workdir, port=port, log=lambda m: None)


def test_stop_never_signals_a_process_it_did_not_start(workdir):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        state_dir = workdir / "labelstudio"
        state_dir.mkdir()
        # a pid file whose pid now belongs to another program (pid reuse)
        (state_dir / "server.json").write_text(
            json.dumps(
                {
                    "pid": other.pid,
                    "port": 1,
                    "url": "http://127.0.0.1:1",
                    "data_dir": str(state_dir),
                }
            )
        )
        assert server.status(workdir)["running"] is False
        assert server.stop(workdir) is None
        assert other.poll() is None  # still running
        assert not (state_dir / "server.json").exists()  # the stale record is gone
    finally:
        other.kill()
        other.wait()


def test_a_remote_work_dir_is_refused():
    with pytest.raises(server.LabelStudioServerError, match="not a local folder"):
        server.server_dir("s3://bucket/mcc")


def test_the_first_boot_hint_is_given_only_before_the_database_exists(workdir, fake_venv):
    fake_venv("import time; time.sleep(60)\n")
    for database_exists in (False, True):
        if database_exists:
            (workdir / "labelstudio" / "label_studio.sqlite3").write_bytes(b"")
        lines: list[str] = []
        with pytest.raises(server.LabelStudioServerError, match="did not answer"):
            server.start(workdir, port=server.free_port(), log=lines.append, timeout=1)
        (starting,) = [line for line in lines if line.startswith("starting Label Studio")]
        assert ("first boot" in starting) is not database_exists


@pytest.mark.timeout(60)
def test_a_server_whose_pid_file_is_gone_is_found_refused_and_stopped(workdir, fake_venv, tmp_path):
    """A stand-in `label-studio start` on this work dir's data dir, with no server.json: status finds
    it, start refuses to boot a second one (naming its pid and URL), stop ends it; a server of
    another work dir is never touched."""
    fake_venv("raise SystemExit('a second server must not start')\n")
    program = tmp_path / "bin" / "label-studio"
    program.parent.mkdir()
    program.write_text(f"#!{sys.executable}\nimport time\ntime.sleep(60)\n")
    program.chmod(0o755)
    data_dir = (workdir / "labelstudio").resolve()
    data_dir.mkdir()
    other_dir = (tmp_path / "other-work" / "labelstudio").resolve()
    other_dir.mkdir(parents=True)
    ours = subprocess.Popen([str(program), "start", "--data-dir", str(data_dir), "--port", "18431"])
    theirs = subprocess.Popen([str(program), "start", "--data-dir", str(other_dir), "--port", "18432"])
    try:
        state = server.status(workdir)
        assert (state["running"], state["pid"], state["url"]) == (True, ours.pid, "http://127.0.0.1:18431")
        assert json.loads((data_dir / "server.json").read_text())["pid"] == ours.pid  # recorded again
        (data_dir / "server.json").unlink()
        with pytest.raises(
            server.LabelStudioServerError,
            match=f"already running \\(pid {ours.pid}, http://127.0.0.1:18431\\)",
        ):
            server.start(workdir, port=server.free_port(), log=lambda m: None)
        (data_dir / "server.json").unlink()
        assert server.stop(workdir) == ours.pid
        assert ours.wait(timeout=10) is not None
        assert theirs.poll() is None  # another work dir's server keeps running
        assert server.status(workdir)["running"] is False and server.stop(workdir) is None
    finally:
        for process in (ours, theirs):
            process.kill()
            process.wait()
