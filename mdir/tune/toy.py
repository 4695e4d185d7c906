"""A tiny stand-in trial for testing and benchmarking the sweep machinery.

It is a real `TorchTrainer` run (gloo DDP over the requested workers) that fits a vector
``w`` to a target by SGD, and reports at each evaluation point a fake "FID"
(``100·‖w − target‖²``) plus KID / PRD-like keys, with a checkpoint, so that ASHA,
retries, resume, MLflow child runs and the champion alias are exercised exactly as with
the real training job — in seconds instead of minutes. Keys it reads (all optional):

``toy.lr`` SGD step, ``toy.target`` optimum, ``toy.evals`` evaluation points,
``toy.steps_per_eval`` steps between them, ``toy.fail`` raise at that evaluation point
(-1: in the trial itself, before the TorchTrainer starts), ``toy.fail_mode`` "always" on
every attempt or "once" only on the first, ``toy.sleep`` seconds per evaluation point,
``toy.keep`` checkpoints kept (0 = all). As in real training, Ray keeps the best-scored
checkpoints and the one registered is the best evaluation point's (`best_reported`).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from mdir.training.checkpoint import SCORE_KEY
from mdir.training.selection import best_point, score

TOY_KEYS = {
    "lr": 0.1,
    "target": 1.0,
    "evals": 4,
    "steps_per_eval": 5,
    "fail": None,
    "fail_mode": "always",
    "sleep": 0.0,
    "keep": 0,
}


def toy_settings(cfg: dict[str, Any]) -> dict[str, Any]:
    """Defaults + the trial's ``toy.*`` keys; an unknown key is an error (like the real schema)."""
    given = cfg.get("toy", {}) or {}
    unknown = set(given) - set(TOY_KEYS)
    if unknown:
        raise ValueError(f"toy: unknown keys {sorted(unknown)}; known: {sorted(TOY_KEYS)}")
    extra = set(cfg) - {"toy"}
    if extra:
        raise ValueError(f"toy backend reads only toy.* keys; got {sorted(extra)}")
    return {**TOY_KEYS, **given}


def toy_train_loop(config: dict[str, Any]) -> None:
    """Per-worker loop (Ray Train V2). ``config``: toy settings + ``marker_dir`` + ``mlflow``."""
    import ray.train
    import torch.distributed as dist

    s = config["toy"]
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    w = torch.zeros(4)
    start_eval = 0
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = torch.load(Path(d) / "state.pt", weights_only=True)
        w, start_eval = state["w"], int(state["eval"])
    target = torch.full((4,), float(s["target"]))
    marker = Path(config["marker_dir"])
    for ev in range(start_eval, int(s["evals"])):
        if s["fail"] is not None and ev == int(s["fail"]):
            first = not (marker / "failed_once").exists()
            if s["fail_mode"] == "always" or first:
                if rank == 0:
                    (marker / "failed_once").touch()
                raise RuntimeError(f"toy trial asked to fail at evaluation point {ev}")
        for _ in range(int(s["steps_per_eval"])):
            grad = 2 * (w - target)
            if dist.is_available() and dist.is_initialized():
                dist.all_reduce(grad)
                grad /= dist.get_world_size()
            w = w - float(s["lr"]) * grad
        if s["sleep"]:
            time.sleep(float(s["sleep"]))
        err = float(((w - target) ** 2).sum())
        step = (ev + 1) * int(s["steps_per_eval"])
        sel = config.get("select") or {"metric": "fid", "mode": "min"}
        metrics = {
            sel["metric"]: 100.0 * err,  # the fake FID, under the name the sweep ranks by
            "kid": err,
            "prd_f8": 1.0 / (1.0 + err),
            "prd_f1_8": 1.0 / (1.0 + 2 * err),
            "step": step,
            "eval_point": ev + 1,
        }
        metrics[SCORE_KEY] = score(
            {f"eval/{k}": v for k, v in metrics.items()}, sel["metric"], sel["mode"]
        )
        if rank == 0:
            _log_toy_mlflow(config.get("mlflow"), metrics, step)
            with tempfile.TemporaryDirectory() as d:
                torch.save({"w": w, "eval": ev + 1}, Path(d) / "state.pt")
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        else:
            ray.train.report(metrics)
    if rank == 0:
        with open(marker / f"finished_{os.getpid()}", "w") as f:
            json.dump({"w": w.tolist()}, f)


def _log_toy_mlflow(info: dict[str, Any] | None, metrics: dict[str, float], step: int) -> None:
    if not info:
        return
    from mlflow.tracking import MlflowClient

    client = MlflowClient(info["tracking_uri"])
    for k, v in metrics.items():
        client.log_metric(info["run_id"], k, float(v), step=step)


def best_reported(best_checkpoints: list[tuple[Any, dict[str, Any]]]) -> tuple[list[float], int]:
    """(w, step) of the best-scored checkpoint Ray kept (``Result.best_checkpoints``)."""
    pts = [
        (int(m["step"]), float(m[SCORE_KEY]), ck)
        for ck, m in best_checkpoints
        if SCORE_KEY in m and "step" in m
    ]
    best = best_point(pts)
    if best is None:
        raise RuntimeError("toy trial: no scored checkpoint to register")
    with best[2].as_directory() as d:
        w = torch.load(Path(d) / "state.pt", weights_only=True)["w"]
    return [float(x) for x in w], best[0]


def register_toy_generator(
    client: Any, run_id: str, model_name: str, w: list[float], step: int | None = None
) -> str:
    """Log the toy 'generator' (a safetensors file) and register it (tagged with the step
    its weights come from); returns the version."""
    from mlflow.exceptions import MlflowException
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "generator.safetensors"
        save_file({"w": torch.tensor(w)}, str(p))
        client.log_artifact(run_id, str(p), artifact_path="generator")
    with contextlib.suppress(MlflowException):  # exists already
        client.create_registered_model(model_name)
    mv = client.create_model_version(model_name, source=f"runs:/{run_id}/generator", run_id=run_id)
    client.set_registered_model_alias(model_name, "candidate", mv.version)
    if step is not None:
        from mdir.registry.aliases import set_version_tag

        set_version_tag(client, model_name, mv.version, "mdir.checkpoint_step", str(step))
        client.set_tag(run_id, "mdir.registered_step", str(step))
    return str(mv.version)
