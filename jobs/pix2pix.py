"""Train pix2pix on Ray Train: ``ray job submit --working-dir . -- python jobs/pix2pix.py
--config jobs/configs/pix2pix.yaml [key.sub=value ...]``.

Thin: parse, validate (exit 2 naming the bad field), train; the last stdout line is
``MDIR_RESULT <json>`` (format: see jobs/mduit.py and `mdir.training.job`).
"""

import os
import sys

sys.path.insert(
    0, os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)  # the repo (working dir)

from mdir.training.job import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main("pix2pix"))
