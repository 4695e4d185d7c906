"""Matching information → which database images are positives / valid negatives of a query.

Three sources (issue 8, "positives and negatives come from the dataset's matching info"):

* ``place``: same place id ⇒ matching (synthetic data, Tokyo 24/7 style place labels);
* ``pose``: relative rotation < 8° and camera-centre distance < 7 m ⇒ matching (MDUIT 3.1);
  pose rows are (x, y, z, qw, qx, qy, qz) with (x, y, z) the camera centre in world
  coordinates (the data layer converts dataset-specific conventions);
* ``pairs``: an explicit list of (query, positive) pairs (Retrieval-SfM style).

A `Matching` answers two questions for a query row: which rows are positives, and which rows
are allowed as negatives. Negatives must be clearly *non*-matching: with place ids a
negative must come from another place; with poses it must be outside the positive
thresholds; with explicit pairs, anything not paired with the query and (if known) from
another place.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

PoseArray = np.ndarray  # float64 [N, 7]


def rotation_angle_deg(qa: np.ndarray, qb: np.ndarray) -> np.ndarray:
    """Angle of the relative rotation between unit quaternions (w, x, y, z), broadcasting.

    θ = 2·acos(|⟨q_a, q_b⟩|); the absolute value makes q and −q the same rotation.
    """
    qa = qa / np.linalg.norm(qa, axis=-1, keepdims=True)
    qb = qb / np.linalg.norm(qb, axis=-1, keepdims=True)
    dot = np.abs(np.sum(qa * qb, axis=-1)).clip(0.0, 1.0)
    return np.degrees(2.0 * np.arccos(dot))


def pose_errors(pa: PoseArray, pb: PoseArray) -> tuple[np.ndarray, np.ndarray]:
    """Translation (m) and rotation (°) differences of pose rows `pa` vs `pb`, broadcasting
    over leading dimensions (e.g. pa[:, None] vs pb[None])."""
    trans = np.linalg.norm(pa[..., :3] - pb[..., :3], axis=-1)
    rot = rotation_angle_deg(pa[..., 3:7], pb[..., 3:7])
    return trans, rot


@dataclass
class Matching:
    """Per-row matching information of one split (rows indexed 0..N-1 like `meta()`)."""

    mode: str
    place: np.ndarray  # int64 [N], -1 = unknown
    pose: np.ndarray  # float64 [N, 7], NaN = unknown
    max_translation_m: float = 7.0
    max_rotation_deg: float = 8.0
    pairs: dict[int, set[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.place = np.asarray(self.place, dtype=np.int64)
        self.pose = np.asarray(self.pose, dtype=np.float64).reshape(len(self.place), 7)
        self._has_pose = ~np.isnan(self.pose).any(axis=1)

    def __len__(self) -> int:
        return len(self.place)

    def positive_mask(self, q: int, candidates: np.ndarray) -> np.ndarray:
        """Bool mask over `candidates` (row indices): matching the query row `q` (never q itself)."""
        candidates = np.asarray(candidates, dtype=np.int64)
        if self.mode == "place":
            m = (self.place[candidates] == self.place[q]) & (self.place[q] >= 0)
        elif self.mode == "pose":
            if not self._has_pose[q]:
                m = np.zeros(len(candidates), dtype=bool)
            else:
                t, r = pose_errors(self.pose[q][None], self.pose[candidates])
                m = (
                    self._has_pose[candidates]
                    & (t < self.max_translation_m)
                    & (r < self.max_rotation_deg)
                )
        elif self.mode == "pairs":
            m = np.isin(candidates, np.fromiter(self.pairs.get(int(q), ()), dtype=np.int64))
        else:  # pragma: no cover - validated by the config Literal
            raise ValueError(f"unknown positives mode {self.mode!r}")
        return m & (candidates != q)

    def negative_mask(self, q: int, candidates: np.ndarray) -> np.ndarray:
        """Bool mask over `candidates`: rows that may serve as negatives for query `q`."""
        candidates = np.asarray(candidates, dtype=np.int64)
        ok = ~self.positive_mask(q, candidates) & (candidates != q)
        if self.place[q] >= 0:
            # another place (or unknown place); guards pose/pairs modes against near-misses
            ok &= self.place[candidates] != self.place[q]
        if self.mode == "pose" and self._has_pose[q]:
            # "taken far from each other": outside the positive thresholds by a factor 2 in
            # translation so that near-threshold views are neither positive nor negative
            t, _ = pose_errors(self.pose[q][None], self.pose[candidates])
            ok &= ~self._has_pose[candidates] | (t >= 2 * self.max_translation_m)
        return ok

    def queries_with_positives(self, rows: np.ndarray, database: np.ndarray) -> np.ndarray:
        """The rows of `rows` that have at least one positive in `database` (trainable queries)."""
        return np.array(
            [q for q in rows if self.positive_mask(int(q), database).any()], dtype=np.int64
        )


def read_pairs(
    path: str | Path, source_to_row: dict[str, int] | None = None
) -> dict[int, set[int]]:
    """Explicit pairs file → {query row: {positive rows}} (symmetric).

    CSV with columns ``query,positive`` or JSON ``[[q, p], ...]`` / ``[{"query":..,"positive":..}]``;
    values are row indices, or source paths when `source_to_row` is given. Unknown sources
    are skipped (counted in the returned dict's absence; the caller logs totals).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"pairs file not found: {p}")
    raw: list[tuple[str, str]] = []
    if p.suffix.lower() == ".json":
        for item in json.loads(p.read_text()):
            if isinstance(item, dict):
                raw.append((str(item["query"]), str(item["positive"])))
            else:
                raw.append((str(item[0]), str(item[1])))
    else:
        with p.open(newline="") as f:
            for row in csv.DictReader(f):
                raw.append((row["query"], row["positive"]))

    def to_row(v: str) -> int | None:
        if source_to_row is not None:
            return source_to_row.get(v)
        try:
            return int(v)
        except ValueError:
            return None

    out: dict[int, set[int]] = {}
    for a, b in raw:
        ra, rb = to_row(a), to_row(b)
        if ra is None or rb is None or ra == rb:
            continue
        out.setdefault(ra, set()).add(rb)
        out.setdefault(rb, set()).add(ra)
    return out


def resolve_mode(requested: str, pose: np.ndarray) -> str:
    """``auto`` → ``pose`` when any pose is known, else ``place``."""
    if requested != "auto":
        return requested
    return "pose" if (~np.isnan(np.asarray(pose, dtype=np.float64))).all(axis=-1).any() else "place"
