"""Ray Tune sweeps ranked by FID (issue 7).

Modules (one idea each):

- `mdir.tune.space` — the ``tune_spaces/*.yaml`` language (`TuneSpace`: base config +
  fixed overrides + labelled cases + parameters with ``grid`` / ``choice`` / ``uniform`` /
  ``loguniform`` / ``randint`` and ``when`` conditions; metric, scheduler none/ASHA,
  concurrency, resources, num_samples), `load_space`, `expand` → concrete `Trial`s,
  `validate_trials` against `mdir.training.config.TrainJobConfig`.
- `mdir.tune.trainable` — `trial_fn`, the Tune function trainable that builds one
  `TorchTrainer` per trial (``mdir.training.run.build_trainer``; Train V2), and
  `ReportMetricToTune`, the Train callback that forwards evaluation reports to Tune.
- `mdir.tune.runner` — `run_sweep(space, ...) -> SweepResult`: Tuner / Tuner.restore
  (resume by name), FailureConfig retries, MLflow parent + child runs, leaderboard,
  `set_champion` (alias ``champion`` on the best trial's registered generator).
- `mdir.tune.leaderboard` — rows sorted by the metric with KID and PRD F₈ / F₁/₈;
  markdown and CSV.
- `mdir.tune.toy` — a tiny real-TorchTrainer stand-in (backend ``toy``) for tests and
  the sweep-machinery benchmark.

Entry points: ``mdir tune run --space S [--dry-run [--json]] [--name N]``,
``python jobs/tune.py --space S`` (for ``ray job submit``), ``mdir bench tune``.
"""
