"""``mdir data translate``: a registered generator over a whole dataset (see
`mdir.translation.dataset`). Mounted on the ``mdir data`` app by `mdir.cli`, because
`mdir.data` may not import the registry."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer


def _fail(msg: str) -> None:
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def translate_cmd(
    src: Annotated[str, typer.Argument(help="Source dataset root (local path or s3://).")],
    out: Annotated[str, typer.Argument(help="Output dataset root (local path or s3://).")],
    model: Annotated[
        str,
        typer.Option("--model", "-m", help="Registered generator, e.g. models:/NAME@ALIAS."),
    ],
    to: Annotated[
        str,
        typer.Option(
            "--to",
            help="Target condition: written as `condition` of every translated row (and the "
            "condition MDUIT's reference image is drawn from).",
        ),
    ],
    conditions: Annotated[
        list[str],
        typer.Option(
            "--conditions",
            help="Source conditions to translate (repeat or comma-separate); default: every "
            "condition except --to.",
        ),
    ] = [],  # noqa: B006  (typer reads the default; never mutated)
    num_gpus: Annotated[
        int | None,
        typer.Option(
            "--num-gpus",
            help="GPU actors (one GPU each); default: every GPU of the cluster, CPU actors "
            "when it has none; 0 forces CPU.",
        ),
    ] = None,
    actors: Annotated[int, typer.Option("--actors", min=1, help="CPU actors (no GPUs).")] = 2,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Rows per batch.")] = 8,
    rows_per_shard: Annotated[
        int, typer.Option("--rows-per-shard", min=1, help="Rows per output shard.")
    ] = 256,
    reference: Annotated[
        Path | None,
        typer.Option(
            "--reference",
            help="Reference image for MDUIT (default: the source's lowest-id --to row).",
        ),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON summary.")] = False,
) -> None:
    """Translate a dataset with a registered generator on Ray Data (an actor pool, one
    model load per actor) into OUT, a dataset in the same schema: `condition` = --to,
    `source` = translated:<source id>, the model's name and version in the manifest.
    Re-running resumes an interrupted run without duplicates; bad rows are counted."""
    from mdir.data.io import DataPathError
    from mdir.registry.uri import ModelNotFoundError
    from mdir.translation.dataset import translate_dataset

    if json_out:  # stdout carries one JSON object: no MLflow download bars beside it
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    conds = [c.strip() for item in conditions for c in item.split(",") if c.strip()]
    ref = None
    if reference is not None:
        if not reference.is_file():
            _fail(f"--reference: {reference} is not a file")
        ref = reference.read_bytes()

    def progress(done: int, total: int) -> None:
        if not json_out:
            print(f"\r{done}/{total} rows translated", end="", file=sys.stderr, flush=True)

    try:
        res = translate_dataset(
            src, out, model, to=to, conditions=conds, num_gpus=num_gpus, actors=actors,
            batch_size=batch_size, rows_per_shard=rows_per_shard, reference=ref,
            progress=progress,
        )  # fmt: skip
    except (ValueError, KeyError, DataPathError, ModelNotFoundError) as e:
        _fail(str(e).strip("'\""))
    if not json_out:
        print(file=sys.stderr)
    tr = res.manifest.extra["translation"]
    doc = {
        "out": res.manifest.uri,
        "rows": res.translated,
        "skipped": res.skipped,
        "shards_written": res.shards_written,
        "shards_reused": res.shards_reused,
        "actors": res.actors,
        "device": res.device,
        "seconds": round(res.seconds, 2),
        "model": f"{tr['model_name']} v{tr['model_version']}",
        "to": tr["to"],
        "source_conditions": tr["source_conditions"],
    }
    if json_out:
        typer.echo(json.dumps(doc))
        return
    skipped = ", ".join(f"{k}={v}" for k, v in res.skipped.items()) or "none"
    typer.echo(
        f"{res.translated} rows {','.join(doc['source_conditions'])} → {to} with "
        f"{doc['model']} in {res.manifest.uri} ({res.shards_written} shards written, "
        f"{res.shards_reused} reused; {res.actors} {res.device} actors; {doc['seconds']} s); "
        f"skipped: {skipped}"
    )
