"""Dataset summary and contact sheet (`mdir data inspect`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from mdir.data.manifest import Manifest, read_manifest


def summary(uri: str) -> dict[str, Any]:
    """JSON-able summary: rows, conditions (name → count), splits, skipped per reason."""
    m = read_manifest(uri)
    return {
        "uri": uri,
        "name": m.name,
        "layout": m.layout,
        "paired": m.paired,
        "rows": m.rows,
        "conditions": m.condition_counts(),
        "splits": {sp: sum(per.values()) for sp, per in sorted(m.counts.items())},
        "counts": m.counts,
        "skipped": m.skipped,
        "converted": m.converted,
        "shards": len(m.shards),
        "bytes": sum(s.bytes for s in m.shards),
        "schema_version": m.schema_version,
    }


def contact_sheet(
    uri: str, per_condition: int = 8, tile: int = 96, split: str | None = None
) -> np.ndarray:
    """Labelled uint8 grid, one row of samples per condition (paired data:
    image and image_b side by side)."""

    from mdir.data.images import decode_rgb
    from mdir.data.shards import iter_tables

    m: Manifest = read_manifest(uri)
    picks: dict[str, list[np.ndarray]] = {c: [] for c in m.conditions}
    for t in iter_tables(m, ["image", "image_b", "condition", "split"]):
        conds = t["condition"].to_pylist()
        splits = t["split"].to_pylist()
        imgs = t["image"].to_pylist()
        imgs_b = t["image_b"].to_pylist()
        for c, sp, a, b in zip(conds, splits, imgs, imgs_b, strict=True):
            if split is not None and sp != split:
                continue
            lst = picks.setdefault(c, [])
            if len(lst) < per_condition:
                lst.append(decode_rgb(a))
                if b is not None:
                    lst.append(decode_rgb(b))
        if all(len(v) >= per_condition for v in picks.values()):
            break
    from mdir.viz import labelled_grid

    names = sorted(c for c, v in picks.items() if v)
    if not names:
        return np.full((tile, tile, 3), 255, np.uint8)
    cells = [picks[c] for c in names]
    return labelled_grid(
        cells, row_titles=names, title=f"{m.name}: one row per condition", tile=tile
    )
