"""The background processes ``adsrec up`` supervises, whatever they serve: start one in its own process
group with its output appended to ``<folder>/<name>.log`` and its PID in ``<folder>/<name>.pid``, tell
whether a PID file's process still runs the service, wait until it answers, stop it (SIGTERM to the
group, SIGKILL after a grace period). Standard library only; flows/services.py says which services.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from components.config import PROJECT_ROOT


class ServiceError(RuntimeError):
    """A service could not be started or stopped; the message says which and why."""


@dataclass(frozen=True)
class ServiceSpec:
    """How to start one service and how to tell that it is ready."""

    name: str
    command: list[str]
    env: dict[str, str]
    port: int | None
    url: str | None            # what a person opens
    health_url: str | None     # GET answers 2xx when ready
    marker: str                # a substring of the process's command line (guards against PID reuse)


@dataclass
class Launched:
    """A service this call started: its spec, its process and when it started."""

    spec: ServiceSpec
    proc: subprocess.Popen[bytes]
    at: float  # time.time() at launch


def pid_file(folder: Path, name: str) -> Path:
    return folder / f"{name}.pid"


def log_file(folder: Path, name: str) -> Path:
    return folder / f"{name}.log"


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None


def process_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie child of this process counts as gone and is reaped)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    if stat.is_file():
        try:
            return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except (OSError, IndexError):
            return True
    return True


def command_line(pid: int) -> str:
    proc = Path(f"/proc/{pid}/cmdline")
    if proc.is_file():
        try:
            return proc.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return ""
    out = subprocess.run(["ps", "-o", "command=", "-p", str(pid)], capture_output=True, text=True)
    return out.stdout.strip()


def runs_service(pid: int, marker: str) -> bool:
    """Whether ``pid`` runs and its command line shows ``marker`` (a reused PID does not)."""
    return process_alive(pid) and marker in command_line(pid)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def owned_pid(folder: Path, name: str, marker: str) -> int | None:
    """The PID in the service's PID file when that process still runs the service, else ``None``
    (and a stale PID file is removed)."""
    path = pid_file(folder, name)
    pid = read_pid(path)
    if pid is None:
        return None
    if runs_service(pid, marker):
        return pid
    path.unlink(missing_ok=True)
    return None


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback URLs we built
            return 200 <= resp.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def port_free(host: str, port: int) -> bool:
    """False when something listens on ``host:port``; :class:`ServiceError` when ``host`` cannot be bound
    at all (not an address of this machine, or not an address)."""
    import errno

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise ServiceError(f"cannot listen on {host}:{port} ({exc.strerror or exc}): check deploy.host") from None
    return True


def log_tail(path: Path, lines: int = 25) -> str:
    if not path.is_file():
        return "(no log)"
    text = path.read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:])


def launch(folder: Path, spec: ServiceSpec) -> Launched:
    """Start one service in its own process group, its output appended to its log, its PID in its file."""
    log_path = log_file(folder, spec.name)
    with open(log_path, "ab") as log:
        log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(spec.command)}\n".encode())
        log.flush()
        at = time.time()
        proc = subprocess.Popen(spec.command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=spec.env, cwd=PROJECT_ROOT, start_new_session=True)
    pid_file(folder, spec.name).write_text(f"{proc.pid}\n")
    return Launched(spec, proc, at)


def wait_ready(folder: Path, launched: Launched, deadline: float, ready: Callable[[], bool], what: str) -> None:
    """Poll ``ready()`` until it is true; raise :class:`ServiceError` with the log's tail when the process
    exits or the deadline (``time.monotonic()``) passes. ``what``: what readiness waits for, in words."""
    spec, proc = launched.spec, launched.proc
    log_path = log_file(folder, spec.name)
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServiceError(f"the {spec.name} service exited with code {proc.returncode} while starting; "
                               f"last lines of {log_path}:\n{log_tail(log_path)}")
        if ready():
            return
        time.sleep(0.5)
    raise ServiceError(f"the {spec.name} service was not ready in time (waited for {what}); "
                       f"last lines of {log_path}:\n{log_tail(log_path)}")


def stop_pid(pid: int, grace: float) -> str:
    """SIGTERM the process group led by ``pid``; SIGKILL what is left after ``grace`` seconds."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return "already gone"
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not process_alive(pid) and not group_alive(pid):
            return "stopped"
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        return "stopped"
    for _ in range(50):
        if not process_alive(pid):
            break
        time.sleep(0.1)
    return "killed after SIGTERM timed out"
