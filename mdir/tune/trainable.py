"""The Tune trainable: one trial = one distributed Ray Train run.

Ray 2.60 runs Train V2, where ``Tuner(trainer)`` is deprecated: the trial is a plain Tune
function that builds a `TorchTrainer` and calls ``fit()``. The trainer's controller and
workers are child actors of the trial actor, so when ASHA stops a trial (Tune kills the
trial actor) they die with it and their placement group is removed: the CPUs/GPUs are
free before the next trial starts on them.

Metrics travel from the rank-0 worker to Tune through `ReportMetricToTune` (a Train V2
`UserCallback`, like ``ray.tune.integration.ray_train.TuneReportCallback``), which only
forwards reports that carry the ranking metric: training also reports losses every
``log_every`` steps, and Tune's strict metric check (and ASHA) need the metric in every
result they see. One Tune iteration is therefore one evaluation point.

``config`` (Tune's param space, built by `mdir.tune.runner`):
``{"trial": Trial as dict, "sweep": {...}}`` where sweep holds the space, the base
config mapping, the MLflow parent run id and tracking URI, and the storage location.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ray.train.v2.api.callback import UserCallback

TRIAL_TAG = "mdir.tune.trial_id"
SWEEP_TAG = "mdir.tune.sweep"
LABEL_TAG = "mdir.tune.label"


class ReportMetricToTune(UserCallback):
    """Forward rank 0's reports that contain `metric` (plus the checkpoint path) to Tune."""

    def __init__(self, metric: str) -> None:
        from ray.train._internal.session import get_session
        from ray.tune.trainable.trainable_fn_utils import _in_tune_session

        if not _in_tune_session():
            raise RuntimeError("ReportMetricToTune only works inside a Tune trial")
        self.metric = metric
        self._queue = get_session()._get_or_create_inter_actor_queue()

    def after_report(
        self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any
    ) -> None:
        row = normalize_report(metrics[0] if metrics else {})
        if self.metric not in row:
            return
        if checkpoint is not None:
            row["checkpoint_path"] = checkpoint.path
        self._queue.put(row)


def normalize_report(row: dict[str, Any]) -> dict[str, Any]:
    """Training reports evaluation results as ``eval/<key>``; Tune and the leaderboard use
    the bare key (``eval/fid_legacy`` → ``fid_legacy``, ``eval/fid_legacy_random_inception`` → ``fid_legacy_random_inception``)."""
    out = {k: v for k, v in row.items() if "/" not in k}
    for k, v in row.items():
        if k.startswith("eval/"):
            out[k.removeprefix("eval/")] = v
    return out


def trial_fn(config: dict[str, Any]) -> None:
    """Tune function trainable (runs in the trial actor)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # see mdir.tune.runner._ensure_ray
    from ray import tune

    from mdir.tune.space import Trial, TuneSpace

    sweep = config["sweep"]
    trial = Trial.model_validate(config["trial"])
    space = TuneSpace.model_validate(sweep["space"])
    ctx = tune.get_context()
    trial_id = ctx.get_trial_id()
    if sweep.get("tracking_uri"):
        os.environ["MLFLOW_TRACKING_URI"] = sweep["tracking_uri"]
    # One process fewer per trial: spot-instance preemption watching is the cluster's job.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    if space.backend == "toy":
        _run_toy(space, trial, sweep, trial_id)
    else:
        _run_train(space, trial, sweep, trial_id)
    mark_completed(sweep["path"], trial_id)


def mark_completed(sweep_path: str, trial_id: str) -> None:
    """Record that the trial ran to its end (ASHA-stopped trials never get here)."""
    import fsspec

    fs, p = fsspec.core.url_to_fs(f"{sweep_path}/completed/{trial_id}")
    fs.makedirs(p.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(p, "w") as f:
        f.write("completed\n")


def completed_trials(sweep_path: str) -> set[str]:
    import fsspec

    fs, p = fsspec.core.url_to_fs(f"{sweep_path}/completed")
    if not fs.exists(p):
        return set()
    return {x.rstrip("/").rsplit("/", 1)[-1] for x in fs.ls(p, detail=False)}


def _child_run(
    sweep: dict[str, Any], trial: Any, trial_id: str, params: dict[str, Any]
) -> str | None:
    """Create (or, on a retry, find again) this trial's MLflow child run."""
    if not sweep.get("parent_run_id"):
        return None
    from mlflow.tracking import MlflowClient

    client = MlflowClient(sweep["tracking_uri"])
    parent = client.get_run(sweep["parent_run_id"])
    found = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`{TRIAL_TAG}` = '{trial_id}' and tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
        max_results=1,
    )
    if found:
        return found[0].info.run_id
    run = client.create_run(
        parent.info.experiment_id,
        run_name=f"{sweep['name']}-{trial.index:03d}",
        tags={
            "mlflow.parentRunId": parent.info.run_id,
            TRIAL_TAG: trial_id,
            SWEEP_TAG: sweep["name"],
            LABEL_TAG: trial.label,
        },
    )
    for k, v in params.items():
        client.log_param(run.info.run_id, k, v)
    return run.info.run_id


def _run_toy(space: Any, trial: Any, sweep: dict[str, Any], trial_id: str) -> None:
    import ray.train
    from ray.train.torch import TorchTrainer

    from mdir.runtime import worker_runtime_env
    from mdir.training.checkpoint import SCORE_KEY
    from mdir.tune.space import trial_config
    from mdir.tune.toy import best_reported, register_toy_generator, toy_settings, toy_train_loop

    settings = toy_settings(trial_config(space, {}, trial))
    marker = Path(sweep["marker_root"]) / trial_id
    marker.mkdir(parents=True, exist_ok=True)
    with open(marker / "starts", "a") as f:
        f.write("start\n")
    run_id = _child_run(sweep, trial, trial_id, trial.params)
    if settings["fail"] is not None and int(settings["fail"]) < 0:
        raise RuntimeError("toy trial asked to fail before training")
    r = space.resources_per_trial
    trainer = TorchTrainer(
        toy_train_loop,
        train_loop_config={
            "toy": settings,
            "marker_dir": str(marker),
            "select": {"metric": space.metric.name, "mode": space.metric.mode},
            "mlflow": {"tracking_uri": sweep["tracking_uri"], "run_id": run_id} if run_id else None,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=r.num_workers,
            use_gpu=r.use_gpu,
            resources_per_worker={"CPU": r.cpus_per_worker},
        ),
        run_config=ray.train.RunConfig(
            name=f"trial-{trial_id}",
            storage_path=sweep["train_storage"],
            callbacks=[ReportMetricToTune(space.metric.name)],
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=int(settings["keep"]) or None,
                checkpoint_score_attribute=SCORE_KEY,
                checkpoint_score_order="max",
            ),
            worker_runtime_env=worker_runtime_env(
                {"MLFLOW_TRACKING_URI": sweep["tracking_uri"] or ""}
            ),
        ),
    )
    result = trainer.fit()
    if run_id:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(sweep["tracking_uri"])
        # the best evaluation point's weights, as real training registers (issue 14)
        w, step = best_reported(result.best_checkpoints or [])
        register_toy_generator(client, run_id, sweep["model_name"], w, step=step)
        client.set_terminated(run_id, "FINISHED")


def _run_train(space: Any, trial: Any, sweep: dict[str, Any], trial_id: str) -> None:
    """Real backend: the trial's `TrainJobConfig`, a `TorchTrainer` from `build_trainer`.

    Training itself creates the MLflow run (nested under the sweep's parent through
    ``mlflow.parent_run_id``), logs curves and sample grids, and registers the generator;
    its final report carries ``mlflow_run_id`` and ``model_uri``, which the leaderboard
    reads. The Train run is named after the Tune trial, so a retried or resumed trial
    continues from its last checkpoint instead of starting over.
    """
    from mlflow.tracking import MlflowClient

    from mdir.config import validate
    from mdir.training.config import TrainJobConfig
    from mdir.training.run import build_trainer
    from mdir.tune.space import apply_params, trial_config

    data = trial_config(space, sweep["base"], trial)
    extra: dict[str, Any] = {
        "storage.path": sweep["train_storage"],
        "storage.name": f"trial-{trial_id}",
        "mlflow.run_name": f"{sweep['name']}-{trial.index:03d}",
        "mlflow.experiment": space.experiment,
        # checkpoints are kept and registered by the metric the sweep ranks trials by
        "storage.checkpoint_metric": space.metric.name,
        "storage.checkpoint_mode": space.metric.mode,
    }
    if sweep.get("parent_run_id"):
        extra["mlflow.parent_run_id"] = sweep["parent_run_id"]
        extra["mlflow.tracking_uri"] = sweep["tracking_uri"]
    else:
        extra["mlflow.enabled"] = False
    cfg = validate(TrainJobConfig, apply_params(data, extra), source=f"trial {trial.index}")
    trainer = build_trainer(cfg, extra_callbacks=[ReportMetricToTune(space.metric.name)])
    result = trainer.fit()
    run_id = (result.metrics or {}).get("mlflow_run_id")
    if run_id and sweep.get("tracking_uri"):
        client = MlflowClient(sweep["tracking_uri"])
        client.set_tag(run_id, TRIAL_TAG, trial_id)
        client.set_tag(run_id, SWEEP_TAG, sweep["name"])
        client.set_tag(run_id, LABEL_TAG, trial.label)
