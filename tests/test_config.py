"""Config machinery: unknown keys, wrong types and overrides produce errors naming the field."""

from __future__ import annotations

import pytest
from pydantic import Field, ValidationError

from mdir.config import ConfigError, StrictModel, apply_overrides, load_config


class Inner(StrictModel):
    lr: float = Field(2e-4, gt=0)
    betas: tuple[float, float] = (0.5, 0.999)


class Outer(StrictModel):
    name: str = "x"
    opt: Inner = Inner()


def test_defaults_and_override(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: demo\nopt:\n  lr: 0.001\n")
    cfg = load_config(Outer, p, ["opt.betas=[0.9, 0.99]"])
    assert cfg.name == "demo"
    assert cfg.opt.lr == pytest.approx(1e-3)
    assert cfg.opt.betas == (0.9, 0.99)


def test_unknown_key_names_field(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("opt:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"opt\.lrr: unknown key"):
        load_config(Outer, p)


def test_unknown_key_suggests_the_closest_valid_one_of_its_section():
    with pytest.raises(ConfigError) as e:
        load_config(Outer, None, ["opt.betass=[0.5, 0.9]"])
    assert "did you mean 'betas'?" in str(e.value)
    assert "valid keys here: betas, lr" in str(e.value)


def test_unknown_key_inside_a_method_union_lists_that_methods_keys():
    from mdir.training.config import load_job_config

    with pytest.raises(ConfigError) as e:
        load_job_config(None, ["method.name=cyclegan", "method.n_block=3", "data.uri=/x"])
    msg = str(e.value)
    assert "n_block: unknown key (did you mean 'n_blocks'?)" in msg and "lambda_cyc" in msg


def test_wrong_type_names_field():
    with pytest.raises(ConfigError, match=r"opt\.lr: .*greater than 0"):
        load_config(Outer, None, ["opt.lr=-1"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(Outer, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Outer, bad)


def test_apply_overrides_does_not_mutate():
    base = {"a": {"b": 1}}
    out = apply_overrides(base, ["a.b=2", "c.d=true"])
    assert base == {"a": {"b": 1}}
    assert out == {"a": {"b": 2}, "c": {"d": True}}


def test_frozen():
    cfg = Outer()
    with pytest.raises(ValidationError):
        cfg.name = "y"  # type: ignore[misc]
