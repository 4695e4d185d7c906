"""Run a sweep: space → validated trials → Ray Tune → leaderboard → champion.

`run_sweep` is what ``jobs/tune.py`` and ``mdir tune run`` call. The sweep lives at
``<storage_path>/<name>`` (Tune's experiment directory): re-running the same command with
the same name after the driver died restores it with ``Tuner.restore`` and re-runs only
the trials that had not finished (an interrupted trial resumes from its last Train
checkpoint, since its Train run has a stable name under ``<sweep>/train``). The MLflow
parent run id is kept next to it in ``mdir_sweep.json`` so the resumed sweep keeps
adding child runs to the same parent.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mdir.config import ConfigError
from mdir.registry.aliases import newest_version_of_run, set_champion
from mdir.registry.uri import parse_model_uri
from mdir.tune.leaderboard import Row, best_point, metric_variants, sort_rows, to_csv, to_markdown
from mdir.tune.space import TuneSpace, base_dict, expand, validate_trials
from mdir.tune.trainable import LABEL_TAG, SWEEP_TAG, TRIAL_TAG, completed_trials, trial_fn

STATE_FILE = "mdir_sweep.json"

log = logging.getLogger("mdir.tune")


@dataclass
class SweepResult:
    """What a finished (or resumed-and-finished) sweep produced."""

    name: str
    path: str
    metric: str
    mode: str
    rows: list[Row]
    parent_run_id: str | None = None
    champion_uri: str | None = None
    leaderboard_markdown: str = ""
    leaderboard_csv: str | None = None
    resumed: bool = False
    trial_steps: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def best(self) -> Row | None:
        return self.rows[0] if self.rows and self.rows[0].score is not None else None

    def summary(self) -> dict[str, Any]:
        """The JSON the job prints as its last line."""
        return {
            "sweep": self.name,
            "path": self.path,
            "metric": self.metric,
            "mode": self.mode,
            "resumed": self.resumed,
            "parent_run_id": self.parent_run_id,
            "champion_uri": self.champion_uri,
            "best_trial": self.best.label if self.best else None,
            "best_score": self.best.score if self.best else None,
            "trial_steps": self.trial_steps,
            "leaderboard_csv": self.leaderboard_csv,
            "leaderboard": [
                {
                    "rank": i + 1,
                    "trial": r.index,
                    "label": r.label,
                    self.metric: r.score,
                    **r.metrics,
                    "status": r.status,
                    "eval_points": r.eval_points,
                    "steps": r.steps,
                    "best_step": r.best_step,
                    "run_id": r.run_id,
                    "model_uri": r.model_uri,
                }
                for i, r in enumerate(self.rows)
            ],
        }


def default_storage() -> str:
    return os.environ.get("MDIR_TUNE_STORAGE") or str(Path("tune_results").absolute())


def prepare(space: TuneSpace, space_path: str | Path | None) -> tuple[dict[str, Any], list[Any]]:
    """Expand and validate (fail fast, before Ray or MLflow are touched)."""
    base = base_dict(space, space_path)
    trials = expand(space, base)
    if not trials:
        raise ConfigError(f"space {space.name!r} expands to no trials")
    validate_trials(space, base, trials)
    return base, trials


def absolutize_paths(base: dict[str, Any], trials: list[Any]) -> tuple[dict[str, Any], list[Any]]:
    """Relative local ``data.uri`` → absolute: trial actors and Train workers do not run
    in the driver's working directory."""
    from mdir.tune.space import apply_params, get_dotted

    def fix(v: Any) -> Any:
        if isinstance(v, str) and "://" not in v and not os.path.isabs(v):
            return os.path.abspath(v)
        return v

    uri = get_dotted(base, "data.uri")
    if uri is not None:
        base = apply_params(base, {"data.uri": fix(uri)})
    out = []
    for t in trials:
        if "data.uri" in t.params:
            t = t.model_copy(update={"params": {**t.params, "data.uri": fix(t.params["data.uri"])}})
        out.append(t)
    return base, out


def check_before_launch(
    space: TuneSpace, base: dict[str, Any], trials: list[Any], train_storage: str
) -> None:
    """Training's own fail-fast checks (dataset reachable, method buildable, the cluster can
    hold one trial) once per distinct data/method/scaling, before any trial starts."""
    if space.backend != "train":
        return
    from mdir.training.run import validate_before_launch

    seen: set[str] = set()
    for cfg in validate_trials(space, base, trials):
        key = json.dumps(
            [cfg.data.model_dump(mode="json"), cfg.method.name, cfg.scaling.model_dump(mode="json")]
        )
        if key in seen:
            continue
        seen.add(key)
        cfg = cfg.model_copy(
            update={"storage": cfg.storage.model_copy(update={"path": train_storage})}
        )
        try:
            validate_before_launch(cfg)
        except ConfigError as e:
            raise ConfigError(f"space {space.name!r}: {e}") from None


def _ensure_ray() -> None:
    """Connect to the cluster (RAY_ADDRESS, or the job's) unless already connected; trial
    actors and Train workers get the forwarded variables through the driver's runtime_env
    (`mdir.runtime.connect`)."""
    from mdir.runtime import connect

    connect(local="head", log_to_driver=True)


def _is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def _read_state(path: str) -> dict[str, Any]:
    import fsspec

    fs, p = fsspec.core.url_to_fs(f"{path}/{STATE_FILE}")
    if not fs.exists(p):
        return {}
    with fs.open(p, "r") as f:
        return json.load(f)


def _write_state(path: str, state: dict[str, Any]) -> None:
    import fsspec

    fs, p = fsspec.core.url_to_fs(f"{path}/{STATE_FILE}")
    fs.makedirs(p.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(p, "w") as f:
        json.dump(state, f, indent=2)


def _parent_run(
    space: TuneSpace, name: str, state: dict[str, Any], n_trials: int, tracking_uri: str
) -> str:
    """The sweep's parent MLflow run (reused when resuming)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    if state.get("parent_run_id"):
        try:
            run = client.get_run(state["parent_run_id"])
            if run.info.lifecycle_stage == "active":
                client.update_run(run.info.run_id, status="RUNNING")
                return run.info.run_id
        except Exception:  # noqa: BLE001 - a vanished parent: start a new one
            pass
    exp = client.get_experiment_by_name(space.experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(space.experiment)
    run = client.create_run(
        exp_id, run_name=name, tags={SWEEP_TAG: name, "mdir.kind": "tune-sweep"}
    )
    rid = run.info.run_id
    params = {
        "space": space.name,
        "backend": space.backend,
        "base_config": space.base_config,
        "trials": n_trials,
        "metric": space.metric.name,
        "mode": space.metric.mode,
        "scheduler": space.scheduler.type,
        "max_concurrent_trials": space.max_concurrent_trials,
    }
    if space.scheduler.type == "asha":
        params.update(
            asha_grace_period=space.scheduler.grace_period,
            asha_reduction_factor=space.scheduler.reduction_factor,
            asha_max_t=space.scheduler.max_t,
        )
    for k, v in params.items():
        client.log_param(rid, k, v)
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "space.yaml"
        p.write_text(yaml.safe_dump(space.model_dump(mode="json"), sort_keys=False))
        client.log_artifact(rid, str(p))
    return rid


def run_sweep(
    space: TuneSpace,
    space_path: str | Path | None = None,
    *,
    name: str | None = None,
    storage_path: str | None = None,
    tracking_uri: str | None = None,
    use_mlflow: bool = True,
    verbose: int = 1,
) -> SweepResult:
    """Run (or resume) the sweep and return its leaderboard and champion.

    Resume: when ``<storage_path>/<name>`` holds a Tune experiment, it is restored and only
    unfinished (and errored) trials run again.
    """
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    base, trials = prepare(space, space_path)
    base, trials = absolutize_paths(base, trials)
    name = name or space.name
    storage = storage_path or space.storage_path or default_storage()
    if _is_local(storage):
        storage = str(Path(storage.removeprefix("file://")).absolute())
        Path(storage).mkdir(parents=True, exist_ok=True)
    path = f"{storage.rstrip('/')}/{name}"
    tracking_uri = (tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")) if use_mlflow else None

    _ensure_ray()
    check_before_launch(space, base, trials, f"{path}/train")
    state = _read_state(path)
    parent_run_id = (
        _parent_run(space, name, state, len(trials), tracking_uri) if tracking_uri else None
    )
    _write_state(path, {**state, "name": name, "space": space.name, "parent_run_id": parent_run_id})
    model_name = f"mdir-toy-{name}" if space.backend == "toy" else None

    sweep = {
        "name": name,
        "path": path,
        "space": space.model_dump(mode="json"),
        "base": base,
        "parent_run_id": parent_run_id,
        "tracking_uri": tracking_uri,
        "train_storage": f"{path}/train",
        "marker_root": str(Path(path.removeprefix("file://")) / "toy_markers")
        if _is_local(path)
        else None,
        "model_name": model_name,
    }
    trainable = tune.with_resources(trial_fn, {"cpu": space.resources_per_trial.driver_cpus})
    sched = space.scheduler
    scheduler = (
        ASHAScheduler(
            time_attr="training_iteration",
            max_t=sched.max_t,
            grace_period=sched.grace_period,
            reduction_factor=sched.reduction_factor,
        )
        if sched.type == "asha"
        else FIFOScheduler()
    )
    # A trial that ends without ever reporting the metric (e.g. its evaluation failed) must
    # rank last, not abort the sweep: Tune's strict check raises in the driver otherwise.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    resumed = tune.Tuner.can_restore(path)
    if resumed:
        tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={
                "trial": tune.grid_search([t.model_dump() for t in trials]),
                "sweep": sweep,
            },
            tune_config=tune.TuneConfig(
                metric=space.metric.name,
                mode=space.metric.mode,
                scheduler=scheduler,
                num_samples=1,  # the space is expanded by us (see mdir.tune.space)
                max_concurrent_trials=space.max_concurrent_trials,
                reuse_actors=False,  # a finished trial's actor exits: memory and devices are freed
                trial_dirname_creator=_trial_dirname,
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=storage,
                failure_config=tune.FailureConfig(max_failures=space.max_failures, fail_fast=False),
                verbose=verbose,
            ),
        )
    grid = tuner.fit()
    rows = collect_rows(grid, space, tracking_uri, parent_run_id, completed_trials(path), name)
    if tracking_uri:
        _close_stopped_runs(tracking_uri, rows)
    rows = sort_rows(rows, space.metric.mode)
    result = SweepResult(
        name=name,
        path=path,
        metric=space.metric.name,
        mode=space.metric.mode,
        rows=rows,
        parent_run_id=parent_run_id,
        resumed=resumed,
        trial_steps=sum(r.steps for r in rows),
        errors=[f"{r.label}: {r.error}" for r in rows if r.error],
    )
    result.leaderboard_markdown = to_markdown(rows, space.metric.name)
    csv_text = to_csv(rows, space.metric.name)
    if _is_local(path):
        Path(path, "leaderboard.md").write_text(result.leaderboard_markdown)
        Path(path, "leaderboard.csv").write_text(csv_text)
        result.leaderboard_csv = str(Path(path, "leaderboard.csv"))
    if tracking_uri and parent_run_id:
        result.champion_uri = _finish_parent(space, result, csv_text, tracking_uri)
    return result


def _trial_dirname(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


def collect_rows(
    grid: Any,
    space: TuneSpace,
    tracking_uri: str | None,
    parent_run_id: str | None,
    completed: set[str],
    name: str = "",
) -> list[Row]:
    """One leaderboard row per Tune result (best evaluation point of each trial)."""
    from mdir.tune.space import Trial

    runs = _child_runs(tracking_uri, parent_run_id) if tracking_uri and parent_run_id else {}
    metric, mode = space.metric.name, space.metric.mode
    rows = []
    for res in grid:
        trial = Trial.model_validate(res.config["trial"])
        df = res.metrics_dataframe
        history = df.to_dict("records") if df is not None else []
        trial_id = (res.metrics or {}).get("trial_id") or Path(res.path).name.removeprefix("trial_")
        best = best_point(history, metric, mode)
        shown = {}
        if best is not None:
            for m in ("kid", "kid_std", "prd_f8", "prd_f1_8"):
                for key in metric_variants(m, metric):
                    if _finite(best.get(key)):
                        shown[m] = float(best[key])
                        break
        if res.error is not None:
            status = "error"
        elif best is None:
            status = "no-metric"
        elif trial_id in completed or any(_is_final(h) for h in history):
            status = "finished"
        else:
            status = "stopped"
        steps = max(
            (int(h["step"]) for h in history if _finite(h.get("step"))), default=len(history)
        )
        run_id, model_uri = (
            runs.get(trial_id) or runs.get(f"{name}-{trial.index:03d}") or (None, None)
        )
        reported = [h for h in history if isinstance(h.get("mlflow_run_id"), str)]
        if reported:  # the training job's final report names its run
            run_id = reported[-1]["mlflow_run_id"]
            if model_uri is None and tracking_uri:
                model_uri = _version_uri(tracking_uri, run_id)
        rows.append(
            Row(
                trial_id=trial_id,
                index=trial.index,
                label=trial.label,
                status=status,
                score=float(best[metric]) if best is not None else None,
                metrics=shown,
                eval_points=len(history),
                steps=steps,
                run_id=run_id,
                model_uri=model_uri,
                params=trial.params,
                error=(str(res.error).strip().splitlines() or [""])[-1][:300]
                if res.error is not None
                else None,
                best_step=int(best["step"])
                if best is not None and _finite(best.get("step"))
                else None,
            )
        )
    return rows


def _is_final(row: dict[str, Any]) -> bool:
    """Training's last report names its MLflow run (ASHA may stop a trial right after it,
    at max_t, before the trial function returns)."""
    return isinstance(row.get("mlflow_run_id"), str) or isinstance(row.get("model_uri"), str)


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _version_uri(tracking_uri: str, run_id: str) -> str | None:
    """``models:/<name>/<version>`` of the newest version registered from `run_id` (an
    alias like @candidate moves with later trials; the version does not)."""
    from mlflow.tracking import MlflowClient

    return newest_version_of_run(MlflowClient(tracking_uri), run_id)


def _child_runs(tracking_uri: str, parent_run_id: str) -> dict[str, tuple[str, str | None]]:
    """trial id and run name → (child run id, latest registered model URI of that run).

    Trials stopped by ASHA never finish their MLflow run: they are closed here as KILLED
    (tag ``mdir.tune.stopped_early``), so the UI does not show them running forever."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    parent = client.get_run(parent_run_id)
    out: dict[str, tuple[str, str | None]] = {}
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
        max_results=1000,
    )
    for run in children:
        entry = (run.info.run_id, _version_uri(tracking_uri, run.info.run_id))
        if run.data.tags.get(TRIAL_TAG):
            out[run.data.tags[TRIAL_TAG]] = entry
        if run.info.run_name and run.info.run_name not in out:
            out[run.info.run_name] = entry
    return out


def _close_stopped_runs(tracking_uri: str, rows: list[Row]) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    for r in rows:
        if r.run_id and r.status in ("stopped", "error"):
            try:
                if client.get_run(r.run_id).info.status == "RUNNING":
                    client.set_tag(
                        r.run_id, "mdir.tune.stopped_early", str(r.status == "stopped").lower()
                    )
                    client.set_terminated(r.run_id, "KILLED" if r.status == "stopped" else "FAILED")
            except Exception:  # noqa: BLE001 - cosmetic; never fail the sweep over it
                pass


def _finish_parent(
    space: TuneSpace, result: SweepResult, csv_text: str, tracking_uri: str
) -> str | None:
    """Log the leaderboard to the parent run, set the champion alias, close the run."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    rid = result.parent_run_id
    assert rid is not None
    with tempfile.TemporaryDirectory() as d:
        Path(d, "leaderboard.md").write_text(result.leaderboard_markdown)
        Path(d, "leaderboard.csv").write_text(csv_text)
        Path(d, "leaderboard.json").write_text(json.dumps(result.summary(), indent=2, default=str))
        client.log_artifacts(rid, d, artifact_path="leaderboard")
    best = result.best
    n_err = sum(r.status == "error" for r in result.rows)
    client.log_metric(rid, "trials_error", n_err)
    client.log_metric(rid, "trials_stopped_early", sum(r.status == "stopped" for r in result.rows))
    client.log_metric(rid, "trial_steps", result.trial_steps)
    champion = None
    if best is not None:
        client.log_metric(rid, f"best_{space.metric.name}", best.score)  # type: ignore[arg-type]
        client.set_tag(rid, "mdir.tune.best_trial", best.label)
        client.set_tag(rid, "mdir.tune.best_run_id", best.run_id or "")
        # The champion must be a model that exists: a trial ASHA stopped early never ran to
        # its end and registered nothing, so crown the best-ranked trial with a generator.
        crowned = next((r for r in result.rows if r.score is not None and r.model_uri), None)
        if space.register_champion and crowned is not None:
            champion = set_champion(client, crowned.model_uri, sweep=result.name)
            client.set_tag(rid, "mdir.tune.champion_uri", champion)
            client.set_tag(rid, "mdir.tune.champion_trial", crowned.label)
            _check_champion_step(client, crowned, rid)
            if crowned is not best:
                log.warning(
                    "best-ranked trial %s has no registered generator (status %s); "
                    "champion is %s, the best trial that has one",
                    best.label,
                    best.status,
                    crowned.label,
                )
    client.set_terminated(rid, "FINISHED" if best is not None else "FAILED")
    return champion


def _check_champion_step(client: Any, row: Row, parent_run_id: str) -> None:
    """Record which step the champion's weights come from, and say so loudly when it is not
    the evaluation point that ranked the trial (e.g. a model registered by an older mdir,
    or the best checkpoint was lost before registration)."""
    ref = parse_model_uri(str(row.model_uri))
    try:
        step = client.get_model_version(ref.name, ref.version).tags.get("mdir.checkpoint_step")
    except Exception:  # noqa: BLE001 - informative only
        return
    client.set_tag(parent_run_id, "mdir.tune.champion_step", str(step))
    if row.best_step is not None and step != str(row.best_step):
        log.warning(
            "champion %s holds the weights of step %s, but trial %s scored best at step %s",
            row.model_uri,
            step,
            row.label,
            row.best_step,
        )


__all__ = ["SweepResult", "run_sweep", "prepare", "set_champion", "collect_rows", "LABEL_TAG"]
