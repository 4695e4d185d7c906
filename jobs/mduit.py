"""Train MDUIT on Ray Train: ``ray job submit --working-dir . -- python jobs/mduit.py
--config jobs/configs/mduit.yaml [key.sub=value ...]``.

Thin: parses ``--config`` + overrides, validates (a bad config exits with code 2 and a
message naming the field, before any worker starts), calls `mdir.training.run.train`.

Output contract (parsed by the demo): the last stdout line is
``MDIR_RESULT {"run_name": ..., "run_id": ..., "model_uri": ..., "sample_grid": ...,
"checkpoint": ..., "step": ..., "metrics": {...}, "error": null}`` — one JSON object
after the ``MDIR_RESULT `` prefix; parse it with `mdir.training.job.parse_result_line`.
``model_uri`` is ``models:/mdir-mduit-<dataset>@candidate`` (null if MLflow was down),
``sample_grid`` a PNG (source | translation | target rows) on the node of rank 0.
"""

import os
import sys

sys.path.insert(
    0, os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)  # the repo (working dir)

from mdir.training.job import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main("mduit"))
