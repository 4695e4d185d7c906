"""Launching drivers the ways users do — plainly, or under a real ``uv run`` — and waiting
for them with a watch on the raylet, so that workers that cannot start fail a test in
seconds with Ray's reason instead of after its timeout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mdir import runtime
from mdir.dev.ray_head import WorkerStartWatch


def uv_binary() -> str:
    """The ``uv`` executable: the one running this session (``uv run`` sets ``UV``), else
    on PATH, else the one installed in the base interpreter (the Makefile's fallback)."""
    cand = os.environ.get("UV") or shutil.which("uv")
    if cand and Path(cand).name == "uv":
        return cand
    base = Path(sys.base_prefix) / "bin" / "uv"
    if base.exists():
        return str(base)
    pytest.fail("no `uv` binary found (make test installs one): cannot test the uv-run launch")


def bare_python(root: Path) -> Path:
    """A Python with no Ray in it (a fresh venv of the base interpreter) under ``root``."""
    venv = root / "bare-python"
    if not (venv / "bin" / "python").exists():
        base = Path(sys.base_prefix) / "bin" / "python3"
        subprocess.run([str(base), "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    assert subprocess.run([str(py), "-c", "import ray"], capture_output=True).returncode != 0
    return py


def under_uv_run(cmd: list[str], root: Path) -> list[str]:
    """``cmd`` (which starts with this interpreter) run through ``uv run`` the way Ray's hook
    recognises it, with uv's ``--python`` naming an interpreter that has no Ray: what the
    workers would get if the hook decided their interpreter."""
    return [uv_binary(), "run", "--no-project", "--python", str(bare_python(root)), *cmd]


def hook_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` without anything that switches Ray's uv-run hook off beforehand."""
    out = dict(env)
    out.pop(runtime.UV_HOOK_ENV, None)
    out.pop(runtime.UV_HOOK_OPT_IN, None)
    return out


def wait_driver(
    proc: subprocess.Popen, watch: WorkerStartWatch, timeout: float, log: Path | None = None
) -> int:
    """Wait for ``proc``; fail at once when the raylet reports workers that cannot start."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        try:
            watch.check("the driver's Ray workers")
        except Exception as e:
            proc.kill()
            proc.wait()
            pytest.fail(f"{e}\n--- driver log ---\n{_tail(log)}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            pytest.fail(f"driver still running after {timeout:.0f} s\n{_tail(log)}")
        time.sleep(1.0)
    return int(proc.returncode)


def _tail(log: Path | None, n: int = 4000) -> str:
    return log.read_text(errors="replace")[-n:] if log and log.exists() else ""
