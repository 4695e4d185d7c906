"""`ray job submit --working-dir . -- python jobs/evaluate.py --model models:/NAME@ALIAS
--data URI --source day --target night [--json]`: GAN evaluation as a Ray job.

Thin entrypoint: the arguments are those of `mdir eval` (see `mdir eval gan --help`).
With `--num-workers N` the Inception features are extracted by N Ray actors of the cluster
the job runs on.
"""

from __future__ import annotations

from mdir.evaluation.cli import app

if __name__ == "__main__":
    app(prog_name="evaluate.py")
