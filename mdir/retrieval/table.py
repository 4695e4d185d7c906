"""The retrieval table in the papers' layout (thesis Table 5.1; Radenović et al. 2018).

Columns: revisited Oxford and Paris mAP for the Easy / Medium / Hard protocols, Tokyo 24/7
mAP and recall@1/5/10 (positives within 25 m), all ×100 as the papers print them. The thesis's
Table 5.1 reports the Medium protocol for ROxf / RPar (its VGG16-GeM baseline, 60.73 / 69.10,
is cirtorch's ROxf (M) / RPar (M)) and an "Avg" column that equals (Tokyo + ROxf + RPar) / 4
on five of its six rows (Pix2pix's 51.93 matches neither formula: its values give 51.68); both
averages are printed, named for what they are: ``avg`` = the mean of the three,
``avg_thesis`` = their sum / 4.

`localization_row` gives MDUIT's Table 1 layout instead: localization recall at (0.25 m, 2°),
(0.5 m, 5°), (5 m, 10°) for Day-All and Night-All queries, ×100.

`paper_row` is a pure function of the per-dataset metric dicts of
``mdir.retrieval.evaluate.compute_metrics``; datasets are recognised by the evaluation
layout's name (``roxford5k``, ``rparis6k``, ``tokyo247``). A column whose dataset was not
evaluated is NaN (an empty cell in markdown).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

#: (column key, markdown header); keys are MLflow-safe
COLUMNS: tuple[tuple[str, str], ...] = (
    ("roxf_easy", "ROxf E"),
    ("roxf_medium", "ROxf M"),
    ("roxf_hard", "ROxf H"),
    ("rpar_easy", "RPar E"),
    ("rpar_medium", "RPar M"),
    ("rpar_hard", "RPar H"),
    ("tokyo_map", "Tokyo mAP"),
    ("tokyo_r1", "Tokyo R@1"),
    ("tokyo_r5", "Tokyo R@5"),
    ("tokyo_r10", "Tokyo R@10"),
    ("avg", "Avg (T+O+P)/3"),
    ("avg_thesis", "Avg thesis (T+O+P)/4"),
)

_DATASETS = {"roxford5k": "roxf", "rparis6k": "rpar", "tokyo247": "tokyo"}


def dataset_key(name: str | None) -> str | None:
    """roxf / rpar / tokyo for the evaluation layouts' dataset names, else None."""
    return _DATASETS.get(str(name or "").lower())


def paper_row(results: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """{dataset name: metrics} → one table row (×100; NaN where not evaluated).

    Revisited datasets read ``map/easy|medium|hard``; Tokyo reads ``map`` and
    ``recall_at_{1,5,10}/all``. A dataset name outside the three papers' sets is an error:
    the row would silently lack it.
    """
    row = {k: math.nan for k, _ in COLUMNS}
    for name, m in results.items():
        key = dataset_key(name)
        if key is None:
            raise ValueError(
                f"dataset {name!r} has no column in the papers' table "
                f"(expected one of {sorted(_DATASETS)})"
            )
        if key in ("roxf", "rpar"):
            for proto in ("easy", "medium", "hard"):
                row[f"{key}_{proto}"] = 100.0 * float(m[f"map/{proto}"])
        else:
            row["tokyo_map"] = 100.0 * float(m["map"])
            for n in (1, 5, 10):
                row[f"tokyo_r{n}"] = 100.0 * float(m[f"recall_at_{n}/all"])
    three = [row["tokyo_map"], row["roxf_medium"], row["rpar_medium"]]
    if all(math.isfinite(v) for v in three):
        row["avg"] = sum(three) / 3.0
        row["avg_thesis"] = sum(three) / 4.0
    return row


def to_markdown(rows: Sequence[tuple[str, Mapping[str, float]]], digits: int = 2) -> str:
    """Markdown table: one line per (label, row); NaN cells are left empty."""
    head = "| model | " + " | ".join(h for _, h in COLUMNS) + " |"
    sep = "|:--|" + "|".join("--:" for _ in COLUMNS) + "|"
    lines = [head, sep]
    for label, row in rows:
        cells = []
        for k, _ in COLUMNS:
            v = float(row.get(k, math.nan))
            cells.append(f"{v:.{digits}f}" if math.isfinite(v) else "")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def finite(row: Mapping[str, float]) -> dict[str, float]:
    """The evaluated cells (what MLflow and JSON get; NaN is not JSON)."""
    return {k: float(v) for k, v in row.items() if math.isfinite(float(v))}


#: MDUIT Table 1 layout: localization recall (%) at (0.25 m, 2°), (0.5 m, 5°), (5 m, 10°),
#: Day-All and Night-All; keys of `compute_metrics` are ``loc/{day,night}/<t>m_<r>deg``
LOC_THRESHOLDS: tuple[tuple[str, str], ...] = (
    ("0.25m_2deg", "0.25 m, 2°"),
    ("0.5m_5deg", "0.5 m, 5°"),
    ("5m_10deg", "5 m, 10°"),
)
LOC_COLUMNS: tuple[tuple[str, str], ...] = tuple(
    (f"{group}_{key}", f"{group.capitalize()} {label}")
    for group in ("day", "night")
    for key, label in LOC_THRESHOLDS
)


def localization_row(metrics: Mapping[str, float]) -> dict[str, float]:
    """Localization recall ×100 in the MDUIT table's columns (NaN where a group is empty).

    Raises when `metrics` has no localization at all (a dataset without full poses, e.g.
    Tokyo 24/7 or revisited Oxford), so a table is never filled with blanks silently."""
    if not any(k.startswith("loc/") for k in metrics):
        raise ValueError(
            "no localization recall in these metrics: the dataset needs query and database "
            "poses with orientation (RobotCar Seasons, Aachen, synthetic posed data)"
        )
    row = {}
    for group in ("day", "night"):
        for key, _ in LOC_THRESHOLDS:
            v = metrics.get(f"loc/{group}/{key}", math.nan)
            row[f"{group}_{key}"] = 100.0 * float(v)
    return row


def localization_markdown(rows: Sequence[tuple[str, Mapping[str, float]]]) -> str:
    """Markdown of `localization_row`s (one line per (label, row)); NaN cells empty."""
    head = "| model | " + " | ".join(h for _, h in LOC_COLUMNS) + " |"
    sep = "|:--|" + "|".join("--:" for _ in LOC_COLUMNS) + "|"
    lines = [head, sep]
    for label, row in rows:
        cells = [
            f"{float(row[k]):.1f}" if math.isfinite(float(row.get(k, math.nan))) else ""
            for k, _ in LOC_COLUMNS
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
