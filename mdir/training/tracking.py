"""MLflow tracking that never kills or stalls training.

`Tracker` is used by rank 0 only. Every call (params, metrics, artifacts, tags) is put on
a bounded in-memory queue and executed by one background thread with a short HTTP timeout
and few retries (``MLFLOW_HTTP_REQUEST_TIMEOUT`` / ``..._MAX_RETRIES`` are set for this
process from `MlflowSection`). While the server is down the calls stay buffered (oldest
dropped, and counted, when the buffer is full), a warning is logged once per outage, and
the thread retries with exponential back-off; the run itself is created lazily, so a
server that comes up late still gets the whole history. A run continued after a restart
(``run_id`` given) first reads the last step logged per metric key and drops replayed
points at or below it, so steps repeated since the last checkpoint appear once. `close()` waits at most
``flush_timeout`` seconds: training finishes whether or not the server answered.

Why not MLflow's own async logging: with retries it blocks for minutes per call against a
dead server, and with ``MAX_RETRIES=0`` it drops metrics silently (DESIGN.md pitfalls).
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("mdir.training.tracking")


def configure_http(timeout_s: float, max_retries: int) -> None:
    """Bound every MLflow REST call of this process (read by MLflow at call time) and never
    unpickle model files fetched from the server (`mdir.runtime.mlflow_client_env`)."""
    from mdir.runtime import configure_mlflow_client

    configure_mlflow_client(timeout_s, max_retries)


class Tracker:
    """Buffered, retrying MLflow logger for one run (see the module docstring).

    `run_id` may be given to continue a run (resume after a failure); otherwise the run is
    created in `experiment` (nested under `parent_run_id` when set) on the first success.
    """

    def __init__(
        self,
        tracking_uri: str | None,
        experiment: str,
        run_name: str | None = None,
        run_id: str | None = None,
        parent_run_id: str | None = None,
        tags: dict[str, str] | None = None,
        timeout_s: float = 10.0,
        max_retries: int = 2,
        buffer_size: int = 10000,
        enabled: bool = True,
    ) -> None:
        self.enabled = enabled and bool(tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"))
        self.tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        self.experiment = experiment
        self.run_name = run_name
        self.run_id = run_id
        self.parent_run_id = parent_run_id
        self.tags = dict(tags or {})
        self.dropped = 0
        self.failures = 0
        self.replayed = 0  # metric points skipped because the continued run already had them
        # last step logged per metric key in a continued run; None until read from the server
        self._last_steps: dict[str, int] | None = None if run_id else {}
        self._queue: collections.deque[tuple[str, Callable[[Any, str], None]]] = collections.deque(
            maxlen=buffer_size
        )
        self._cv = threading.Condition()
        self._closing = False
        self._busy = False
        self._outage_warned = False
        self._client: Any = None
        self._thread: threading.Thread | None = None
        if self.enabled:
            configure_http(timeout_s, max_retries)
            import mlflow.entities  # noqa: F401 - import once here, not inside a logging call

            self._thread = threading.Thread(target=self._worker, name="mdir-mlflow", daemon=True)
            self._thread.start()

    # -- public API (non-blocking) -------------------------------------------------------
    def submit(self, what: str, fn: Callable[[Any, str], None]) -> None:
        """Queue ``fn(client, run_id)``; `what` names it in warnings."""
        if not self.enabled:
            return
        with self._cv:
            if len(self._queue) == self._queue.maxlen:
                self.dropped += 1
            self._queue.append((what, fn))
            self._cv.notify()

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]

        def fn(c: Any, rid: str) -> None:
            for i in range(0, len(items), 100):
                c.log_batch(rid, params=items[i : i + 100])

        self.submit("params", fn)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, int(step)) for k, v in metrics.items()]

        def fn(c: Any, rid: str) -> None:
            last = self._last_steps or {}
            fresh = [m for m in items if m.step > last.get(m.key, -1)]
            self.replayed += len(items) - len(fresh)
            if fresh:
                c.log_batch(rid, metrics=fresh)

        self.submit("metrics", fn)

    def log_artifact(self, local_path: str, artifact_path: str | None = None) -> None:
        self.submit(
            f"artifact {os.path.basename(local_path)}",
            lambda c, rid: c.log_artifact(rid, local_path, artifact_path),
        )

    def log_dataset(self, name: str, digest: str, source: str, context: str = "training") -> None:
        """The dataset as the run's input (MLflow's Dataset panel: name, digest, URI)."""

        def fn(c: Any, rid: str) -> None:
            from mlflow.entities import Dataset, DatasetInput, InputTag

            ds = Dataset(name=name, digest=digest, source_type="mdir", source=source)
            c.log_inputs(
                rid, datasets=[DatasetInput(ds, [InputTag("mlflow.data.context", context)])]
            )

        self.submit(f"dataset {name}", fn)

    def log_image(self, image: Any, artifact_file: str) -> None:
        """A uint8 HWC array as a PNG artifact (held in memory until sent: no temp file)."""
        self.submit(f"image {artifact_file}", lambda c, rid: c.log_image(rid, image, artifact_file))

    def log_text(self, text: str, artifact_file: str) -> None:
        self.submit(f"text {artifact_file}", lambda c, rid: c.log_text(rid, text, artifact_file))

    def set_tags(self, tags: dict[str, str]) -> None:
        def fn(c: Any, rid: str) -> None:
            for k, v in tags.items():
                c.set_tag(rid, k, str(v))

        self.submit("tags", fn)

    def call_now(self, fn: Callable[[Any, str], Any], timeout: float) -> Any:
        """Run ``fn(client, run_id)`` after everything queued, waiting at most `timeout`;
        returns its result or None (and warns) when the server did not answer."""
        if not self.enabled:
            return None
        box: dict[str, Any] = {}
        done = threading.Event()

        def wrapped(c: Any, rid: str) -> None:
            # Errors of the call itself (not of reaching the server) are reported, not retried.
            try:
                box["value"] = fn(c, rid)
            except Exception as e:
                log.warning(
                    "MLflow call failed: %s: %s",
                    type(e).__name__,
                    str(e).splitlines()[0][:300] if str(e) else "",
                )
            finally:
                done.set()

        self.submit("call", wrapped)
        if not done.wait(timeout):
            log.warning("MLflow did not answer within %.0f s; continuing without it", timeout)
            return None
        return box.get("value")

    def flush(self, timeout: float) -> bool:
        """Wait until the queue is empty (at most `timeout` s); True when all got through."""
        if not self.enabled:
            return True
        deadline = time.monotonic() + timeout
        with self._cv:
            while (self._queue or self._busy) and time.monotonic() < deadline:
                self._cv.wait(timeout=min(0.2, max(0.01, deadline - time.monotonic())))
            return not self._queue and not self._busy

    def close(
        self, status: str = "FINISHED", flush_timeout: float = 30.0, end_run: bool = True
    ) -> None:
        """Flush (bounded), end the run (unless `end_run` is False: the run belongs to someone
        else, e.g. the retrieval driver), stop the thread; warn about what never got through."""
        if not self.enabled:
            return
        if end_run:
            self.submit("end run", lambda c, rid: c.set_terminated(rid, status))
        ok = self.flush(flush_timeout)
        with self._cv:
            self._closing = True
            left = len(self._queue)
            self._cv.notify_all()
        if not ok or self.dropped:
            log.warning(
                "MLflow: %d tracking calls not delivered, %d dropped (server %s unreachable)",
                left,
                self.dropped,
                self.tracking_uri,
            )

    # -- background thread ---------------------------------------------------------------
    def _ensure_run(self) -> str:
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        if self.run_id is None:
            c = self._client
            exp = c.get_experiment_by_name(self.experiment)
            exp_id = exp.experiment_id if exp is not None else c.create_experiment(self.experiment)
            tags = dict(self.tags)
            if self.parent_run_id:
                tags["mlflow.parentRunId"] = self.parent_run_id
            run = c.create_run(exp_id, run_name=self.run_name, tags=tags)
            self.run_id = run.info.run_id
            log.info("MLflow run %s (experiment %s)", self.run_id, self.experiment)
        if self._last_steps is None:
            self._last_steps = last_logged_steps(self._client, self.run_id)
            if self._last_steps:
                log.info(
                    "MLflow run %s continued: metric points up to step %d are already logged",
                    self.run_id,
                    max(self._last_steps.values()),
                )
        return self.run_id

    def _worker(self) -> None:
        backoff = 1.0
        while True:
            with self._cv:
                while not self._queue and not self._closing:
                    self._cv.wait()
                if self._closing:
                    return
                what, fn = self._queue[0]
                self._busy = True
            try:
                rid = self._ensure_run()
                fn(self._client, rid)
            except Exception as e:  # server down, timeout, 5xx: keep it and retry later
                self.failures += 1
                if not self._outage_warned:
                    log.warning(
                        "MLflow unreachable (%s: %s); buffering and retrying",
                        what,
                        str(e).splitlines()[0][:200],
                    )
                    self._outage_warned = True
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()
                    self._cv.wait(timeout=backoff)
                    if self._closing:
                        return
                backoff = min(backoff * 2, 30.0)
                continue
            if self._outage_warned:
                log.warning("MLflow reachable again; delivering buffered calls")
                self._outage_warned = False
            backoff = 1.0
            with self._cv:
                if self._queue and self._queue[0][1] is fn:
                    self._queue.popleft()
                self._busy = False
                self._cv.notify_all()


def last_logged_steps(client: Any, run_id: str) -> dict[str, int]:
    """The highest step logged so far for each metric key of `run_id` (empty for a new run).
    A resumed worker group replays the steps since its checkpoint; these bounds keep their
    points from being logged a second time."""
    keys = list(client.get_run(run_id).data.metrics)
    return {
        k: max((m.step for m in client.get_metric_history(run_id, k)), default=-1) for k in keys
    }
