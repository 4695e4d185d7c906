"""Ray job entrypoint for a Tune sweep.

    ray job submit --working-dir . -- python jobs/tune.py --space tune_spaces/demo.yaml

Same as ``mdir tune run``: re-submitting with the same ``--name`` resumes the sweep and
re-runs only unfinished trials. Prints the leaderboard; the last line is JSON with the
leaderboard and the champion's model URI.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout / working dir

from mdir.tune.cli import run_from_cli  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--space", required=True, type=Path, help="search space YAML (tune_spaces/*.yaml)"
    )
    p.add_argument(
        "--name", default=None, help="sweep name (default: the space's); same name = resume"
    )
    p.add_argument(
        "--storage", default=None, help="storage root: local path or s3:// (default ./tune_results)"
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="list the trials (count and parameters); start nothing",
    )
    p.add_argument("--json", action="store_true", help="with --dry-run: print the listing as JSON")
    a = p.parse_args(argv)
    return run_from_cli(a.space, a.name, a.storage, a.dry_run, a.json)


if __name__ == "__main__":
    sys.exit(main())
