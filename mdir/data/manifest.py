"""`manifest.json`: the one file readers trust.

A dataset is the set of shards listed in its manifest; the manifest is written last and
atomically, so a shard written by a crashed ingest (or any stray file) is never read.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, Field

from mdir.data import io
from mdir.data.schema import SCHEMA_VERSION

MANIFEST_NAME = "manifest.json"


class ShardInfo(BaseModel):
    """One Parquet shard: path relative to the dataset root, row count, checksum."""

    path: str
    rows: int
    bytes: int
    sha256: str


class Manifest(BaseModel):
    """Dataset summary: counts per split and condition, shards, skipped inputs per reason."""

    schema_version: int = SCHEMA_VERSION
    name: str = ""
    layout: str = Field("", description="synth, folders, paired, list, or a dataset layout name")
    source: str = ""
    paired: bool = False
    conditions: list[str] = Field(default_factory=list, description="condition index ↔ name")
    counts: dict[str, dict[str, int]] = Field(
        default_factory=dict, description="split → condition → rows"
    )
    shards: list[ShardInfo] = Field(default_factory=list)
    skipped: dict[str, int] = Field(default_factory=dict, description="reason → inputs skipped")
    converted: dict[str, int] = Field(
        default_factory=dict, description="reason → inputs converted and kept"
    )
    extra: dict[str, Any] = Field(
        default_factory=dict, description="layout specific (e.g. ground truth)"
    )
    uri: str = Field("", exclude=True, description="where it was read from (not stored)")

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards)

    @property
    def splits(self) -> list[str]:
        return sorted(self.counts)

    def count(self, split: str | None = None, conditions: list[str] | None = None) -> int:
        """Rows in `split` (None = all) with a condition in `conditions` (None/empty = all)."""
        total = 0
        for sp, per in self.counts.items():
            if split is not None and sp != split:
                continue
            for c, n in per.items():
                if not conditions or c in conditions:
                    total += n
        return total

    def condition_counts(self) -> dict[str, int]:
        out: dict[str, int] = {c: 0 for c in self.conditions}
        for per in self.counts.values():
            for c, n in per.items():
                out[c] = out.get(c, 0) + n
        return out

    def condition_index(self, name: str) -> int:
        try:
            return self.conditions.index(name)
        except ValueError:
            raise KeyError(
                f"condition {name!r} not in dataset {self.uri or self.name!r} (has {self.conditions})"
            ) from None

    def shard_uris(self) -> list[str]:
        return [io.join(self.uri, s.path) for s in self.shards]

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True)


def read_manifest(uri: str) -> Manifest:
    """Read ``<uri>/manifest.json``; raises `DataPathError` naming the URI when absent."""
    io.check_reachable(uri, manifest=True)
    try:
        data = json.loads(io.read_bytes(io.join(uri, MANIFEST_NAME)))
    except json.JSONDecodeError as e:
        raise io.DataPathError(f"{uri!r}: manifest.json is not valid JSON: {e}") from e
    m = Manifest.model_validate(data)
    if m.schema_version > SCHEMA_VERSION:
        raise io.DataPathError(
            f"{uri!r}: schema version {m.schema_version} is newer than this mdir ({SCHEMA_VERSION})"
        )
    m.uri = str(uri).rstrip("/")
    return m


def write_manifest(uri: str, manifest: Manifest) -> None:
    io.write_bytes_atomic(io.join(uri, MANIFEST_NAME), (manifest.to_json() + "\n").encode())
