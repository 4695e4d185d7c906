"""Turn a data pipeline that stops delivering into an error instead of a silent hang.

A worker that waits for a batch cannot tell a slow pipeline from a starved one (Ray Data
tasks that never get a CPU because the training workers hold them all, a node gone): the
run sits at step 0 forever. `watch_batches` pulls each batch in a helper thread and raises
`DataStallError` when one takes longer than ``train.stall_timeout_s``; the message names the
resources the plan asked for and what the cluster has (`stall_message`). Only the wait for
`next()` is timed, so evaluation or checkpointing between steps never counts.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


class DataStallError(RuntimeError):
    """No training batch arrived within ``train.stall_timeout_s``."""


def watch_batches(
    batches: Iterable[T], timeout_s: float, describe: Callable[[float], str]
) -> Iterator[T]:
    """Yield from `batches`; raise `DataStallError` (message ``describe(seconds waited)``)
    when one `next()` takes longer than `timeout_s`. ``timeout_s <= 0`` yields unwatched.

    Batches are still fetched one at a time and only when asked for (no read-ahead), in
    one daemon thread, so a pipeline stuck for good cannot keep the process alive."""
    if timeout_s <= 0:
        yield from batches
        return
    it = iter(batches)
    asks: queue.Queue[bool] = queue.Queue()
    answers: queue.Queue[tuple[str, Any]] = queue.Queue()

    def pump() -> None:
        while asks.get():
            try:
                answers.put(("item", next(it)))
            except StopIteration:
                answers.put(("end", None))
                return
            except BaseException as e:  # handed to the consumer's thread
                answers.put(("error", e))
                return

    threading.Thread(target=pump, name="mdir-batch-watchdog", daemon=True).start()
    try:
        while True:
            asks.put(True)
            t0 = time.monotonic()
            try:
                kind, value = answers.get(timeout=timeout_s)
            except queue.Empty:
                raise DataStallError(describe(time.monotonic() - t0)) from None
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        asks.put(False)


def stall_message(cfg: Any, waited_s: float) -> str:
    """What a stalled worker reports: the plan's resources and the cluster's (if known)."""
    from mdir.training.preflight import resource_plan

    plan = resource_plan(cfg)
    have = ""
    ray = sys.modules.get("ray")  # a Ray worker has it; elsewhere don't pay its import
    if ray is not None and ray.is_initialized():
        try:
            total, free = ray.cluster_resources(), ray.available_resources()
            have = (
                f"; the cluster has {total.get('CPU', 0):g} CPUs, {free.get('CPU', 0):g} free now"
            )
        except Exception:  # the GCS is gone too: say what we know
            pass
    return (
        f"no training batch for {waited_s:.0f} s (train.stall_timeout_s={cfg.train.stall_timeout_s:g}): "
        f"the data pipeline is stalled. The run asked for {plan.describe(cfg)}{have}. Ray Data "
        "tasks need CPUs next to the training workers: lower scaling.num_workers / "
        "scaling.cpus_per_worker or data.parallelism / data.task_cpus, or add nodes"
    )
