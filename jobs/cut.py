"""Train CUT / FastCUT on Ray Train: ``ray job submit --working-dir . -- python jobs/cut.py
--config jobs/configs/cut.yaml [key.sub=value ...]`` (FastCUT: ``method.variant=fastcut``).

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
    sys.exit(main("cut"))
