"""`mdir` console script: one Typer app with a sub-app per area.

Each area owns its commands in its own module (``mdir/<area>/cli.py``); this file only
mounts them, so `mdir --help` stays fast (heavy imports happen inside commands).
"""

from __future__ import annotations

import typer

from mdir.bench.cli import app as bench_app
from mdir.data.cli import app as data_app
from mdir.evaluation.cli import app as eval_app
from mdir.evaluation.cli import metrics_app
from mdir.registry.cli import app as models_app
from mdir.retrieval.cli import app as retrieval_app
from mdir.training.cli import register as register_train
from mdir.translation.cli import translate_cmd
from mdir.tune.cli import app as tune_app

app = typer.Typer(
    name="mdir",
    help=(
        "Image-to-image translation GANs (MDUIT, pix2pix, CycleGAN) on Ray, tracked in MLflow.\n\n"
        "Typical flow: `mdir data synth` → `mdir train` → `mdir eval gan` → `mdir tune run` → "
        "`mdir retrieval train`."
    ),
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
# `mdir data translate` needs the registry, which `mdir.data` may not import: mounted here
data_app.command("translate")(translate_cmd)
app.add_typer(data_app, name="data", help="Create, ingest and inspect image shards.")
app.add_typer(models_app, name="models", help="Network summaries, registered models, translation.")
app.add_typer(eval_app, name="eval", help="Image-quality metrics (FID, KID, IS, PRD, SSIM).")
app.add_typer(metrics_app, name="metrics", help="Metric assets (standard FID weights import).")
app.add_typer(tune_app, name="tune", help="Ray Tune sweeps ranked by FID.")
app.add_typer(retrieval_app, name="retrieval", help="Retrieval fine-tuning and evaluation.")
app.add_typer(
    bench_app, name="bench", help="Benchmarks that print side-by-side ratios and write JSON."
)
register_train(app)


if __name__ == "__main__":  # pragma: no cover
    app()
