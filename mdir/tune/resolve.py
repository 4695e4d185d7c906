"""Dry run of a sweep's data: every trial's dataset, splits and domains, read from the
manifests, before any trial trains.

`prepare` (runner) proves that every trial is a valid `TrainJobConfig`; it cannot see that a
trial names a split its dataset does not have, or a condition with no rows there — the thesis
grid's first version asked every dataset for ``train`` / [day] / [night], and Aachen has no
``train`` split unless ingested as a GAN training set. A trial that cannot run is found here,
in seconds, instead of after the others have trained for days.

Per trial, with its ``data.uri`` (after ``${MDIR_DATA_ROOT}`` is expanded):

- the manifest is readable, the method's data mode agrees with ``data.mode``;
- ``data.train_split`` and ``data.val_split`` exist (the val split feeds FID);
- unpaired: domain A and domain B both have rows in both splits; paired: the dataset is
  paired and both splits have pairs whose condition is in ``domain_a`` (when given); single:
  both splits have rows.

Reads manifests only (no image, no Ray, no MLflow).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class ResolvedTrial:
    """What one trial would train on (``rows``: split → stream → rows) and what is wrong."""

    index: int
    label: str
    uri: str
    layout: str = ""
    mode: str = ""
    train_split: str = ""
    val_split: str = ""
    domain_a: list[str] = field(default_factory=list)
    domain_b: list[str] = field(default_factory=list)
    rows: dict[str, dict[str, int]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def resolve_trial(index: int, label: str, cfg: Any) -> ResolvedTrial:
    """Check one validated `TrainJobConfig` against its dataset's manifest."""
    from mdir.data.manifest import read_manifest
    from mdir.data.pipeline import resolve_domains

    d = cfg.data
    r = ResolvedTrial(
        index=index,
        label=label,
        uri=d.uri,
        mode=d.mode,
        train_split=d.train_split,
        val_split=d.val_split,
    )
    need = getattr(type(cfg.method), "data_mode", None)
    if need is not None and need != d.mode:
        r.problems.append(f"data.mode: method {cfg.method.name!r} needs {need!r}, has {d.mode!r}")
    try:
        m = read_manifest(d.uri)
    except Exception as e:
        r.problems.append(f"data.uri: {e}")
        return r
    r.layout = m.layout
    for fld in ("train_split", "val_split"):
        split = getattr(d, fld)
        if split not in m.splits:
            r.problems.append(f"data.{fld}: split {split!r} not in {d.uri!r} (has {m.splits})")
    if r.problems:
        return r
    if d.mode == "unpaired":
        try:
            a, b = resolve_domains(m, d)
        except KeyError as e:
            r.problems.append(f"data.domain_a/domain_b: {e.args[0]}")
            return r
        r.domain_a, r.domain_b = a, b
        for split in dict.fromkeys((d.train_split, d.val_split)):
            r.rows[split] = {"A": m.count(split, a), "B": m.count(split, b)}
            for stream, fld, conds in (("A", "domain_a", a), ("B", "domain_b", b)):
                if r.rows[split][stream] == 0:
                    r.problems.append(
                        f"data.{fld}: no rows of {conds} in split {split!r} of {d.uri!r} "
                        f"(has {m.counts.get(split, {})})"
                    )
        return r
    if d.mode == "paired" and not m.paired:
        r.problems.append(f"data.mode: 'paired' but {d.uri!r} is not a paired dataset")
        return r
    r.domain_a = list(d.domain_a)
    conds = list(d.domain_a) or None
    for split in dict.fromkeys((d.train_split, d.val_split)):
        key = "AB" if d.mode == "paired" else "A"
        r.rows[split] = {key: m.count(split, conds)}
        if r.rows[split][key] == 0:
            r.problems.append(
                f"data.train_split/val_split: no rows{f' of {conds}' if conds else ''} in split "
                f"{split!r} of {d.uri!r} (has {m.counts.get(split, {})})"
            )
    return r


@contextmanager
def data_root(path: str | os.PathLike[str] | None) -> Iterator[None]:
    """Set ``MDIR_DATA_ROOT`` (the spaces' dataset root) for the block, then restore it."""
    if path is None:
        yield
        return
    old = os.environ.get("MDIR_DATA_ROOT")
    os.environ["MDIR_DATA_ROOT"] = str(path)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MDIR_DATA_ROOT", None)
        else:
            os.environ["MDIR_DATA_ROOT"] = old


def resolve_space(
    space_path: str | Path, root: str | os.PathLike[str] | None = None
) -> list[ResolvedTrial]:
    """Every trial of the space at `space_path`, resolved against the manifests under
    `root` (``MDIR_DATA_ROOT``; None = the environment's). Config errors raise
    `mdir.config.ConfigError`; data problems are listed per trial."""
    from mdir.tune.runner import prepare
    from mdir.tune.space import load_space, validate_trials

    with data_root(root):
        space = load_space(space_path)
        base, trials = prepare(space, space_path)
        cfgs = validate_trials(space, base, trials)
    return [resolve_trial(t.index, t.label, c) for t, c in zip(trials, cfgs, strict=True)]


def format_resolution(resolved: list[ResolvedTrial]) -> str:
    """One line per trial (dataset, splits, rows per stream) and its problems under it."""
    lines = []
    for r in resolved:
        rows = "; ".join(
            f"{s}: " + ", ".join(f"{k}={n}" for k, n in v.items()) for s, v in r.rows.items()
        )
        doms = f" {r.domain_a}→{r.domain_b}" if r.domain_b else ""
        lines.append(
            f"{r.index:3d} {'ok ' if r.ok else 'BAD'} {r.label}  {r.uri} "
            f"({r.layout or '?'}, {r.mode}{doms}) {rows}"
        )
        lines.extend(f"        {p}" for p in r.problems)
    bad = sum(not r.ok for r in resolved)
    lines.append(f"{len(resolved) - bad}/{len(resolved)} trials resolve")
    return "\n".join(lines)
