"""A CSV (or JSON lines) list: ``path,condition[,place][,split][,x,y,z,qw,qx,qy,qz]``.

SRC is the list file itself (or a folder holding ``list.csv``). Relative paths are
relative to the list's folder. A pose is either seven columns x..qz or one ``pose``
column with seven space-separated numbers. Rows without path/condition, or with a pose
that is not seven numbers, are counted as ``malformed_row``.
"""

from __future__ import annotations

import csv
import io as _io
import json
import posixpath
from collections.abc import Iterator

from mdir.data import io
from mdir.data.layouts.base import BadRow, Item, LayoutBase

POSE_COLS = ("x", "y", "z", "qw", "qx", "qy", "qz")


class ListLayout(LayoutBase):
    name = "list"

    def _locate(self, src: str) -> str:
        fs, path = io.get_fs(src)
        if fs.isdir(path):
            for name in ("list.csv", "list.jsonl", "list.json"):
                if fs.exists(posixpath.join(path, name)):
                    return io.join(src, name)
            raise io.DataPathError(f"{src!r} is a folder without list.csv / list.jsonl")
        return src

    def _rows(self, uri: str) -> Iterator[dict]:
        text = io.read_bytes(uri).decode("utf-8", errors="replace")
        if uri.endswith((".jsonl", ".json")):
            for i, line in enumerate(text.splitlines()):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    yield (
                        row
                        if isinstance(row, dict)
                        else {"__bad__": f"line {i + 1}: not an object"}
                    )
                except json.JSONDecodeError as e:
                    yield {"__bad__": f"line {i + 1}: {e}"}
        else:
            yield from csv.DictReader(_io.StringIO(text))

    def scan(self, src: str) -> Iterator[Item | BadRow]:
        uri = self._locate(src)
        base = uri.rsplit("/", 1)[0] if "/" in uri else "."
        for n, row in enumerate(self._rows(uri), start=1):
            where = f"{uri}:{n}"
            if "__bad__" in row:
                yield BadRow("malformed_row", where, row["__bad__"])
                continue
            path = str(row.get("path") or "").strip()
            cond = str(row.get("condition") or "").strip()
            if not path or not cond:
                yield BadRow("malformed_row", where, "missing path or condition")
                continue
            pose = None
            try:
                if row.get("pose") not in (None, ""):
                    vals = (
                        row["pose"]
                        if isinstance(row["pose"], list)
                        else str(row["pose"]).replace(",", " ").split()
                    )
                    pose = tuple(float(v) for v in vals)
                elif any(row.get(c) not in (None, "") for c in POSE_COLS):
                    pose = tuple(float(row[c]) for c in POSE_COLS)
                if pose is not None and len(pose) != 7:
                    raise ValueError(f"{len(pose)} numbers")
            except (TypeError, ValueError, KeyError) as e:
                yield BadRow("malformed_row", where, f"bad pose: {e}")
                continue
            full = path if ("://" in path or path.startswith("/")) else io.join(base, path)
            place = row.get("place")
            place = None if place in (None, "") else place
            split = str(row.get("split") or "").strip() or None
            yield Item(source=full, condition=cond, place=place, pose=pose, split=split)
