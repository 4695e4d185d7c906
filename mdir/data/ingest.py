"""Ingest: any layout → validated Parquet shards + manifest (local or s3://).

The scan of SRC (a `Layout`) is sorted, and cut into chunks of `rows_per_shard` inputs.
Chunk i becomes ``shards/part-<i>-<digest>.parquet`` where the digest hashes the chunk's
inputs (path, metadata, file size). Hence:

* atomic: every shard is written under a temporary name and renamed when complete; the
  manifest is written last, so an interrupted ingest leaves nothing a reader follows;
* idempotent / resumable: a re-run finds complete shards of unchanged chunks by name and
  keeps them (their skip counts are stored in the shard's Parquet metadata), redoes the
  rest, then removes shards that no longer belong to the dataset. No duplicates.

Bad inputs are skipped or converted and counted per reason (see `mdir.data.images`);
every skipped input is listed in ``ingest_log.jsonl`` next to the manifest.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from mdir.data import io
from mdir.data.images import BadInput, prepare_image
from mdir.data.layouts import BadRow, Item, get_layout
from mdir.data.manifest import Manifest, ShardInfo, write_manifest
from mdir.data.schema import rows_to_table
from mdir.data.shards import (
    SHARD_DIR,
    existing_shard,
    read_shard,
    remove_stale_shards,
    shard_meta,
    write_shard,
)

log = logging.getLogger(__name__)

SPLIT_FRACTIONS = (("train", 8), ("val", 1), ("test", 1))  # tenths, by hash of the source


def stable_int(text: str) -> int:
    """Stable non-negative int64 from a string (place names → place ids)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") & ((1 << 62) - 1)


def hash_split(source: str) -> str:
    bucket = stable_int(source) % 10
    acc = 0
    for name, tenths in SPLIT_FRACTIONS:
        acc += tenths
        if bucket < acc:
            return name
    return "train"


@dataclass
class ChunkResult:
    rows: list[dict] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)
    converted: Counter = field(default_factory=Counter)
    log: list[dict] = field(default_factory=list)


def _read(uri: str) -> bytes:
    fs, path = io.get_fs(uri)
    try:
        with fs.open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise BadInput("missing", uri) from None
    except (PermissionError, IsADirectoryError, OSError) as e:  # EACCES, ELOOP, EIO, ...
        raise BadInput("unreadable", f"{type(e).__name__}: {e}") from None


def _prepare(item: Item, min_size: int):
    a = prepare_image(_read(item.source), min_size=min_size)
    b = None
    if item.source_b is not None:
        try:
            b = prepare_image(_read(item.source_b), min_size=min_size)
        except BadInput as e:
            raise BadInput(e.reason, f"image_b {item.source_b}: {e.detail}") from None
    return a, b


def _process_chunk(
    items: list[tuple[int, Item]], min_size: int, seen: set[str], workers: int
) -> ChunkResult:
    res = ChunkResult()

    def work(pair: tuple[int, Item]):
        try:
            return pair, _prepare(pair[1], min_size), None
        except BadInput as e:
            return pair, None, e
        except Exception as e:  # never let one input kill the ingest
            return pair, None, BadInput("unreadable", f"{type(e).__name__}: {e}")

    with ThreadPoolExecutor(max_workers=max(1, workers)) as ex:
        results = list(ex.map(work, items))
    for (idx, item), prepared, err in results:
        if err is None and prepared is not None:
            key = prepared[0].sha256 + (prepared[1].sha256 if prepared[1] else "")
            if key in seen:
                err = BadInput("duplicate", "same bytes as an earlier input")
            else:
                seen.add(key)
        if err is not None:
            res.skipped[err.reason] += 1
            res.log.append({"source": item.source, "reason": err.reason, "detail": err.detail})
            continue
        a, b = prepared
        for p in (a, b):
            if p is not None and p.converted:
                res.converted[p.converted] += 1
        place_name = None if item.place is None else str(item.place)
        if item.place is None:
            place = -1
        elif isinstance(item.place, int) or (
            isinstance(item.place, str) and item.place.lstrip("-").isdigit()
        ):
            place = int(item.place)
        else:
            place = stable_int(str(item.place))
        res.rows.append(
            {
                "id": idx,
                "image": a.data,
                "image_b": b.data if b else None,
                "width": a.width,
                "height": a.height,
                "condition": item.condition,
                "condition_b": item.condition_b,
                "place": place,
                "place_name": place_name,
                "pose": list(item.pose) if item.pose else None,
                "split": item.split or hash_split(item.source),
                "source": item.source,
                "sha256": a.sha256 + ("," + b.sha256 if b else ""),
                "condition_raw": item.condition_raw,
            }
        )
    return res


def _chunk_digest(items: list[tuple[int, Item]]) -> str:
    h = hashlib.sha256()
    for idx, it in items:
        h.update(f"{idx}|{it.fingerprint()}\n".encode())
        for uri in (it.source, it.source_b):
            if uri:
                try:
                    fs, path = io.get_fs(uri)
                    h.update(str(fs.size(path)).encode())
                except Exception:
                    h.update(b"?")
    return h.hexdigest()[:16]


def ingest(
    src: str,
    out: str,
    layout: str = "folders",
    *,
    rows_per_shard: int = 256,
    min_size: int = 16,
    workers: int = 2,
    layout_options: dict | None = None,
    name: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Manifest:
    """Convert SRC (layout `layout`) into shards under OUT; returns the manifest."""
    lay = get_layout(layout, **(layout_options or {}))  # unknown layout fails first
    io.check_reachable(src)  # nonexistent SRC / unreachable bucket: clear error now
    io.check_reachable(out, must_exist=False)
    io.makedirs(out)
    io.remove_temp_files(out)  # leftovers of an interrupted run
    items: list[tuple[int, Item]] = []
    skipped: Counter = Counter()
    converted: Counter = Counter()
    log_rows: list[dict] = []
    for entry in lay.scan(src):
        if isinstance(entry, BadRow):
            skipped[entry.reason] += 1
            log_rows.append(
                {"source": entry.source, "reason": entry.reason, "detail": entry.detail}
            )
        else:
            items.append((len(items) + sum(skipped.values()), entry))
    chunks = [items[i : i + rows_per_shard] for i in range(0, len(items), rows_per_shard)]
    shards: list[ShardInfo] = []
    keep: list[ShardInfo] = []
    seen: set[str] = set()
    counts: dict[str, dict[str, int]] = {}
    conditions: set[str] = set()
    for ci, chunk in enumerate(chunks):
        fname = f"part-{ci:05d}-{_chunk_digest(chunk)}.parquet"
        info = existing_shard(out, fname)
        if info is not None:  # resume: complete shard from an earlier run
            t = read_shard(
                io.join(out, SHARD_DIR, fname), ["condition", "condition_b", "split", "sha256"]
            )
            meta = shard_meta(io.join(out, SHARD_DIR, fname))
            for s in t["sha256"].to_pylist():
                seen.add(s.replace(",", ""))
            skipped.update(meta.get("skipped", {}))
            converted.update(meta.get("converted", {}))
            log_rows.extend(meta.get("log", []))
            rows_meta = t.to_pylist()
        else:
            res = _process_chunk(chunk, min_size, seen, workers)
            table = rows_to_table(res.rows)
            md = {"skipped": dict(res.skipped), "converted": dict(res.converted), "log": res.log}
            info = write_shard(out, fname, table, md)
            skipped.update(res.skipped)
            converted.update(res.converted)
            log_rows.extend(res.log)
            rows_meta = [
                {"condition": r["condition"], "condition_b": r["condition_b"], "split": r["split"]}
                for r in res.rows
            ]
        keep.append(info)
        if info.rows:
            shards.append(info)
        for r in rows_meta:
            conditions.add(r["condition"])
            counts.setdefault(r["split"], {}).setdefault(r["condition"], 0)
            counts[r["split"]][r["condition"]] += 1
        if progress:
            progress(ci + 1, len(chunks))
    for r in log_rows:
        log.info("skipped %s: %s %s", r["source"], r["reason"], r.get("detail", ""))
    manifest = Manifest(
        name=name or src.rstrip("/").rsplit("/", 1)[-1],
        layout=layout,
        source=src,
        paired=lay.paired,
        conditions=sorted(conditions),
        counts=counts,
        shards=shards,
        skipped=dict(sorted(skipped.items())),
        converted=dict(sorted(converted.items())),
        extra={"layout": lay.extra(src)} if lay.extra(src) else {},
    )
    io.write_bytes_atomic(
        io.join(out, "ingest_log.jsonl"), "".join(json.dumps(r) + "\n" for r in log_rows).encode()
    )
    write_manifest(out, manifest)
    remove_stale_shards(out, keep)
    manifest.uri = str(out).rstrip("/")
    return manifest


__all__ = ["ingest", "hash_split", "stable_int"]
