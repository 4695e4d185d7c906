"""Shared body of the thin job entrypoints (`jobs/mduit.py`, `jobs/cyclegan.py`,
`jobs/pix2pix.py`) and of ``mdir train``: parse, validate, train, print one result line.

The last line a job prints on stdout is ``MDIR_RESULT <json>`` with keys ``run_name``,
``run_id`` (MLflow run id or null), ``model_uri`` (``models:/mdir-<method>-<dataset>@candidate``
or null), ``sample_grid`` (path of the final source | translation | target PNG on the
node of rank 0, also logged to MLflow under ``samples/``), ``checkpoint`` (final
checkpoint URI), ``step``, ``metrics`` and ``error`` (null on success).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from mdir.config import ConfigError

RESULT_PREFIX = "MDIR_RESULT "


def parse_args(argv: list[str] | None, method: str | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=f"Train {method or 'a method'} on Ray Train (see mdir/training).",
        epilog="Overrides: dotted keys, e.g. train.epochs=2 scaling.num_workers=2 storage.name=myrun",
    )
    p.add_argument("--config", required=True, help="YAML job config (jobs/configs/*.yaml).")
    p.add_argument(
        "--address", default=None, help="Ray address (default: $RAY_ADDRESS, else a local cluster)."
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="Validate the config, data and storage and print the resolved plan; start nothing.",
    )
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides applied after the file.")
    return p.parse_args(argv)


def result_line(summary: dict[str, Any]) -> str:
    return RESULT_PREFIX + json.dumps(summary, default=str, sort_keys=True)


def parse_result_line(text: str) -> dict[str, Any] | None:
    """The last ``MDIR_RESULT`` JSON in a job's output (for the demo / tests)."""
    for line in reversed(text.splitlines()):
        i = line.find(RESULT_PREFIX)
        if i >= 0:
            return json.loads(line[i + len(RESULT_PREFIX) :])
    return None


def dry_run(cfg: Any) -> dict[str, Any]:
    """Every pre-launch check that needs no cluster (no Ray, no torch imported), and what
    the run would ask the cluster for."""
    from mdir.training.preflight import plan_summary
    from mdir.training.run import resolve_names, validate_before_launch

    cfg = resolve_names(cfg)
    validate_before_launch(cfg, check_cluster=False)
    return {
        "valid": True,
        "method": cfg.method.name,
        "data_uri": cfg.data.uri,
        "storage": f"{cfg.storage.path.rstrip('/')}/{cfg.storage.name}",
        "resources": plan_summary(cfg),
    }


def run_job(
    method: str | None,
    config: str,
    overrides: list[str],
    address: str | None = None,
    dry: bool = False,
) -> int:
    """Load + validate (fail fast, exit 2 naming the field), train, print the result line.
    With `dry`, validate only and print the plan as JSON."""
    from mdir.training.config import load_job_config

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = None
    try:
        cfg = load_job_config(config, overrides, method=method)
        if dry:
            print(json.dumps(dry_run(cfg), sort_keys=True), flush=True)
            return 0
        from mdir.training.run import train

        result = train(cfg, address=address)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - the result line is the job's contract: always print it
        logging.getLogger("mdir.training").exception("job failed")
        name = cfg.storage.name if cfg is not None else None
        print(result_line({"run_name": name, "error": f"{type(e).__name__}: {e}"}), flush=True)
        return 1
    print(result_line(result.summary()), flush=True)
    return 0 if result.error is None else 1


def main(method: str | None, argv: list[str] | None = None) -> int:
    a = parse_args(argv, method)
    return run_job(method, a.config, a.overrides, a.address, dry=a.dry_run)
