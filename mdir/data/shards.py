"""Parquet shard IO: atomic writes with checksums, reads by shard or by manifest."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from mdir.data import io
from mdir.data.manifest import Manifest, ShardInfo
from mdir.data.schema import SCHEMA

SHARD_DIR = "shards"
ROW_GROUP_SIZE = 64  # small row groups: cheap partial reads for random access / iteration


def table_to_parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    # Images are already compressed: don't spend CPU compressing them again.
    compression = {
        f.name: ("none" if f.name in ("image", "image_b") else "zstd") for f in table.schema
    }
    pq.write_table(table, sink, row_group_size=ROW_GROUP_SIZE, compression=compression)
    return sink.getvalue().to_pybytes()


def write_shard(root: str, name: str, table: pa.Table, meta: dict | None = None) -> ShardInfo:
    """Write `table` to ``<root>/shards/<name>`` atomically; return its manifest entry.
    `meta` goes into the Parquet schema's ``mdir`` key (read back by `shard_meta`)."""
    table = table.cast(SCHEMA)
    if meta is not None:
        table = table.replace_schema_metadata({b"mdir": json.dumps(meta).encode()})
    data = table_to_parquet_bytes(table)
    rel = f"{SHARD_DIR}/{name}"
    io.write_bytes_atomic(io.join(root, SHARD_DIR, name), data)
    return ShardInfo(
        path=rel, rows=table.num_rows, bytes=len(data), sha256=hashlib.sha256(data).hexdigest()
    )


def existing_shard(root: str, name: str) -> ShardInfo | None:
    """Manifest entry of an already complete shard (resume), or None if absent/unreadable."""
    uri = io.join(root, SHARD_DIR, name)
    fs, path = io.get_fs(uri)
    try:
        if not fs.exists(path):
            return None
        data = io.read_bytes(uri)
        meta = pq.read_metadata(pa.BufferReader(data))
    except Exception:
        return None  # a broken file is simply rewritten
    return ShardInfo(
        path=f"{SHARD_DIR}/{name}",
        rows=meta.num_rows,
        bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )


def shard_meta(uri: str) -> dict:
    """The ``mdir`` key-value metadata of a shard's Parquet schema (what ingest and
    translation record there, e.g. bad-row counts), or {} when absent or unreadable."""
    fs, path = io.get_fs(uri)
    with fs.open(path, "rb") as f:
        md = pq.read_schema(f).metadata or {}
    try:
        return json.loads(md.get(b"mdir", b"{}"))
    except json.JSONDecodeError:
        return {}


def read_shard(uri: str, columns: list[str] | None = None) -> pa.Table:
    fs, path = io.get_fs(uri)
    with fs.open(path, "rb") as f:
        return pq.read_table(f, columns=columns)


def iter_tables(manifest: Manifest, columns: list[str] | None = None) -> Iterator[pa.Table]:
    """Row groups of every shard listed in the manifest, in order (bounded memory)."""
    for uri in manifest.shard_uris():
        fs, path = io.get_fs(uri)
        with fs.open(path, "rb") as f:
            pf = pq.ParquetFile(f)
            for i in range(pf.num_row_groups):
                yield pf.read_row_group(i, columns=columns)


def read_all(manifest: Manifest, columns: list[str] | None = None) -> pa.Table:
    tables = [read_shard(u, columns) for u in manifest.shard_uris()]
    if not tables:
        return SCHEMA.empty_table() if columns is None else SCHEMA.empty_table().select(columns)
    return pa.concat_tables(tables)


def remove_stale_shards(root: str, keep: list[ShardInfo]) -> int:
    """Delete shard files not listed in `keep` (left from an earlier, different run)."""
    fs, path = io.get_fs(io.join(root, SHARD_DIR))
    keep_names = {s.path.rsplit("/", 1)[-1] for s in keep}
    n = 0
    try:
        files = fs.ls(path, detail=False)
    except FileNotFoundError:
        return 0
    for p in files:
        base = p.rstrip("/").rsplit("/", 1)[-1]
        if base.endswith(".parquet") and base not in keep_names:
            fs.rm(p)
            n += 1
    return n
