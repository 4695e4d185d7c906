"""Search-space language, expansion, shipped spaces, leaderboard (no Ray, fast)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from mdir.config import ConfigError
from mdir.tune.leaderboard import Row, best_point, metric_variants, sort_rows, to_csv, to_markdown
from mdir.tune.space import expand, load_space, parse_space, trial_config, validate_trials
from mdir.tune.trainable import normalize_report

ROOT = Path(__file__).resolve().parent.parent
SPACES = ROOT / "tune_spaces"


def toy(text: str):
    return parse_space("name: t\nbackend: toy\n" + text)


def test_grid_is_cartesian_product_times_samples():
    s = toy(
        """
parameters:
  toy.lr: {grid: [0.1, 0.2, 0.3]}
  toy.target: {grid: [1, 2]}
  toy.sleep: {uniform: [0.0, 1.0]}
num_samples: 2
"""
    )
    trials = expand(s)
    assert len(trials) == 3 * 2 * 2
    assert [t.index for t in trials] == list(range(12))
    combos = {(t.params["toy.lr"], t.params["toy.target"]) for t in trials}
    assert len(combos) == 6
    draws = [t.params["toy.sleep"] for t in trials]
    assert all(0.0 <= d < 1.0 for d in draws) and len(set(draws)) == 12
    assert expand(s) == trials  # deterministic (resume relies on it)


def test_distributions_stay_in_bounds():
    s = toy(
        """
parameters:
  toy.lr: {loguniform: [1.0e-4, 1.0e-2]}
  toy.evals: {randint: [2, 5]}
  toy.fail_mode: {choice: [once, always]}
num_samples: 200
seed: 3
"""
    )
    trials = expand(s)
    lrs = [t.params["toy.lr"] for t in trials]
    assert min(lrs) >= 1e-4 and max(lrs) < 1e-2
    # log-uniform: about half the draws below the geometric mean 1e-3
    below = sum(lr < 1e-3 for lr in lrs) / len(lrs)
    assert 0.35 < below < 0.65
    assert {t.params["toy.evals"] for t in trials} == {2, 3, 4}
    assert {t.params["toy.fail_mode"] for t in trials} == {"once", "always"}


def test_conditional_keys_only_where_they_apply_and_no_duplicates():
    s = parse_space(
        """
name: cond
backend: toy
cases:
  - {label: p2p, set: {method.name: pix2pix}}
  - {label: mduit, set: {method.name: mduit}}
parameters:
  method.dropout: {grid: [false, true], when: {method.name: [pix2pix, cyclegan]}}
  method.loss_weight_norm: {grid: [false, true]}
  method.beta_nce: {uniform: [0.5, 2.0], when: {method.name: [mduit]}}
"""
    )
    trials = expand(s)
    p2p = [t for t in trials if t.params["method.name"] == "pix2pix"]
    md = [t for t in trials if t.params["method.name"] == "mduit"]
    assert len(p2p) == 4 and len(md) == 2  # dropout not expanded where it does not apply
    assert all("method.dropout" in t.params and "method.beta_nce" not in t.params for t in p2p)
    assert all("method.dropout" not in t.params and "method.beta_nce" in t.params for t in md)
    assert trials[0].label.startswith("p2p")


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("parameters:\n  toy.lr: {grid: []}\n", "parameters.toy.lr"),
        ("parameters:\n  toy.lr: {uniform: [1.0, 0.5]}\n", "parameters.toy.lr"),
        ("parameters:\n  toy.lr: {loguniform: [0.0, 1.0]}\n", "parameters.toy.lr"),
        ("parameters:\n  toy.lr: {grid: [1], choice: [2]}\n", "parameters.toy.lr"),
        ("parameters:\n  toy.lr: {normal: [0, 1]}\n", "parameters.toy.lr.normal"),
        ("scheduler: {type: hyperband}\n", "scheduler.type"),
        ("scheduler: {type: asha, reduction_factor: 1}\n", "scheduler.reduction_factor"),
        ("metric: {name: fid, mode: lowest}\n", "metric.mode"),
        ("max_concurrent_trials: 0\n", "max_concurrent_trials"),
        ("resources_per_trial: {num_workers: 0}\n", "resources_per_trial.num_workers"),
        ("num_sample: 3\n", "num_sample"),
    ],
)
def test_bad_space_error_names_the_field(text: str, field: str):
    with pytest.raises(ConfigError) as e:
        toy(text)
    assert any(line.strip().startswith(field + ":") for line in str(e.value).splitlines()), str(
        e.value
    )


def test_bad_yaml_and_bad_keys_are_named(tmp_path: Path):
    p = tmp_path / "broken.yaml"
    p.write_text("name: x\nparameters: {a: [1, 2\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_space(p)
    with pytest.raises(ConfigError, match="'method..lr' is not a dotted config key"):
        toy("parameters:\n  method..lr: {grid: [1]}\n")
    with pytest.raises(ConfigError, match="  name: .*letters, digits"):
        parse_space("name: a b\nbackend: toy\n")
    with pytest.raises(ConfigError, match="environment variable MDIR_NOT_SET_X"):
        toy("overrides: {data.uri: '${MDIR_NOT_SET_X}'}\n")


def test_env_default_expansion(monkeypatch: pytest.MonkeyPatch):
    s = toy("overrides: {toy.target: '${MDIR_T_TEST:-7}'}\n")
    assert s.overrides["toy.target"] == "7"
    monkeypatch.setenv("MDIR_T_TEST", "9")
    assert toy("overrides: {toy.target: '${MDIR_T_TEST:-7}'}\n").overrides["toy.target"] == "9"


@pytest.fixture(autouse=True)
def _weights_present(tmp_path, monkeypatch):
    """The shipped spaces rank by fid_legacy, which needs the standard weights before launch:
    a placeholder file stands for them here (validation only looks for the file)."""
    f = tmp_path / "inception-2015-12-05.safetensors"
    f.write_bytes(b"placeholder")
    monkeypatch.setenv("MDIR_INCEPTION_WEIGHTS", str(f))


def test_space_ranked_by_standard_fid_needs_weights_and_matching_protocol(monkeypatch):
    from mdir.tune.space import base_dict

    space = load_space(SPACES / "demo.yaml")
    base = base_dict(space, SPACES / "demo.yaml")
    assert space.metric.name == "fid_legacy"
    assert validate_trials(space, base, expand(space))
    clean = space.model_copy(
        update={"metric": space.metric.model_copy(update={"name": "fid_clean"})}
    )
    with pytest.raises(ConfigError, match="eval.fid_protocol='legacy'"):
        validate_trials(clean, base, expand(space))
    monkeypatch.delenv("MDIR_INCEPTION_WEIGHTS")
    with pytest.raises(ConfigError, match="mdir metrics weights import"):
        validate_trials(space, base, expand(space))
    rnd = space.model_copy(
        update={"metric": space.metric.model_copy(update={"name": "fid_legacy_random_inception"})}
    )
    assert validate_trials(rnd, base, expand(space))  # the labelled fallback still ranks


def test_thesis_grid_is_the_thesis_grid():
    space = load_space(SPACES / "thesis_grid.yaml")
    from mdir.tune.space import base_dict

    base = base_dict(space, SPACES / "thesis_grid.yaml")
    trials = expand(space, base)
    assert len(trials) == 20
    combos = {
        (
            t.params["method.name"],
            t.params["data.uri"].rsplit("/", 1)[-1],
            t.params["method.dropout"],
            t.params["method.loss_weight_norm"],
        )  # fmt: skip
        for t in trials
    }
    assert len(combos) == 20
    per_case = {(m, d) for m, d, _, _ in combos}
    assert per_case == {
        ("cyclegan", "aachen"),
        ("cyclegan", "robotcar"),
        ("cyclegan", "retrieval_sfm"),
        ("cyclegan", "transient_attributes_images"),
        ("pix2pix", "transient_attributes"),
    }
    cfgs = validate_trials(space, base, trials)
    assert all(
        c.method.lr == 2e-4 and c.method.beta1 == 0.9 and c.train.global_batch_size == 5
        for c in cfgs
    )
    # ranked on ≥ 2000 val images with the standard network under the papers' protocol
    assert all(c.train.eval_images == 2000 and c.eval.fid_protocol == "legacy" for c in cfgs)
    assert all(c.eval.require_standard_weights for c in cfgs)
    p2p = [c for c in cfgs if c.method.name == "pix2pix"]
    assert all(c.data.mode == "paired" for c in p2p)
    robot = [c for c in cfgs if c.data.uri.endswith("robotcar")]
    assert all(c.data.augment == "resize" and c.train.epochs == 200 for c in robot)


@pytest.mark.parametrize("name", ["thesis_grid.yaml", "mduit_loss_weights.yaml", "demo.yaml"])
def test_shipped_spaces_validate_against_training_schema(name: str):
    from mdir.tune.runner import prepare

    space = load_space(SPACES / name)
    _, trials = prepare(space, SPACES / name)
    assert trials
    if name == "mduit_loss_weights.yaml":
        assert len(trials) == 16
        for t in trials:  # within ×/÷2 of the paper's β's, lr around 2e-4
            assert 50 <= t.params["method.beta_rs"] < 200 and 5 <= t.params["method.beta_cc"] < 20
            assert 1e-4 <= t.params["method.lr"] < 4e-4


def test_unknown_training_key_is_rejected_with_trial_and_field():
    from mdir.tune.runner import prepare
    from mdir.tune.space import base_dict

    space = load_space(SPACES / "demo.yaml")
    bad = space.model_copy(
        update={"parameters": {**space.parameters, "method.droput": space.parameters["method.lr"]}}
    )
    with pytest.raises(ConfigError) as e:
        prepare(bad, SPACES / "demo.yaml")
    assert "trial 0" in str(e.value) and "droput: unknown key" in str(e.value)
    wrong_metric = space.model_copy(
        update={"metric": space.metric.model_copy(update={"name": "fidd"})}
    )
    with pytest.raises(ConfigError, match="metric.name 'fidd'"):
        validate_trials(wrong_metric, base_dict(space, SPACES / "demo.yaml"), expand(space))


def test_trial_config_layers():
    space = load_space(SPACES / "demo.yaml")
    from mdir.tune.space import base_dict

    base = base_dict(space, SPACES / "demo.yaml")
    t = expand(space, base)[3]
    cfg = trial_config(space, base, t)
    assert cfg["method"]["lr"] == t.params["method.lr"] and cfg["method"]["ngf"] == 8
    assert cfg["scaling"] == {"num_workers": 1, "cpus_per_worker": 0.5, "use_gpu": False}


def test_dry_run_cli_json(capsys: pytest.CaptureFixture[str]):
    from typer.testing import CliRunner

    from mdir.cli import app

    res = CliRunner().invoke(
        app, ["tune", "run", "--space", str(SPACES / "thesis_grid.yaml"), "--dry-run", "--json"]
    )
    assert res.exit_code == 0, res.output
    listing = json.loads(res.output.strip().splitlines()[-1])
    assert listing["count"] == 20 and len(listing["trials"]) == 20
    assert listing["trials"][0]["params"]["method.name"] == "cyclegan"
    bad = CliRunner().invoke(app, ["tune", "run", "--space", "/nonexistent.yaml", "--dry-run"])
    assert bad.exit_code == 2


def test_leaderboard_sorting_and_formats():
    rows = [
        Row("a", 0, "x", "finished", 30.0, {"kid": 0.3}),
        Row("b", 1, "y", "error", None, error="boom"),
        Row("c", 2, "z", "stopped", 10.0, {"kid": 0.1, "prd_f8": 0.9}),
        Row("d", 3, "w", "finished", 20.0, {}),
    ]
    ordered = sort_rows(rows, "min")
    assert [r.trial_id for r in ordered] == ["c", "d", "a", "b"]
    assert [r.trial_id for r in sort_rows(rows, "max")] == ["a", "d", "c", "b"]
    md = to_markdown(ordered, "fid")
    lines = md.strip().splitlines()
    assert lines[0].startswith(
        "| rank | trial | label | fid | kid | kid_std | prd_f8 | prd_f1_8 | KID tie"
    )
    assert (
        lines[2].startswith("| 1 | 002 | z | 10 | 0.1 |  | 0.9 |") and "error (boom)" in lines[-1]
    )
    csv_text = to_csv(ordered, "fid")
    assert csv_text.splitlines()[1].startswith("1,c,2,z,10.0,0.1,,0.9")


def test_leaderboard_marks_kid_ties_with_the_winner():
    from mdir.tune.leaderboard import kid_ties

    rows = [
        Row("w", 0, "win", "finished", 1.0, {"kid": 0.10, "kid_std": 0.02}),
        Row("t", 1, "tie", "finished", 2.0, {"kid": 0.13, "kid_std": 0.015}),  # |Δ| .03 ≤ .035
        Row("f", 2, "far", "finished", 3.0, {"kid": 0.20, "kid_std": 0.02}),  # |Δ| .10 > .04
        Row("n", 3, "nostd", "finished", 4.0, {"kid": 0.10}),
    ]
    assert kid_ties(rows) == {1}
    md = to_markdown(rows, "fid_legacy").splitlines()
    assert "| tie |" in md[3] and "| tie |" not in md[4] and "| tie |" not in md[2]
    assert to_csv(rows, "fid_legacy").splitlines()[2].split(",")[9] == "True"


def test_best_point_and_metric_keys():
    hist = [
        {"fid": 5.0, "kid": 1},
        {"fid": float("nan")},
        {"fid": 3.0, "kid": 2},
        {"loss": 1},
        {"fid": 3.0, "kid": 9},
    ]
    assert best_point(hist, "fid", "min")["kid"] == 2
    assert best_point(hist, "fid", "max")["kid"] == 1
    assert best_point([{"loss": 1.0}], "fid", "min") is None
    assert metric_variants("kid", "fid_legacy_random_inception") == [
        "kid_legacy_random_inception",
        "kid",
    ]
    assert metric_variants("kid_std", "fid_clean") == ["kid_std_clean", "kid_std"]
    row = normalize_report(
        {
            "eval/fid_legacy_random_inception": 1.5,
            "loss/g": 2.0,
            "step": 8,
            "eval/kid_legacy_random_inception": 0.1,
        }
    )
    assert row == {
        "step": 8,
        "fid_legacy_random_inception": 1.5,
        "kid_legacy_random_inception": 0.1,
    }
    assert not math.isnan(row["fid_legacy_random_inception"])


def test_driver_env_inside_a_job_leaves_out_the_jobs_own_variables():
    """Ray refuses ray.init(runtime_env) inside `ray job submit` when a variable is set by
    both (make demo-tune failed on it): the job's keys are found and left out."""
    import json

    from mdir.runtime import job_env_keys as _job_env_keys

    job = {"runtime_env": {"working_dir": "gcs://x.zip", "env_vars": {"MLFLOW_TRACKING_URI": "u"}}}
    assert _job_env_keys({"RAY_JOB_CONFIG_JSON_ENV_VAR": json.dumps(job)}) == {
        "MLFLOW_TRACKING_URI"
    }
    assert _job_env_keys({}) == set()
    assert _job_env_keys({"RAY_JOB_CONFIG_JSON_ENV_VAR": "not json"}) == set()


def test_thesis_grid_dry_run_resolves_all_20_trials(tmp_path):
    """Every trial's dataset, splits and domains exist, with rows in both streams of both
    splits, in datasets built by the layouts the way the thesis built them; nothing trains."""
    from layout_fixtures import write_thesis_datasets

    from mdir.tune.resolve import format_resolution, resolve_space

    write_thesis_datasets(tmp_path)
    resolved = resolve_space(SPACES / "thesis_grid.yaml", tmp_path)
    assert len(resolved) == 20
    assert all(r.ok for r in resolved), format_resolution(resolved)
    by_label = {r.label.split(",")[0]: r for r in resolved}
    assert by_label["pix2pix-transattr"].rows == {"train": {"AB": 18}, "val": {"AB": 2}}
    assert by_label["cyclegan-transattr"].rows == {
        "train": {"A": 18, "B": 9},
        "val": {"A": 2, "B": 1},
    }
    assert by_label["cyclegan-robotcar"].layout == "robotcar_seasons"
    assert by_label["cyclegan-robotcar"].rows == {
        "train": {"A": 9, "B": 3},
        "val": {"A": 1, "B": 1},
    }
    assert by_label["cyclegan-rsfm"].rows == {"train": {"A": 2, "B": 2}, "val": {"A": 1, "B": 1}}
    assert by_label["cyclegan-aachen"].rows == {"train": {"A": 9, "B": 9}, "val": {"A": 1, "B": 1}}


def test_dry_run_names_what_a_trial_lacks(tmp_path):
    """Aachen ingested with the benchmark's splits (db/query) cannot feed a GAN trial: the
    dry run says which field, and the CLI exits 1."""
    from layout_fixtures import write_aachen, write_thesis_datasets
    from typer.testing import CliRunner

    from mdir.data.ingest import ingest
    from mdir.tune.cli import app
    from mdir.tune.resolve import resolve_space

    write_thesis_datasets(tmp_path)
    import shutil

    shutil.rmtree(tmp_path / "aachen")
    write_aachen(tmp_path / "raw2", n_db=3, n_day=2, n_night=2, size=(24, 32))
    ingest(str(tmp_path / "raw2"), str(tmp_path / "aachen"), "aachen")
    resolved = resolve_space(SPACES / "thesis_grid.yaml", tmp_path)
    bad = [r for r in resolved if not r.ok]
    assert {r.label.split(",")[0] for r in bad} == {"cyclegan-aachen"} and len(bad) == 4
    assert "data.train_split: split 'train' not in" in bad[0].problems[0]
    out = CliRunner().invoke(
        app,
        ["dry-run", "--space", str(SPACES / "thesis_grid.yaml"), "--data-root", str(tmp_path)],
    )
    assert out.exit_code == 1 and "16/20 trials resolve" in out.output
