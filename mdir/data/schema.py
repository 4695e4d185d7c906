"""Shard schema (Arrow / Parquet), version 1.

Columns (DESIGN.md "Data" plus a stable row id and names):

=============  ==============  ==============================================================
column         type            meaning
=============  ==============  ==============================================================
id             int64           stable row id, unique within a dataset (batches ↔ ImageStore)
image          binary          encoded bytes (original JPEG/PNG kept; other formats → PNG)
image_b        binary (null)   paired image (pix2pix), same encoding rules
width, height  int32           size of `image`
condition      string          day, night, dusk, snow, rain, ...
condition_b    string (null)   condition of `image_b`
place          int64           place / scene id (-1 unknown)
place_name     string          human readable place (e.g. original scene name)
pose           list<float64>   x, y, z, qw, qx, qy, qz (null when unknown)
split          string          train / val / test / db / query ...
source         string          original path (or synthetic recipe)
sha256         string          hex digest of the original file bytes
condition_raw  string (null)   the dataset's own condition name when a layout maps it (RobotCar
                               Seasons' ``snow`` → ``day``); null when ``condition`` is it
=============  ==============  ==============================================================
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 1

SCHEMA = pa.schema(
    [
        pa.field("id", pa.int64(), nullable=False),
        pa.field("image", pa.binary(), nullable=False),
        pa.field("image_b", pa.binary()),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("condition", pa.string(), nullable=False),
        pa.field("condition_b", pa.string()),
        pa.field("place", pa.int64(), nullable=False),
        pa.field("place_name", pa.string()),
        pa.field("pose", pa.list_(pa.float64())),
        pa.field("split", pa.string(), nullable=False),
        pa.field("source", pa.string()),
        pa.field("sha256", pa.string()),
        pa.field("condition_raw", pa.string()),
    ]
)

#: columns without image bytes (cheap to read for metadata)
META_COLUMNS = [f.name for f in SCHEMA if f.name not in ("image", "image_b")]


def rows_to_table(rows: list[dict]) -> pa.Table:
    """Rows (dicts with schema keys; missing optional keys → null) → Arrow table."""
    cols = {f.name: [r.get(f.name) for r in rows] for f in SCHEMA}
    return pa.Table.from_pydict(cols, schema=SCHEMA)
