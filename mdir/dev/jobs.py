"""Submit a Ray job to a local head through Ray's public Jobs SDK and follow it.

``JobSubmissionClient`` (with the head's token header) instead of shelling out to ``ray job
submit``: no CLI arguments in ``ps``, the driver's output streamed with ``tail_job_logs``,
and the final state read from the API rather than parsed from CLI text. The last line
handed to ``on_line`` is ``Job '<id>' <succeeded|failed|stopped>``, the line the CLI prints.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mdir.dev.ray_head import RayHead

#: Terminal job states → the word the CLI's last line uses.
_FINAL = {"SUCCEEDED": "succeeded", "FAILED": "failed", "STOPPED": "stopped"}


def _lines(chunks: list[str], pending: str) -> tuple[list[str], str]:
    """Split streamed text into whole lines (``\\n`` kept) and the unfinished rest."""
    text = pending + "".join(chunks)
    parts = text.split("\n")
    return [p + "\n" for p in parts[:-1]], parts[-1]


async def _follow(client: Any, job_id: str, on_line: Callable[[str], None]) -> None:
    pending = ""
    async for chunk in client.tail_job_logs(job_id):
        lines, pending = _lines([chunk], pending)
        for line in lines:
            on_line(line)
    if pending:
        on_line(pending + "\n")


def submit_and_follow(
    head: RayHead,
    working_dir: Path,
    entrypoint: list[str],
    env_vars: Mapping[str, str],
    on_line: Callable[[str], None],
    *,
    excludes: list[str] | None = None,
    final_timeout_s: float = 60.0,
) -> tuple[int, str]:
    """Submit ``entrypoint`` with ``working_dir`` uploaded and ``env_vars`` in its
    runtime_env; stream every output line to ``on_line`` until the job ends. Returns (0
    when it succeeded, else the driver's exit code or 1 when Ray has none; the job id)."""
    import shlex

    from ray.job_submission import JobStatus

    client = head.job_client()
    renv: dict[str, Any] = {"working_dir": str(working_dir), "env_vars": dict(env_vars)}
    if excludes:
        renv["excludes"] = list(excludes)
    job_id = client.submit_job(entrypoint=shlex.join(entrypoint), runtime_env=renv)
    on_line(f"Job '{job_id}' submitted successfully\n")
    asyncio.run(_follow(client, job_id, on_line))
    # the log stream closes when the driver exits; the state may trail it by a moment
    deadline = time.monotonic() + final_timeout_s
    status = client.get_job_status(job_id)
    while not status.is_terminal() and time.monotonic() < deadline:
        time.sleep(0.5)
        status = client.get_job_status(job_id)
    word = _FINAL.get(str(status.value), str(status.value).lower())
    on_line(f"Job '{job_id}' {word}\n")
    if status == JobStatus.SUCCEEDED:
        return 0, job_id
    # the driver's own exit code where Ray knows it (e.g. 2: a config refused), else 1
    code = client.get_job_info(job_id).driver_exit_code
    return (code if code else 1), job_id
