"""Translate a whole mdir dataset with a registered generator on Ray Data.

Plan (driver): the source rows to translate — condition in ``conditions`` (default: every
condition except the target ``to``), sorted by id — are cut into chunks of
`rows_per_shard`; chunk i becomes ``shards/part-<i>-<digest>.parquet``, the digest hashing
the chunk's row ids and source checksums, the model version, the target and the reference.

Run: Ray Data items (a source row group and ≤ batch_size of its rows still to do) →
`map_batches` on an actor pool of `TranslateActor` (one model load per actor; each reads its
items' rows, decodes, translates, encodes; one GPU each when the cluster has GPUs, else CPU
actors) → the driver collects translated rows per chunk and writes a chunk's shard as
soon as all its rows came back, like ingest:

* atomic — temporary name, then rename; the manifest is written last;
* resumable — a re-run keeps the complete shards of an earlier run (found by name), sends
  only the other rows through the actors, then removes shards that no longer belong;
  each source row lands in exactly one shard, so no duplicates;
* bad rows (undecodable image, a size the network refuses) are counted per reason in the
  manifest's ``skipped``, listed in ``translate_log.jsonl`` and in their shard's metadata
  (so a resumed run counts them again), never fatal.

Rows keep the source schema: ``id`` = the source id, ``condition`` = the target,
``source`` = ``translated:<source id>``, ``image`` = PNG of the translation, ``sha256`` of
those bytes; place, pose, split are copied. The manifest's ``extra.translation`` records the
model (URI, name, version, run), the source dataset, the source conditions, the target and
the MDUIT reference (source id or file).
"""

from __future__ import annotations

import hashlib
import io as pyio
import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from mdir.data import io
from mdir.data.manifest import Manifest, ShardInfo, read_manifest, write_manifest
from mdir.data.schema import rows_to_table
from mdir.data.shards import (
    SHARD_DIR,
    existing_shard,
    read_all,
    read_shard,
    remove_stale_shards,
    shard_meta,
    write_shard,
)

log = logging.getLogger(__name__)

LOG_NAME = "translate_log.jsonl"
#: source columns the actors read (image bytes + what is copied into the translated row)
READ_COLUMNS = ["id", "image", "condition", "place", "place_name", "pose", "split", "sha256"]
#: what an actor returns per row (``error`` empty for a translated row)
OUT_SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("image", pa.binary()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("place", pa.int64()),
        ("place_name", pa.string()),
        ("pose", pa.list_(pa.float64())),
        ("split", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
    ]
)


class TranslationInterrupted(RuntimeError):
    """Raised by `translate_dataset(stop_after_shards=k)` after k new shards (drills, tests)."""


@dataclass
class TranslateResult:
    """What a `translate_dataset` call did."""

    manifest: Manifest
    translated: int
    skipped: dict[str, int]
    shards_written: int
    shards_reused: int
    actors: int
    device: str
    seconds: float
    images_per_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- actors


def encode_png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = pyio.BytesIO()
    Image.fromarray(image, "RGB").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


class TranslateActor:
    """One Ray Data actor: loads the registered generator once, then reads and translates
    batches of work items (a source row group and positions in it, see `read_items`) into
    rows of `OUT_SCHEMA`. Reading here rather than in a separate task stage keeps the
    image bytes out of the object store and leaves no stage waiting for CPUs the actors
    hold."""

    def __init__(
        self,
        model_uri: str,
        device: str,
        source_uri: str,
        reference_png: bytes | None = None,
        threads: int = 1,
    ) -> None:
        import torch

        from mdir.data.images import decode_rgb
        from mdir.registry.generators import load_translator
        from mdir.translation.any_size import to_unit

        torch.set_num_threads(max(1, threads))
        self.translator = load_translator(model_uri, device=device)
        self.source_uri = source_uri
        self.reference = None if reference_png is None else to_unit(decode_rgb(reference_png))

    def __call__(self, items: pa.Table) -> pa.Table:
        from mdir.data.images import decode_rgb
        from mdir.translation.any_size import translate_uint8

        rows = read_rows(items, self.source_uri).to_pylist()
        images: list[np.ndarray] = []
        ok: list[int] = []
        errors: dict[int, tuple[str, str]] = {}
        for i, r in enumerate(rows):
            try:
                images.append(decode_rgb(r["image"]))
                ok.append(i)
            except Exception as e:
                errors[i] = ("undecodable", f"{type(e).__name__}: {e}")
        outputs = translate_uint8(self.translator, images, self.reference)
        results: dict[int, np.ndarray] = {}
        for i, y in zip(ok, outputs, strict=True):
            if isinstance(y, Exception):
                errors[i] = ("translate_failed", f"{type(y).__name__}: {y}"[:500])
            else:
                results[i] = y
        out = []
        for i, r in enumerate(rows):
            y = results.get(i)
            reason, detail = errors.get(i, ("", ""))
            out.append(
                {
                    "id": r["id"],
                    "image": encode_png(y) if y is not None else b"",
                    "width": 0 if y is None else y.shape[1],
                    "height": 0 if y is None else y.shape[0],
                    "place": r["place"],
                    "place_name": r["place_name"],
                    "pose": r["pose"],
                    "split": r["split"],
                    "reason": reason,
                    "detail": detail,
                }
            )
        return pa.Table.from_pylist(out, schema=OUT_SCHEMA)


# ---------------------------------------------------------------- reading


def read_items(manifest: Manifest, todo: set[int], rows_per_item: int) -> list[dict]:
    """Work items for Ray Data: (shard path, row group, positions) with at most
    `rows_per_item` rows still to translate each, so the actors share even small datasets
    (a 64-row group would otherwise be one block for one actor) and a resumed run reads
    only the row groups with work left."""
    from mdir.data.pipeline import row_group_items
    from mdir.data.shards import iter_tables

    items = []
    groups = row_group_items(manifest)
    for group, t in zip(groups, iter_tables(manifest, ["id"]), strict=True):
        pos = [i for i, v in enumerate(t["id"].to_pylist()) if v in todo]
        for k in range(0, len(pos), rows_per_item):
            items.append({**group, "rows": pos[k : k + rows_per_item]})
    return items


def read_rows(batch: pa.Table, uri: str) -> pa.Table:
    """The `READ_COLUMNS` of each work item's rows (one row group each)."""
    import pyarrow.parquet as pq

    fs, _ = io.get_fs(uri)
    out = []
    for item in batch.to_pylist():
        with fs.open(item["path"], "rb") as f:
            t = pq.ParquetFile(f).read_row_group(item["row_group"], columns=READ_COLUMNS)
        out.append(t.take(pa.array(item["rows"], pa.int64())))
    return pa.concat_tables(out)


# ---------------------------------------------------------------- plan


def select_rows(manifest: Manifest, conditions: list[str], to: str) -> pa.Table:
    """Metadata (id, condition, sha256) of the rows to translate, sorted by id."""
    for c in conditions:
        manifest.condition_index(c)  # a clear KeyError naming the dataset
    meta = read_all(manifest, ["id", "condition", "sha256"])
    wanted = conditions or [c for c in manifest.conditions if c != to]
    import pyarrow.compute as pc

    meta = meta.filter(pc.is_in(meta["condition"], value_set=pa.array(wanted, pa.string())))
    return meta.sort_by("id")


def chunk_digest(ids: list[int], sha: list[str], fingerprint: str) -> str:
    h = hashlib.sha256(fingerprint.encode())
    for i, s in zip(ids, sha, strict=True):
        h.update(f"{i}|{s}\n".encode())
    return h.hexdigest()[:16]


def pick_reference(manifest: Manifest, to: str) -> tuple[int, bytes]:
    """(id, image bytes) of the lowest-id row of condition `to` (MDUIT's target appearance)."""
    import pyarrow.compute as pc

    for uri in manifest.shard_uris():
        t = read_shard(uri, ["id", "condition", "image"])
        t = t.filter(pc.equal(t["condition"], to)).sort_by("id")
        if t.num_rows:
            return int(t["id"][0].as_py()), t["image"][0].as_py()
    raise ValueError(
        f"--to {to!r}: the model translates towards a reference image and dataset "
        f"{manifest.uri!r} has no {to!r} row to take one from; give --reference IMAGE"
    )


def _translated_row(r: dict, to: str) -> dict:
    return {
        "id": r["id"],
        "image": r["image"],
        "image_b": None,
        "width": r["width"],
        "height": r["height"],
        "condition": to,
        "condition_b": None,
        "place": r["place"],
        "place_name": r["place_name"],
        "pose": r["pose"],
        "split": r["split"],
        "source": f"translated:{r['id']}",
        "sha256": hashlib.sha256(r["image"]).hexdigest(),
    }


# ---------------------------------------------------------------- run


def _actor_plan(num_gpus: int | None, actors: int) -> tuple[int, float, str]:
    """(actors, GPUs per actor, device): one GPU actor per GPU when the cluster has GPUs
    (or `num_gpus` of them), else `actors` CPU actors."""
    import ray

    gpus = int(ray.cluster_resources().get("GPU", 0)) if num_gpus is None else num_gpus
    if gpus > 0:
        return gpus, 1.0, "cuda"
    return max(1, actors), 0.0, "cpu"


def translate_dataset(
    src: str,
    out: str,
    model_uri: str,
    *,
    to: str,
    conditions: list[str] | None = None,
    num_gpus: int | None = None,
    actors: int = 2,
    batch_size: int = 8,
    rows_per_shard: int = 256,
    reference: bytes | None = None,
    name: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    stop_after_shards: int | None = None,
) -> TranslateResult:
    """Translate SRC's rows of `conditions` towards `to` with `model_uri`; write OUT.

    Connects to Ray (``RAY_ADDRESS`` or a private local instance) if not connected.
    `stop_after_shards` interrupts the run after that many new shards (drills / tests)."""
    import ray

    from mdir.data.raylocal import init_ray
    from mdir.registry.aliases import resolve_model
    from mdir.registry.generators import load_translator
    from mdir.registry.uri import is_model_uri
    from mdir.runtime import worker_runtime_env

    t0 = time.perf_counter()
    conditions = list(conditions or [])
    src_manifest = read_manifest(src)
    if not to:
        raise ValueError("--to: give the target condition written into the translated rows")
    resolved = resolve_model(model_uri, field="--model") if is_model_uri(model_uri) else None
    model_name = resolved.name if resolved else model_uri
    version = resolved.version if resolved else None
    pinned = resolved.pinned_uri if resolved else model_uri
    probe = load_translator(pinned)  # fails here, before any actor, on a bad model
    ref_info: dict[str, Any] = {}
    if probe.needs_reference:
        if reference is None:
            ref_id, reference = pick_reference(src_manifest, to)
            ref_info = {"reference_id": ref_id}
        else:
            ref_info = {"reference_sha256": hashlib.sha256(reference).hexdigest()}
    else:
        reference = None
    del probe
    meta = select_rows(src_manifest, conditions, to)
    fingerprint = json.dumps(
        {"model": model_name, "version": version, "to": to, **ref_info}, sort_keys=True
    )
    ids = meta["id"].to_pylist()
    shas = meta["sha256"].to_pylist()
    chunks: list[list[int]] = [
        ids[i : i + rows_per_shard] for i in range(0, len(ids), rows_per_shard)
    ]
    names = [
        f"part-{ci:05d}-{chunk_digest(c, shas[ci * rows_per_shard : ci * rows_per_shard + len(c)], fingerprint)}.parquet"
        for ci, c in enumerate(chunks)
    ]
    io.check_reachable(out, must_exist=False)
    io.makedirs(out)
    io.remove_temp_files(out)

    infos: dict[int, ShardInfo] = {}
    skipped: Counter = Counter()
    log_rows: list[dict] = []
    counts: dict[str, dict[str, int]] = {}
    reused = 0

    def account(ci: int, info: ShardInfo, splits: list[str], md: dict) -> None:
        infos[ci] = info
        skipped.update(md.get("skipped", {}))
        log_rows.extend(md.get("log", []))
        for sp in splits:
            counts.setdefault(sp, {}).setdefault(to, 0)
            counts[sp][to] += 1

    todo_chunks: dict[int, list[int]] = {}
    for ci, fname in enumerate(names):
        info = existing_shard(out, fname)
        if info is None:
            todo_chunks[ci] = chunks[ci]
            continue
        uri = io.join(out, SHARD_DIR, fname)
        account(ci, info, read_shard(uri, ["split"])["split"].to_pylist(), shard_meta(uri))
        reused += 1
    n_actors, gpus_per_actor, device = 0, 0.0, "cpu"
    written = 0
    if todo_chunks:
        init_ray()
        n_actors, gpus_per_actor, device = _actor_plan(num_gpus, actors)
        chunk_of = {i: ci for ci, c in todo_chunks.items() for i in c}
        remaining = {ci: len(c) for ci, c in todo_chunks.items()}
        buffers: dict[int, list[dict]] = {ci: [] for ci in todo_chunks}
        items = read_items(src_manifest, set(chunk_of), batch_size)
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        ds = ds.map_batches(
            TranslateActor,
            fn_constructor_kwargs={
                "model_uri": pinned,
                "device": device,
                "source_uri": src_manifest.uri,
                "reference_png": reference,
                "threads": 1,
            },
            batch_size=None,  # one work item (≤ batch_size rows) per call
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=n_actors),
            num_cpus=1,
            num_gpus=gpus_per_actor,
            # the actors load the model from the driver's tracking server: a cluster started
            # before MLFLOW_TRACKING_URI was set would otherwise give them MLflow's default
            # (a local sqlite file, which concurrent actors race to create)
            runtime_env=worker_runtime_env({"MLFLOW_TRACKING_URI": _tracking_uri()}),
        )
        done = 0
        total = len(chunk_of)
        for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            for r in batch.to_pylist():
                ci = chunk_of.get(r["id"])
                if ci is None or remaining.get(ci, 0) <= 0:
                    continue  # not planned (cannot happen: actors filter) or already seen
                buffers[ci].append(r)
                remaining[ci] -= 1
                done += 1
                if remaining[ci] == 0:
                    info, splits, md = _write_chunk(out, names[ci], buffers.pop(ci), to)
                    account(ci, info, splits, md)
                    written += 1
                    if stop_after_shards is not None and written >= stop_after_shards:
                        raise TranslationInterrupted(
                            f"stopped after {written} new shards (stop_after_shards)"
                        )
            if progress:
                progress(done, total)
        missing = {ci: n for ci, n in remaining.items() if n > 0}
        if missing:
            raise RuntimeError(
                f"{sum(missing.values())} planned rows never came back from the actors "
                f"(chunks {sorted(missing)}); re-run to resume"
            )
    for r in log_rows:
        log.info("skipped %s: %s %s", r.get("id"), r["reason"], r.get("detail", ""))
    keep = [infos[ci] for ci in sorted(infos)]
    manifest = Manifest(
        name=name or f"{src_manifest.name or 'dataset'}-{to}",
        layout="translated",
        source=src_manifest.uri,
        paired=False,
        conditions=[to],
        counts=counts,
        shards=[s for s in keep if s.rows],
        skipped=dict(sorted(skipped.items())),
        extra={
            "translation": {
                "model_uri": model_uri,
                "model_name": model_name,
                "model_version": version,
                "model_run_id": resolved.run_id if resolved else None,
                "source_dataset": src_manifest.uri,
                "source_conditions": conditions or [c for c in src_manifest.conditions if c != to],
                "to": to,
                **ref_info,
            }
        },
    )
    io.write_bytes_atomic(
        io.join(out, LOG_NAME), "".join(json.dumps(r) + "\n" for r in log_rows).encode()
    )
    write_manifest(out, manifest)
    remove_stale_shards(out, keep)
    manifest.uri = str(out).rstrip("/")
    seconds = time.perf_counter() - t0
    translated = manifest.rows
    return TranslateResult(
        manifest=manifest,
        translated=translated,
        skipped=dict(skipped),
        shards_written=written,
        shards_reused=reused,
        actors=n_actors,
        device=device,
        seconds=seconds,
        images_per_s=translated / seconds if seconds > 0 else 0.0,
    )


def _write_chunk(
    out: str, fname: str, rows: list[dict], to: str
) -> tuple[ShardInfo, list[str], dict]:
    """Write one chunk's shard (good rows sorted by id; bad rows in the metadata)."""
    good = sorted((r for r in rows if not r["reason"]), key=lambda r: r["id"])
    bad = sorted((r for r in rows if r["reason"]), key=lambda r: r["id"])
    md = {
        "skipped": dict(Counter(r["reason"] for r in bad)),
        "log": [{"id": r["id"], "reason": r["reason"], "detail": r["detail"]} for r in bad],
    }
    info = write_shard(out, fname, rows_to_table([_translated_row(r, to) for r in good]), md)
    return info, [r["split"] for r in good], md


def _tracking_uri() -> str:
    import mlflow

    return str(mlflow.get_tracking_uri())


__all__ = ["TranslateActor", "TranslateResult", "TranslationInterrupted", "translate_dataset"]
