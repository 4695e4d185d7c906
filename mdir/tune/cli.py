"""`mdir tune` commands: run a search space (or list its trials with --dry-run), validate it,
and resolve its trials' data against the datasets (`dry-run`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True)

SpaceOpt = Annotated[Path, typer.Option("--space", help="Search space YAML (tune_spaces/*.yaml).")]


def dry_run_listing(space_path: Path) -> dict:
    """Expand + validate the space; the trials it would run (nothing starts)."""
    from mdir.tune.runner import prepare
    from mdir.tune.space import load_space

    space = load_space(space_path)
    _, trials = prepare(space, space_path)
    return {
        "space": space.name,
        "backend": space.backend,
        "metric": space.metric.name,
        "mode": space.metric.mode,
        "scheduler": space.scheduler.model_dump(),
        "max_concurrent_trials": space.max_concurrent_trials,
        "count": len(trials),
        "trials": [t.model_dump() for t in trials],
    }


def run_from_cli(
    space_path: Path, name: str | None, storage: str | None, dry_run: bool, as_json: bool
) -> int:
    """Shared by `mdir tune run` and `jobs/tune.py`. Returns the exit code."""
    from mdir.config import ConfigError

    try:
        if dry_run:
            listing = dry_run_listing(space_path)
            if as_json:
                print(json.dumps(listing, default=str))
            else:
                print(
                    f"{listing['space']}: {listing['count']} trials (metric {listing['metric']}, {listing['mode']})"
                )
                for t in listing["trials"]:
                    print(f"  {t['index']:3d}  {t['label']}")
                    for k, v in t["params"].items():
                        print(f"         {k} = {v!r}")
            return 0
        from mdir.tune.runner import run_sweep
        from mdir.tune.space import load_space

        space = load_space(space_path)
        result = run_sweep(
            space,
            space_path,
            name=name,
            storage_path=storage,
            verbose=1 if sys.stdout.isatty() else 0,
        )
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print()
    print(
        f"Leaderboard of sweep {result.name} ({result.metric}, {result.mode}; {len(result.rows)} trials)"
    )
    print(result.leaderboard_markdown)
    if result.champion_uri:
        print(f"champion: {result.champion_uri}")
    print(json.dumps(result.summary(), default=str))
    return 0 if result.best is not None else 1


@app.command("run")
def run_cmd(
    space: SpaceOpt,
    name: Annotated[
        str | None,
        typer.Option(help="Sweep name (default: the space's name). Same name = resume that sweep."),
    ] = None,
    storage: Annotated[
        str | None,
        typer.Option(
            help="Storage root (local path or s3://); default from the space or ./tune_results."
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="List the trials (count and parameters); start nothing."),
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="With --dry-run: print the listing as JSON.")
    ] = False,
) -> None:
    """Run a sweep: every trial a Ray Train run, ranked by validation FID; prints the
    leaderboard, registers the best generator as `champion`; the last line is JSON."""
    raise typer.Exit(run_from_cli(space, name, storage, dry_run, as_json))


@app.command("validate")
def validate_cmd(space: SpaceOpt) -> None:
    """Check a space file and every trial config it expands to (against the training schema)."""
    raise typer.Exit(run_from_cli(space, None, None, True, False))


@app.command("dry-run")
def dry_run_cmd(
    space: SpaceOpt,
    data_root: Annotated[
        str | None,
        typer.Option(
            "--data-root",
            help="Dataset root the space's ${MDIR_DATA_ROOT} stands for (default: the environment's).",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the resolution as JSON.")] = False,
) -> None:
    """Resolve every trial's dataset, splits and domain conditions against the datasets'
    manifests (no image read, nothing trained); exit 1 if any trial could not run."""
    from dataclasses import asdict

    from mdir.config import ConfigError
    from mdir.tune.resolve import format_resolution, resolve_space

    try:
        resolved = resolve_space(space, data_root)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        raise typer.Exit(2) from None
    if as_json:
        print(json.dumps([asdict(r) for r in resolved]))
    else:
        print(format_resolution(resolved))
    raise typer.Exit(0 if all(r.ok for r in resolved) else 1)
