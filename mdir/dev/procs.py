"""Process and port utilities for the local services: spawn in an own process group, find
and stop exactly what was started (by pid / process group, never by name), wait for health.

Uses ``ps`` (Linux and macOS) to list processes; nothing here knows about a particular service.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path


class ServiceError(RuntimeError):
    """A service failed to start or to answer its health check (message names the log file)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (the OS picks it)."""
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports (sockets held open together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on ``host:port``."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


def http_status(url: str, timeout: float = 2.0, headers: Mapping[str, str] | None = None) -> int:
    """HTTP status of a GET (0 when nothing answers)."""
    req = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310 (loopback URL)
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except (OSError, ValueError):
        return 0


def log_tail(log: Path | str | None, n: int = 30) -> str:
    """The last ``n`` lines of a log file ('' when there is none)."""
    if log is None or not Path(log).exists():
        return ""
    lines = Path(log).read_text(errors="replace").splitlines()
    return "\n".join(lines[-n:])


def wait_until(
    pred: Callable[[], bool],
    timeout: float,
    what: str,
    log: Path | str | None,
    proc: subprocess.Popen | None = None,
) -> None:
    """Poll ``pred`` until true; :class:`ServiceError` with the log's tail when ``proc``
    exits first or ``timeout`` passes."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if pred():
            return
        if proc is not None and proc.poll() is not None:
            raise ServiceError(
                f"{what} exited with code {proc.returncode}; see {log}\n{log_tail(log)}"
            )
        time.sleep(0.3)
    raise ServiceError(f"{what} not ready after {timeout:.0f} s; see {log}\n{log_tail(log)}")


def venv_bin(name: str) -> str:
    """Console script ``name`` next to this interpreter (the venv), else from PATH."""
    cand = Path(sys.executable).parent / name
    if cand.exists():
        return str(cand)
    found = shutil.which(name)
    if not found:
        raise ServiceError(f"`{name}` not found next to {sys.executable} nor on PATH")
    return found


def processes() -> list[tuple[int, int, str]]:
    """(pid, pgid, command line) of every process."""
    out = subprocess.run(
        ["ps", "-axww", "-o", "pid=,pgid=,command="],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    rows = []
    for line in out.splitlines():
        parts = line.strip().split(None, 2)
        if len(parts) >= 2 and parts[0].isdigit() and parts[1].isdigit():
            rows.append((int(parts[0]), int(parts[1]), parts[2] if len(parts) > 2 else ""))
    return rows


def pid_alive(pid: int) -> bool:
    """True when ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists():
        with contextlib.suppress(OSError, IndexError):
            return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def group_pids(pgid: int) -> list[int]:
    """Live pids of process group ``pgid``."""
    return [p for p, g, _ in processes() if g == pgid and pid_alive(p)]


def _signal_pids(pids: Iterable[int], sig: int) -> None:
    for p in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p, sig)


def terminate(pids: list[int], pgid: int | None, timeout: float = 10.0) -> None:
    """SIGTERM ``pids`` in order (and the group), wait, then SIGKILL whatever is left."""
    _signal_pids(pids, signal.SIGTERM)
    if pgid:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        left = [p for p in pids if pid_alive(p)] + (group_pids(pgid) if pgid else [])
        if not left:
            break
        time.sleep(0.2)
    else:
        _signal_pids([p for p in pids if pid_alive(p)], signal.SIGKILL)
        if pgid:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
    # reap direct children so they do not linger as zombies of this process
    for p in pids:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(p, os.WNOHANG)


def spawn(
    cmd: list[str], log: Path, env: Mapping[str, str], nice: int | None = None
) -> subprocess.Popen:
    """Start ``cmd`` in its own session (process group = its pid), output appended to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)

    def _pre() -> None:  # runs in the child before exec
        if nice is not None:
            with contextlib.suppress(OSError):  # negative values need privileges
                os.setpriority(os.PRIO_PROCESS, 0, nice)

    with open(log, "ab") as fh:
        return subprocess.Popen(
            cmd,
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env),
            start_new_session=True,  # own process group → stop() kills the whole group
            preexec_fn=_pre if nice is not None else None,
        )


def renice(pids: Iterable[int], value: int) -> None:
    """Set the CPU priority of ``pids`` (errors ignored: they may have exited)."""
    for p in pids:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, p, value)
