"""Search spaces: the `tune_spaces/*.yaml` language, validated and expanded to trials.

A space names a base job config (a `TrainJobConfig` YAML), fixed overrides, optional
*cases* (labelled bundles of keys that vary together, e.g. method + dataset in the
thesis grid) and *parameters* over any dotted config key::

    parameters:
      method.dropout: {grid: [false, true]}
      method.lr: {loguniform: [1.0e-4, 1.0e-3]}
      method.lambda_cyc: {choice: [5, 10], when: {method.name: [cyclegan]}}

Expansion is ours, not Tune's sampler, so that ``--dry-run`` lists exactly the trials a
run starts, conditionals are simple, and every concrete trial is validated against the
training schema before any cluster resource is used. The trial order is
``num_samples × cases × grid product``; random parameters are drawn from one
``random.Random(seed)`` in that order, so a space expands identically on every call
(needed to resume a sweep).
"""

from __future__ import annotations

import itertools
import math
import os
import random
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, field_validator, model_validator

from mdir.config import ConfigError, StrictModel, read_yaml, validate

DISTRIBUTIONS = ("grid", "choice", "uniform", "loguniform", "randint")
_MISSING = object()


class ParamSpec(StrictModel):
    """One searched key: exactly one of the distribution fields, optionally `when`."""

    grid: list[Any] | None = Field(
        None, description="Every value is tried (Cartesian product with other grids)."
    )
    choice: list[Any] | None = Field(None, description="One value drawn uniformly per trial.")
    uniform: tuple[float, float] | None = Field(
        None, description="[low, high): float drawn uniformly."
    )
    loguniform: tuple[float, float] | None = Field(
        None, description="[low, high): float drawn log-uniformly."
    )
    randint: tuple[int, int] | None = Field(
        None, description="[low, high): integer drawn uniformly."
    )
    when: dict[str, list[Any]] | None = Field(
        None,
        description="Only set this key where every listed config key has one of the listed values "
        "(e.g. dropout only for methods that have it); elsewhere the base value stays.",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> ParamSpec:
        given = [d for d in DISTRIBUTIONS if getattr(self, d) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of {', '.join(DISTRIBUTIONS)} (got {given or 'none'})"
            )
        kind = given[0]
        if kind in ("grid", "choice") and not getattr(self, kind):
            raise ValueError(f"{kind} needs at least one value")
        if kind in ("uniform", "loguniform", "randint"):
            lo, hi = getattr(self, kind)
            if not lo < hi:
                raise ValueError(f"{kind}: low must be < high (got [{lo}, {hi}])")
            if kind == "loguniform" and lo <= 0:
                raise ValueError(f"loguniform: bounds must be > 0 (got [{lo}, {hi}])")
        return self

    @property
    def kind(self) -> str:
        return next(d for d in DISTRIBUTIONS if getattr(self, d) is not None)

    def sample(self, rng: random.Random) -> Any:
        """A draw for the random kinds (grid values are enumerated, not sampled)."""
        kind = self.kind
        if kind == "choice":
            return self.choice[rng.randrange(len(self.choice))]  # type: ignore[index]
        if kind == "uniform":
            lo, hi = self.uniform  # type: ignore[misc]
            return lo + (hi - lo) * rng.random()
        if kind == "loguniform":
            lo, hi = self.loguniform  # type: ignore[misc]
            return math.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * rng.random())
        if kind == "randint":
            lo, hi = self.randint  # type: ignore[misc]
            return rng.randrange(lo, hi)
        raise ValueError(f"{kind} is enumerated, not sampled")


class CaseSpec(StrictModel):
    """A labelled bundle of keys that vary together (one case = one row of the outer grid)."""

    label: str = Field(description="Short name shown in the leaderboard, e.g. 'cyclegan-aachen'.")
    set: dict[str, Any] = Field(description="Dotted config keys → values for this case.")


class MetricSpec(StrictModel):
    """What trials are ranked by (the validation split's metric as training reports it)."""

    name: str = Field(
        "fid_legacy",
        description="Reported metric key, named by protocol: fid_legacy / fid_clean (must match "
        "eval.fid_protocol), + _random_inception for the labelled random-feature fallback.",
    )
    mode: Literal["min", "max"] = Field("min", description="min for FID/KID, max for PRD F-scores.")


class SchedulerSpec(StrictModel):
    """Early stopping. Time is counted in evaluation points (Tune's training_iteration)."""

    type: Literal["none", "asha"] = Field(
        "none", description="none = run every trial to the end; asha = ASHA."
    )
    grace_period: int = Field(
        1, ge=1, description="ASHA: evaluation points every trial gets before it can be stopped."
    )
    reduction_factor: float = Field(
        2.0, gt=1, description="ASHA: keep the best 1/reduction_factor at each rung."
    )
    max_t: int = Field(100, ge=1, description="ASHA: the most evaluation points a trial can reach.")


class ResourcesSpec(StrictModel):
    """Per-trial resources; copied into the job config's `scaling` section."""

    num_workers: int = Field(1, ge=1, description="Ray Train workers (DDP ranks) per trial.")
    cpus_per_worker: float = Field(
        1.0, gt=0, description="CPUs per worker (0.5 on 2-core machines)."
    )
    use_gpu: bool = Field(False, description="One GPU per worker.")
    driver_cpus: float = Field(
        0.01,
        gt=0,
        description="CPUs reserved for the trial's driver actor; it only waits on the TorchTrainer, "
        "so a sliver (Tune rejects 0).",
    )


class TuneSpace(StrictModel):
    """A search space file (`tune_spaces/*.yaml`)."""

    name: str = Field(
        description="Sweep name: the Tune experiment directory and MLflow parent run name."
    )
    description: str = Field("", description="What the sweep is for.")
    backend: Literal["train", "toy"] = Field(
        "train",
        description="train = each trial is an mdir training job (TorchTrainer); toy = a tiny quadratic "
        "stand-in on a real TorchTrainer, for tests and benchmarks of the sweep machinery.",
    )
    base_config: str | None = Field(
        None,
        description="Job config YAML the trials start from (relative to the CWD or to this file).",
    )
    base: dict[str, Any] = Field(
        default_factory=dict,
        description="Inline base config (nested mapping), merged over base_config.",
    )
    overrides: dict[str, Any] = Field(
        default_factory=dict, description="Fixed dotted keys applied to every trial."
    )
    cases: list[CaseSpec] = Field(
        default_factory=list, description="Outer grid of labelled key bundles."
    )
    parameters: dict[str, ParamSpec] = Field(
        default_factory=dict, description="Searched dotted keys."
    )
    metric: MetricSpec = Field(
        default_factory=MetricSpec, description="Ranking metric (default FID, min)."
    )
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec, description="Early stopping.")
    max_concurrent_trials: int = Field(1, ge=1, description="Trials running at the same time.")
    resources_per_trial: ResourcesSpec = Field(
        default_factory=ResourcesSpec, description="Per-trial resources."
    )
    num_samples: int = Field(
        1, ge=1, description="Repeats of the whole grid, each with fresh random draws."
    )
    seed: int = Field(0, description="Seed of the random draws (expansion is deterministic).")
    max_failures: int = Field(
        1, ge=0, description="Retries of a failing trial (Tune FailureConfig); then it is skipped."
    )
    storage_path: str | None = Field(
        None,
        description="Where Tune keeps the sweep (local path or s3://); default $MDIR_TUNE_STORAGE or ./tune_results.",
    )
    experiment: str = Field(
        "mdir-tune", description="MLflow experiment of the parent and child runs."
    )
    register_champion: bool = Field(
        True, description="Give the best trial's registered generator the alias `champion`."
    )

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", v):
            raise ValueError("use letters, digits, '_', '.', '-' only (it names a directory)")
        return v

    @model_validator(mode="after")
    def _check_keys(self) -> TuneSpace:
        for key in [*self.overrides, *self.parameters, *(k for c in self.cases for k in c.set)]:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", key):
                raise ValueError(f"{key!r} is not a dotted config key like method.lr")
        labels = [c.label for c in self.cases]
        if len(set(labels)) != len(labels):
            raise ValueError(f"case labels must be unique (got {labels})")
        if self.backend == "train" and self.base_config is None and not self.base:
            raise ValueError(
                "backend 'train' needs base_config (a job config file) or an inline base"
            )
        return self


class Trial(StrictModel):
    """One concrete trial: its position, a readable label and the keys it sets."""

    index: int = Field(description="Position in the expansion (stable across calls).")
    label: str = Field(description="Case label + short parameter summary.")
    params: dict[str, Any] = Field(
        description="Dotted keys this trial sets on top of base + overrides."
    )


# --------------------------------------------------------------------------- loading


def load_space(path: str | Path) -> TuneSpace:
    """Read and validate a space file; `ConfigError` names the file and each bad field."""
    data = read_yaml(path)
    return validate(TuneSpace, _expand_env(data), source=str(path))


def parse_space(text: str, source: str = "space") -> TuneSpace:
    """Validate a space given as YAML text (tests, inline use)."""
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: top level must be a mapping, got {type(data).__name__}")
    return validate(TuneSpace, _expand_env(data), source=source)


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand_env(node: Any) -> Any:
    """``${VAR}`` / ``${VAR:-default}`` in strings (dataset roots differ per cluster)."""
    if isinstance(node, dict):
        return {k: _expand_env(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_expand_env(v) for v in node]
    if isinstance(node, str):

        def sub(m: re.Match[str]) -> str:
            val = os.environ.get(m.group(1))
            if val is None:
                if m.group(2) is None:
                    raise ConfigError(
                        f"environment variable {m.group(1)} is not set (used in {node!r})"
                    )
                return m.group(2)
            return val

        return _ENV.sub(sub, node)
    return node


def resolve_base_config(space: TuneSpace, space_path: str | Path | None) -> Path | None:
    """The base config path: as given if it exists from the CWD, else next to the space file."""
    if space.base_config is None:
        return None
    p = Path(space.base_config)
    if p.is_absolute() or p.exists() or space_path is None:
        return p
    alt = Path(space_path).parent / p
    return alt if alt.exists() else p


def base_dict(space: TuneSpace, space_path: str | Path | None) -> dict[str, Any]:
    """Base config mapping: the base_config file, then the inline `base` merged over it."""
    p = resolve_base_config(space, space_path)
    out = read_yaml(p) if p is not None else {}
    return _merge(out, space.base)


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = _copy(a)
    for k, v in b.items():
        out[k] = (
            _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else _copy(v)
        )
    return out


# --------------------------------------------------------------------------- dotted keys


def get_dotted(d: dict[str, Any], key: str, default: Any = None) -> Any:
    node: Any = d
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def set_dotted(d: dict[str, Any], key: str, value: Any) -> None:
    """Set ``a.b.c`` in a nested dict, creating sub-dicts (a mapping value replaces the subtree)."""
    parts = key.split(".")
    node = d
    for part in parts[:-1]:
        nxt = node.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            node[part] = nxt
        node = nxt
    node[parts[-1]] = _copy(value)


def _copy(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _copy(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_copy(x) for x in v]
    return v


def apply_params(base: dict[str, Any], *layers: dict[str, Any]) -> dict[str, Any]:
    """A copy of `base` with each layer of dotted keys applied in order."""
    out = _copy(base)
    for layer in layers:
        for k, v in layer.items():
            set_dotted(out, k, v)
    return out


def _applies(spec: ParamSpec, cfg: dict[str, Any]) -> bool:
    if not spec.when:
        return True
    return all(get_dotted(cfg, k, _MISSING) in allowed for k, allowed in spec.when.items())


# --------------------------------------------------------------------------- expansion


def expand(space: TuneSpace, base: dict[str, Any] | None = None) -> list[Trial]:
    """All concrete trials of `space`, in run order (see the module docstring)."""
    base = base or {}
    rng = random.Random(space.seed)
    grid_keys = [k for k, p in space.parameters.items() if p.kind == "grid"]
    rand_keys = [k for k, p in space.parameters.items() if p.kind != "grid"]
    cases = space.cases or [CaseSpec(label="", set={})]
    trials: list[Trial] = []
    for _sample in range(space.num_samples):
        for case in cases:
            fixed = apply_params(base, space.overrides, case.set)
            seen: set[str] = set()
            for combo in itertools.product(*(space.parameters[k].grid for k in grid_keys)):  # type: ignore[misc]
                params: dict[str, Any] = dict(case.set)
                cfg = _copy(fixed)
                for k, v in zip(grid_keys, combo, strict=True):
                    if _applies(space.parameters[k], cfg):
                        params[k] = v
                        set_dotted(cfg, k, v)
                sig = repr(sorted(params.items(), key=lambda kv: kv[0]))
                if sig in seen:  # a grid key that does not apply here: one trial, not two
                    continue
                seen.add(sig)
                for k in rand_keys:
                    if _applies(space.parameters[k], cfg):
                        v = space.parameters[k].sample(rng)
                        params[k] = v
                        set_dotted(cfg, k, v)
                trials.append(
                    Trial(
                        index=len(trials), label=_label(case.label, params, case.set), params=params
                    )
                )
    return trials


def _label(case_label: str, params: dict[str, Any], case_keys: dict[str, Any]) -> str:
    bits = [case_label] if case_label else []
    for k, v in params.items():
        if k in case_keys:
            continue
        short = k.rsplit(".", 1)[-1]
        bits.append(f"{short}={_fmt(v)}")
    return ",".join(bits) or "default"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def trial_config(space: TuneSpace, base: dict[str, Any], trial: Trial) -> dict[str, Any]:
    """The full job-config mapping of one trial: base + overrides + resources + params."""
    r = space.resources_per_trial
    scaling = (
        {
            "scaling.num_workers": r.num_workers,
            "scaling.cpus_per_worker": r.cpus_per_worker,
            "scaling.use_gpu": r.use_gpu,
        }
        if space.backend == "train"
        else {}
    )
    return apply_params(base, space.overrides, scaling, trial.params)


REPORTED_METRICS = ("fid", "kid", "is", "prd_f8", "prd_f1_8")
RANDOM_SUFFIX = "_random_inception"
PROTOCOL_SUFFIXES = ("_legacy", "_clean")


def split_metric(metric: str) -> tuple[str, str | None, bool]:
    """`fid_legacy_random_inception` → ("fid", "legacy", True); no protocol → None."""
    rnd = metric.endswith(RANDOM_SUFFIX)
    rest = metric.removesuffix(RANDOM_SUFFIX)
    for suf in PROTOCOL_SUFFIXES:
        if rest.endswith(suf):
            return rest.removesuffix(suf), suf[1:], rnd
    return rest, None, rnd


def validate_trials(space: TuneSpace, base: dict[str, Any], trials: list[Trial]) -> list[Any]:
    """Validate every trial's config against `TrainJobConfig` (backend train).

    A key the training code does not read is an error (the schema forbids unknown keys),
    reported with the trial's label and the dotted field, before anything starts. The
    ranking metric must be one the training job reports, and evaluation points must be
    reported to Tune (``train.checkpoint_every`` = ``train.eval_every``).
    """
    if space.backend != "train":
        return []
    from mdir.training.config import TrainJobConfig

    metric = space.metric.name
    metric_base, protocol, wants_random = split_metric(metric)
    if metric_base not in REPORTED_METRICS or protocol is None:
        known = [
            m + p + s
            for m in REPORTED_METRICS
            for p in PROTOCOL_SUFFIXES
            for s in ("", RANDOM_SUFFIX)
        ]
        raise ConfigError(
            f"space {space.name!r}: metric.name {metric!r} is not reported by training; use one of {known}"
        )
    out = []
    for t in trials:
        try:
            cfg = validate(
                TrainJobConfig, trial_config(space, base, t), source=f"trial {t.index} ({t.label})"
            )
        except ConfigError as e:
            raise ConfigError(f"space {space.name!r}: {e}") from None
        tr = cfg.train
        if not tr.evaluate:
            raise ConfigError(
                f"space {space.name!r}: trial {t.index}: train.evaluate is false, nothing to rank on"
            )
        if tr.eval_every and tr.checkpoint_every != tr.eval_every:
            raise ConfigError(
                f"space {space.name!r}: trial {t.index}: train.checkpoint_every ({tr.checkpoint_every}) must equal "
                f"train.eval_every ({tr.eval_every}): Tune receives one result per report (checkpoint)"
            )
        if cfg.eval.fid_protocol != protocol:
            raise ConfigError(
                f"space {space.name!r}: metric {metric!r} is the {protocol} protocol but trial "
                f"{t.index} sets eval.fid_protocol={cfg.eval.fid_protocol!r}; rank by "
                f"{metric_base}_{cfg.eval.fid_protocol}{RANDOM_SUFFIX if wants_random else ''}"
            )
        if not wants_random:
            _check_standard_weights(space, metric, cfg, t.index)
        if wants_random and not cfg.eval.allow_random_features:
            raise ConfigError(
                f"space {space.name!r}: metric {metric!r} needs eval.allow_random_features: true (trial {t.index})"
            )
        out.append(cfg)
    return out


def _check_standard_weights(space: TuneSpace, metric: str, cfg: Any, index: int) -> None:
    """A metric named for the standard network needs its weights: without them every trial
    would report only `_random_inception` keys and the sweep would rank nothing."""
    from mdir.metrics.features import resolve_weights

    try:
        found = resolve_weights(cfg.eval.inception_weights)
    except FileNotFoundError as e:
        raise ConfigError(
            f"space {space.name!r}: trial {index}: eval.inception_weights: {e}"
        ) from None
    if found is None:
        raise ConfigError(
            f"space {space.name!r}: metric {metric!r} needs the standard FID Inception weights, "
            "which are not installed here: run `mdir metrics weights import` (extra mdir[fid]), "
            f"or rank by {metric}{RANDOM_SUFFIX} with eval.allow_random_features: true"
        )
