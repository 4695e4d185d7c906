"""`mdir train METHOD --config FILE [key=value ...]`."""

from __future__ import annotations

from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Mount `mdir train` on the root app (a command, not a group)."""

    @app.command("train")
    def train_cmd(
        method: Annotated[
            str,
            typer.Argument(
                help="A method of the table: pix2pix, cyclegan, mduit, … (must match method.name in the file)."
            ),
        ],
        config: Annotated[
            str,
            typer.Option(
                "--config", "-c", help="YAML job config, e.g. jobs/configs/mduit_demo.yaml."
            ),
        ],
        overrides: Annotated[
            list[str] | None,
            typer.Argument(
                help="Dotted overrides applied after the file: train.epochs=2 scaling.num_workers=2 ..."
            ),
        ] = None,
        address: Annotated[
            str | None,
            typer.Option(
                "--address",
                help="Ray cluster address (default: $RAY_ADDRESS, else start a local cluster).",
            ),
        ] = None,
        dry_run: Annotated[
            bool,
            typer.Option(
                "--dry-run",
                help="Validate config, data and storage and print the resource plan; start nothing.",
            ),
        ] = False,
    ) -> None:
        """Train a method with DDP on Ray Train, log to MLflow and register the generator.

        The config is validated before any worker starts (unknown keys, wrong types, a missing
        dataset, unreachable storage, too many workers/GPUs fail with the field named). The same
        storage.path + storage.name resumes an interrupted run. The last line printed is
        `MDIR_RESULT {json}` with the MLflow run id, model URI and sample grid path."""
        from mdir.training.job import run_job

        raise typer.Exit(run_job(method, config, overrides or [], address, dry=dry_run))
