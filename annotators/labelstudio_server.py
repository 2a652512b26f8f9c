"""A local Label Studio server for the review stage, started and stopped by the project.

``label-studio`` pins packages that clash with prefect, so it lives in its own virtual
environment (default ``<repository>/.labelstudio-venv``, or ``$MCC_LABEL_STUDIO_VENV``),
created on first use with ``python -m venv`` + ``pip install label-studio==1.23.2`` and
marked done by a stamp file, so later calls take no time. The pipeline itself only needs
``label-studio-sdk`` (in the project's venv).

The server of a work dir keeps everything under ``<workdir>/labelstudio/``::

    label_studio.sqlite3   its database (projects, tasks, annotations)
    credentials.json       admin e-mail, password and API token (mode 0600)
    server.json            pid, port and URL of the running server (the pid file)
    server.log             its output

It listens on 127.0.0.1 only, serves the work dir's files under
``/data/local-files/?d=<path relative to the work dir>`` (for a project that registers
local storage), has update checks, Sentry and analytics turned off, and accepts the
legacy API token (``Authorization: Token <token>``) that ``label-studio-sdk`` sends.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from manifests.workdir import WorkDir

LABEL_STUDIO_VERSION = "1.23.2"
DEFAULT_PORT = 8080
VENV_ENV = "MCC_LABEL_STUDIO_VENV"
DEFAULT_USERNAME = "admin@mcc.local"
SERVER_DIR = WorkDir.LABELSTUDIO
BOOT_TIMEOUT_S = 300.0
"""First boot (database migrations) takes 30-50 s on two idle cores, minutes on busy ones."""


class LabelStudioServerError(RuntimeError):
    """The server could not be installed, started, stopped or reached; the message says why."""


@dataclass(frozen=True)
class ServerInfo:
    """A running server: where it listens and how to log in."""

    url: str
    port: int
    pid: int
    username: str
    password: str
    token: str
    data_dir: str
    log: str


# -- the virtual environment ----------------------------------------------------------------
def default_venv() -> Path:
    """``$MCC_LABEL_STUDIO_VENV`` or ``.labelstudio-venv`` at the repository root."""
    if os.environ.get(VENV_ENV):
        return Path(os.environ[VENV_ENV]).expanduser().resolve()
    return Path(__file__).resolve().parents[1] / ".labelstudio-venv"


def ensure_venv(venv: str | os.PathLike | None = None, *, log=print) -> Path:
    """Create the Label Studio venv if needed; returns the path of its ``label-studio`` program.

    Idempotent: a stamp file holding the version marks a finished install, so a second
    call returns at once. Concurrent callers wait for each other (a file lock).
    Needs PyPI (about 1 GB, 90-110 s on two cores) the first time only.
    """
    venv = Path(venv) if venv is not None else default_venv()
    program = venv / "bin" / "label-studio"
    stamp = venv / ".mcc-installed"

    def done() -> bool:
        return program.exists() and stamp.exists() and stamp.read_text().strip() == LABEL_STUDIO_VERSION

    if done():
        return program
    venv.mkdir(parents=True, exist_ok=True)
    with open(venv / ".mcc-lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done():  # another process finished it while we waited
            return program
        log(
            f"creating the Label Studio venv in {venv} (label-studio=={LABEL_STUDIO_VERSION}, about 1 GB, "
            "1-2 minutes, once)"
        )
        started = time.monotonic()
        steps = [
            [sys.executable, "-m", "venv", str(venv)],
            [
                str(venv / "bin" / "python"),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                f"label-studio=={LABEL_STUDIO_VERSION}",
            ],
        ]
        for step in steps:
            result = subprocess.run(step, capture_output=True, text=True, stdin=subprocess.DEVNULL)
            if result.returncode != 0:
                tail = _tail(result.stdout + result.stderr, 30)
                raise LabelStudioServerError(
                    f"installing Label Studio into {venv} failed ({' '.join(step[:4])} ...):\n{tail}\n"
                    f"Check that PyPI is reachable, or point {VENV_ENV} at a venv that has "
                    f"label-studio=={LABEL_STUDIO_VERSION}."
                )
        stamp.write_text(LABEL_STUDIO_VERSION + "\n")
        log(f"Label Studio venv ready in {time.monotonic() - started:.0f} s")
    return program


# -- start / stop / status -----------------------------------------------------------------
def server_dir(workdir: str | os.PathLike) -> Path:
    """``<workdir>/labelstudio`` as an absolute local path (the work dir must be a local folder)."""
    return local_workdir(workdir) / SERVER_DIR


def local_workdir(workdir: str | os.PathLike) -> Path:
    text = os.fspath(workdir)
    if text.startswith("file://"):
        text = text[len("file://") :]
    elif "://" in text:
        raise LabelStudioServerError(
            f"{text} is not a local folder: the local Label Studio server keeps its database there and "
            "serves the images from it. Run it on a local (or mounted shared) work dir."
        )
    return Path(text).expanduser().resolve()


def start(
    workdir: str | os.PathLike,
    port: int = DEFAULT_PORT,
    *,
    venv: str | os.PathLike | None = None,
    timeout: float = BOOT_TIMEOUT_S,
    log=print,
) -> ServerInfo:
    """Start (or find already running) the work dir's Label Studio on ``127.0.0.1:port``.

    Waits for ``/health`` and checks that the API token is accepted. Raises
    ``LabelStudioServerError`` with the end of the server log if it does not come up.
    """
    root = local_workdir(workdir)
    data_dir = root / SERVER_DIR
    running = _running(data_dir, check_health=False)
    if running is not None:
        if not _healthy(running["url"]):
            raise LabelStudioServerError(
                f"a Label Studio server for {root} is already running (pid {running['pid']}, {running['url']}) "
                "but does not answer /health (still booting, or hung): wait for it, or stop it with "
                f"`mcc labelstudio stop --workdir {workdir}`; a second server on the same database is never started"
            )
        log(f"Label Studio for {root} is already running (pid {running['pid']}, {running['url']})")
        return _info(data_dir, running)

    if not 1 <= port <= 65535:
        raise LabelStudioServerError(f"port {port} is not a TCP port; give --port between 1024 and 65535")
    if not port_is_free(port):
        raise LabelStudioServerError(
            f"port {port} on 127.0.0.1 is already in use; stop what uses it or pass another --port "
            "(Label Studio would otherwise move to the next free port without saying so)"
        )
    program = ensure_venv(venv, log=log)
    first_boot = not (data_dir / "label_studio.sqlite3").exists()  # the database is created by the first boot
    data_dir.mkdir(parents=True, exist_ok=True)
    credentials = _credentials(data_dir)
    env = _server_env(root, credentials)
    log_path = data_dir / "server.log"
    command = [
        str(program),
        "start",
        "--no-browser",
        "--data-dir",
        str(data_dir),
        "--database",
        str(data_dir / "label_studio.sqlite3"),
        "--internal-host",
        "127.0.0.1",
        "--port",
        str(port),
        "--enable-legacy-api-token",
    ]
    with open(log_path, "ab") as out:
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=data_dir,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    state = {"pid": process.pid, "port": port, "url": url, "started": time.time(), "data_dir": str(data_dir)}
    _write_json(data_dir / "server.json", state)
    hint = "first boot: database migrations, 30-50 s; " if first_boot else ""
    log(f"starting Label Studio {LABEL_STUDIO_VERSION} on {url} ({hint}log: {log_path})")
    try:
        _wait_healthy(process, url, timeout, log_path)
        _check_token(url, credentials["token"], log_path)
    except LabelStudioServerError:
        _terminate(process.pid)
        (data_dir / "server.json").unlink(missing_ok=True)
        raise
    return _info(data_dir, state)


def stop(workdir: str | os.PathLike, *, timeout: float = 20.0) -> int | None:
    """Stop the server this project started for the work dir; returns its pid, or None if none ran.

    Only a process that runs ``label-studio`` on this work dir's data dir is signalled (the
    one in ``server.json``, or found among the running processes when that file is gone), so
    a recycled pid is never killed.
    """
    data_dir = server_dir(workdir)
    running = _running(data_dir, check_health=False)
    if running is None:
        (data_dir / "server.json").unlink(missing_ok=True)  # a stale record of an ended server
        return None
    _terminate(running["pid"], timeout)
    (data_dir / "server.json").unlink(missing_ok=True)
    return running["pid"]


def status(workdir: str | os.PathLike) -> dict:
    """``{"running": bool, "healthy": bool, "url", "pid", "port"}`` of the work dir's server."""
    data_dir = server_dir(workdir)
    running = _running(data_dir, check_health=False)
    if running is None:
        return {"running": False, "healthy": False, "url": None, "pid": None, "port": None}
    return {
        "running": True,
        "healthy": _healthy(running["url"]),
        "url": running["url"],
        "pid": running["pid"],
        "port": running["port"],
    }


def credentials(workdir: str | os.PathLike) -> dict:
    """The admin e-mail, password and API token of the work dir's server (created on first start)."""
    path = server_dir(workdir) / "credentials.json"
    if not path.exists():
        raise LabelStudioServerError(
            f"no Label Studio credentials in {path.parent}; run `mcc labelstudio start`"
        )
    return json.loads(path.read_text())


def port_is_free(port: int) -> bool:
    """True if nothing listens on 127.0.0.1:``port`` and we may bind it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A port the OS considers free right now (for tests and ``--port 0``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# -- internals -------------------------------------------------------------------------------
def _server_env(root: Path, credentials: dict) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "HEARTEX_"))}
    # Label Studio also reads bare names (HOST, PORT, USERNAME, ...): never let a shell's leak in.
    for bare in ("HOST", "PORT", "USERNAME", "PASSWORD", "USER_TOKEN", "DATABASE_NAME", "SENTRY_DSN"):
        env.pop(bare, None)
    env.update(
        {
            "LABEL_STUDIO_USERNAME": credentials["username"],
            "LABEL_STUDIO_PASSWORD": credentials["password"],
            "LABEL_STUDIO_USER_TOKEN": credentials["token"],
            "LABEL_STUDIO_HOST": "",  # relative URLs: works behind an SSH tunnel on any port
            "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
            "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(root),
            "LABEL_STUDIO_LATEST_VERSION_CHECK": "false",
            "LABEL_STUDIO_SENTRY_DSN": "",
            "LABEL_STUDIO_FRONTEND_SENTRY_DSN": "",
            "LABEL_STUDIO_COLLECT_ANALYTICS": "false",
            "LABEL_STUDIO_CONVERTER_DOWNLOAD_RESOURCES": "false",
            "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def _credentials(data_dir: Path) -> dict:
    path = data_dir / "credentials.json"
    if path.exists():
        return json.loads(path.read_text())
    fresh = {
        "username": DEFAULT_USERNAME,
        "password": secrets.token_urlsafe(12),
        "token": secrets.token_hex(20),
    }
    _write_json(path, fresh, mode=0o600)
    return fresh


def _info(data_dir: Path, state: dict) -> ServerInfo:
    creds = json.loads((data_dir / "credentials.json").read_text())
    return ServerInfo(
        url=state["url"],
        port=state["port"],
        pid=state["pid"],
        username=creds["username"],
        password=creds["password"],
        token=creds["token"],
        data_dir=str(data_dir),
        log=str(data_dir / "server.log"),
    )


def _running(data_dir: Path, check_health: bool = True) -> dict | None:
    """The work dir's server if its process is alive and still the same program, else None.

    Read from ``server.json``; when that file is missing or stale, the running processes are
    searched for ``label-studio`` on this data dir (a deleted pid file must not lead to a
    second server on the same database), and a found one is recorded again.
    """
    state = _recorded(data_dir)
    if state is None or not (_alive(state["pid"]) and _is_our_server(state["pid"], data_dir)):
        state = _find_server(data_dir)
        if state is None:
            return None
        _write_json(data_dir / "server.json", state)
    if check_health and not _healthy(state["url"]):
        return None
    return state


def _recorded(data_dir: Path) -> dict | None:
    try:
        state = json.loads((data_dir / "server.json").read_text())
        state["pid"] = int(state["pid"])
        return state
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _find_server(data_dir: Path) -> dict | None:
    """A live ``label-studio start`` process on ``data_dir`` (pid, port and URL from its
    command line), from ``/proc``; None when there is none."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if pid == os.getpid() or not _is_our_server(pid, data_dir) or not _alive(pid):
            continue
        argv = _argv(pid)
        port = int(argv[argv.index("--port") + 1]) if "--port" in argv[:-1] else DEFAULT_PORT
        url = f"http://127.0.0.1:{port}"
        return {"pid": pid, "port": port, "url": url, "started": None, "data_dir": str(data_dir)}
    return None


def _argv(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of ours counts as ended
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def _is_our_server(pid: int, data_dir: Path) -> bool:
    """True if ``pid`` runs ``label-studio start`` on this data dir (not a process that got the pid later)."""
    argv = _argv(pid)
    return any(a.endswith("label-studio") for a in argv) and str(data_dir) in argv


def _terminate(pid: int, timeout: float = 20.0) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(pid)
        if not _alive(pid):
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    _reap(pid)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def _wait_healthy(process: subprocess.Popen, url: str, timeout: float, log_path: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise LabelStudioServerError(
                f"Label Studio exited with code {process.returncode} before answering on {url}; "
                f"the end of {log_path}:\n{_tail(log_path.read_text(errors='replace'), 30)}"
            )
        if _healthy(url):
            return
        time.sleep(1.0)
    raise LabelStudioServerError(
        f"Label Studio did not answer {url}/health within {timeout:.0f} s; the end of {log_path}:\n"
        f"{_tail(log_path.read_text(errors='replace'), 30)}"
    )


def _check_token(url: str, token: str, log_path: Path) -> None:
    response = httpx.get(
        f"{url}/api/current-user/whoami", headers={"Authorization": f"Token {token}"}, timeout=10.0
    )
    if response.status_code != 200:
        raise LabelStudioServerError(
            f"Label Studio on {url} is up but rejects the API token in {log_path.parent}/credentials.json "
            f"(HTTP {response.status_code}). Its database was probably created without legacy API tokens: "
            f"stop it and move {log_path.parent}/label_studio.sqlite3 away to start afresh."
        )


def _write_json(path: Path, payload: dict, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        json.dump(payload, f, indent=1)
    os.replace(tmp, path)


def _tail(text: str, lines: int) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])
