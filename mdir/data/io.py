"""Filesystem access for shards: local paths and ``s3://`` URIs through fsspec.

S3 endpoint and credentials come from the environment only (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``); nothing is read
from config files, so configs never carry secrets.

Atomic writes: a file is written under a hidden temporary name in the same directory and
then renamed (local: ``os.replace``; S3: the object appears only when its upload completes,
and the temporary key starts with ``_tmp`` so readers, which only follow the manifest,
never see it).
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import uuid
from collections.abc import Iterator
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem


class DataPathError(RuntimeError):
    """A dataset URI that cannot be used; the message names the URI."""


def is_remote(uri: str) -> bool:
    return "://" in str(uri) and not str(uri).startswith("file://")


def _s3_kwargs() -> dict[str, Any]:
    kw: dict[str, Any] = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        kw["endpoint_url"] = endpoint
    if os.environ.get("AWS_ACCESS_KEY_ID"):
        # Passed explicitly so that the filesystem object, pickled into Ray tasks, works
        # on workers whose environment lacks the variables.
        kw["key"] = os.environ["AWS_ACCESS_KEY_ID"]
        kw["secret"] = os.environ.get("AWS_SECRET_ACCESS_KEY")
        if os.environ.get("AWS_SESSION_TOKEN"):
            kw["token"] = os.environ["AWS_SESSION_TOKEN"]
    region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
    if region:
        kw["client_kwargs"] = {"region_name": region}
    # Never cache listings: shards are written and read by different processes. (The
    # filesystem instance itself is cached by fsspec: creating a session is slow.)
    kw["use_listings_cache"] = False
    return kw


def get_fs(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path inside it) for a local path, file:// or s3:// URI."""
    uri = str(uri)
    if uri.startswith("s3://") or uri.startswith("s3a://"):
        import s3fs

        return s3fs.S3FileSystem(**_s3_kwargs()), uri.split("://", 1)[1].rstrip("/")
    if is_remote(uri):
        fs, path = fsspec.core.url_to_fs(uri)
        return fs, path
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    return LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))


def join(uri: str, *parts: str) -> str:
    """Join path parts to a URI (keeps the scheme)."""
    uri = str(uri).rstrip("/")
    if is_remote(uri):
        return posixpath.join(uri, *parts)
    return os.path.join(uri, *parts)


def full_uri(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """Path inside `fs` → URI usable with `get_fs` again."""
    if isinstance(fs, LocalFileSystem):
        return path
    proto = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
    proto = "s3" if proto in ("s3", "s3a") else proto
    return f"{proto}://{path}"


def check_reachable(uri: str, *, must_exist: bool = True, manifest: bool = False) -> None:
    """Fail fast (before any cluster resources are allocated) if `uri` cannot be used.

    Raises `DataPathError` naming the URI: unknown scheme, bucket missing or unreachable,
    credentials refused, path missing (when `must_exist`), no ``manifest.json`` (when
    `manifest`).
    """
    try:
        fs, path = get_fs(uri)
    except Exception as e:  # unknown protocol, missing driver
        raise DataPathError(f"cannot open {uri!r}: {e}") from e
    try:
        if is_remote(uri):
            bucket = path.split("/", 1)[0]
            if not fs.exists(bucket):
                raise DataPathError(f"bucket of {uri!r} does not exist or is not reachable")
        if must_exist and not fs.exists(path):
            raise DataPathError(f"dataset path {uri!r} does not exist")
        if manifest and not fs.exists(
            posixpath.join(path, "manifest.json")
            if is_remote(uri)
            else os.path.join(path, "manifest.json")
        ):
            raise DataPathError(
                f"{uri!r} has no manifest.json (not an mdir dataset; run `mdir data synth` or `mdir data ingest`)"
            )
    except DataPathError:
        raise
    except Exception as e:  # connection refused, auth errors, ...
        raise DataPathError(f"{uri!r} is not reachable: {type(e).__name__}: {e}") from e


def read_bytes(uri: str) -> bytes:
    fs, path = get_fs(uri)
    with fs.open(path, "rb") as f:
        return f.read()


def write_bytes_atomic(uri: str, data: bytes) -> None:
    """Write `data` so that readers see either the old file or the complete new one."""
    fs, path = get_fs(uri)
    parent, name = posixpath.split(path) if is_remote(uri) else os.path.split(path)
    tmp = (posixpath.join if is_remote(uri) else os.path.join)(
        parent, f"_tmp.{uuid.uuid4().hex}.{name}"
    )
    if isinstance(fs, LocalFileSystem):
        os.makedirs(parent, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return
    # Object stores: a PUT is atomic; the temp key + move keeps the "never half a file"
    # guarantee for multipart uploads too.
    try:
        with fs.open(tmp, "wb") as f:
            f.write(data)
        fs.mv(tmp, path)
    finally:
        with contextlib.suppress(Exception):
            if fs.exists(tmp):
                fs.rm(tmp)


def makedirs(uri: str) -> None:
    fs, path = get_fs(uri)
    if isinstance(fs, LocalFileSystem):
        os.makedirs(path, exist_ok=True)


def remove_temp_files(uri: str) -> int:
    """Delete leftovers of interrupted writes (``_tmp.*``) under `uri`; returns how many."""
    fs, path = get_fs(uri)
    n = 0
    with contextlib.suppress(FileNotFoundError):
        for p in fs.find(path):
            if posixpath.basename(p).startswith("_tmp."):
                with contextlib.suppress(Exception):
                    fs.rm(p)
                    n += 1
    return n


def list_files(uri: str) -> Iterator[str]:
    """All files below `uri` (recursively), as paths inside the filesystem, sorted."""
    fs, path = get_fs(uri)
    yield from sorted(fs.find(path))


def arrow_filesystem(uri: str):
    """pyarrow filesystem for `uri` (for pyarrow / Ray Data readers), or None for local."""
    if not is_remote(uri):
        return None
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    fs, _ = get_fs(uri)
    return PyFileSystem(FSSpecHandler(fs))
