"""`mdir bench tune`: what ASHA saves against the full grid on the same space.

Runs the space twice, side by side in one command: once with every trial trained to the
end (scheduler none = the full grid) and once with ASHA (the space's settings, or grace 1 /
reduction 2 when the space has none). Compute is counted in *trial-steps*: the training
steps every trial actually ran, summed over trials (ASHA-stopped trials count only the
steps they ran). Reports the ratio ASHA / grid and whether both found the same best
trial (and where ASHA's pick ranks in the full grid).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from mdir.bench.app import app
from mdir.bench.common import write_json

DEMO_SPACE = Path(__file__).resolve().parent.parent.parent / "tune_spaces" / "demo.yaml"


def _ensure_demo_data() -> str | None:
    """The demo space reads $MDIR_DEMO_DATA (default demo_out/synth, where `make demo` writes
    it); synthesize it into a temp dir when it is missing so the benchmark runs on a fresh
    checkout."""
    root = os.environ.get("MDIR_DEMO_DATA", "demo_out/synth")
    if "://" in root or Path(root, "manifest.json").exists():
        return None
    from mdir.data.synth import synthesize

    out = tempfile.mkdtemp(prefix="mdir-bench-tune-data-")
    synthesize(out, conditions=["day", "night"], size=32, places=6, poses_per_place=4, seed=0)
    os.environ["MDIR_DEMO_DATA"] = out
    return out


def _side(result: Any, wall_s: float) -> dict[str, Any]:
    best = result.best
    return {
        "trial_steps": result.trial_steps,
        "eval_points": sum(r.eval_points for r in result.rows),
        "trials": len(result.rows),
        "stopped_early": sum(r.status == "stopped" for r in result.rows),
        "errors": sum(r.status == "error" for r in result.rows),
        "best_trial": best.index if best else None,
        "best_label": best.label if best else None,
        "best_score": best.score if best else None,
        "wall_s": round(wall_s, 1),
        "ranking": [(r.index, r.score) for r in result.rows],
    }


@app.command("tune")
def bench_tune(
    space: Annotated[
        Path, typer.Option(help="Search space to benchmark (default: tune_spaces/demo.yaml).")
    ] = DEMO_SPACE,
    storage: Annotated[
        str | None, typer.Option(help="Where both sweeps are stored (default: a temp dir).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    out: Annotated[Path | None, typer.Option(help="Write the JSON result to this file.")] = None,
) -> None:
    """ASHA vs the full grid on one space: trial-steps spent, ratio, same best trial?"""
    from mdir.tune.runner import run_sweep
    from mdir.tune.space import SchedulerSpec, load_space

    synth = _ensure_demo_data() if space.resolve() == DEMO_SPACE else None
    sp = load_space(space)
    asha = (
        sp.scheduler
        if sp.scheduler.type == "asha"
        else SchedulerSpec(type="asha", grace_period=1, reduction_factor=2)
    )
    stamp = time.strftime("%Y%m%d-%H%M%S")
    root = storage or tempfile.mkdtemp(prefix="mdir-bench-tune-")
    results: dict[str, Any] = {}
    for label, sched in (("grid", SchedulerSpec(type="none")), ("asha", asha)):
        variant = sp.model_copy(update={"scheduler": sched, "register_champion": False})
        t0 = time.perf_counter()
        res = run_sweep(
            variant,
            space,
            name=f"{sp.name}-bench-{label}-{stamp}",
            storage_path=root,
            use_mlflow=False,
            verbose=0,
        )
        results[label] = _side(res, time.perf_counter() - t0)
        print(f"[bench tune] {label}: {results[label]['trial_steps']} trial-steps, best trial "
              f"{results[label]['best_trial']} ({results[label]['best_label']}), {results[label]['wall_s']} s")  # fmt: skip
    grid, ash = results["grid"], results["asha"]
    grid_order = [i for i, s in grid["ranking"] if s is not None]
    ratio = ash["trial_steps"] / grid["trial_steps"] if grid["trial_steps"] else None
    result = {
        "benchmark": "tune",
        "space": str(space),
        "metric": sp.metric.name,
        "asha": {k: v for k, v in ash.items() if k != "ranking"}
        | {
            "grace_period": asha.grace_period,
            "reduction_factor": asha.reduction_factor,
            "max_t": asha.max_t,
        },  # fmt: skip
        "grid": {k: v for k, v in grid.items() if k != "ranking"},
        "trial_steps_ratio_asha_over_grid": ratio,
        "compute_saved_fraction": (1 - ratio) if ratio is not None else None,
        "same_best_trial": ash["best_trial"] == grid["best_trial"]
        and grid["best_trial"] is not None,
        "asha_pick_rank_in_grid": (grid_order.index(ash["best_trial"]) + 1)
        if ash["best_trial"] in grid_order
        else None,
        "storage": root,
        "synthetic_data": synth,
    }
    print(
        f"[bench tune] ASHA spent {ash['trial_steps']} / {grid['trial_steps']} trial-steps of the full grid "
        f"= ratio {ratio if ratio is None else round(ratio, 3)}; same best trial: {result['same_best_trial']}"
    )
    write_json(result, out, as_json)
