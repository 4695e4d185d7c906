"""Retrieval fine-tuning job for `ray job submit` (thin entrypoint; the work is in mdir.retrieval).

    ray job submit --working-dir . -- python jobs/retrieval.py --config jobs/configs/retrieval.yaml
    ray job submit --working-dir . -- python jobs/retrieval.py --compare --config jobs/configs/retrieval_demo.yaml

Prints a human-readable summary (with --compare: the baseline vs GAN table) and, as the last
line, one JSON object with the result. Exit code 2 for a bad config / missing generator alias
(before any training), 1 for a failure during training.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", required=True, help="RetrievalJobConfig YAML")
    p.add_argument(
        "--set",
        "-o",
        dest="overrides",
        action="append",
        default=[],
        help="key.sub=value override (repeatable)",
    )
    p.add_argument(
        "--compare",
        action="store_true",
        help="train with and without augment.generator, print the table",
    )
    p.add_argument(
        "--local",
        action="store_true",
        help="run in this process without Ray (one worker; debugging)",
    )
    args = p.parse_args(argv)

    from mdir.config import ConfigError
    from mdir.retrieval.experiment import run_job
    from mdir.retrieval.train import LaunchError

    try:
        doc, text = run_job(args.config, args.overrides, compare=args.compare, local=args.local)
    except (ConfigError, LaunchError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    if text:
        print(text, flush=True)
    print(json.dumps(doc, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
