"""Filesystem access for shards: local paths and ``s3://`` URIs through fsspec.

S3 endpoint and credentials come from the environment only (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``); nothing is read
from config files, so configs never carry secrets.

Every S3 call is bounded: connect / read timeouts and a retry limit for botocore and s3fs
(``MDIR_S3_CONNECT_TIMEOUT_S`` = 10, ``MDIR_S3_READ_TIMEOUT_S`` = 30, ``MDIR_S3_ATTEMPTS`` =
3), and `check_reachable` gives up after a deadline (default 30 s) with a message that tells
an endpoint that does not answer from a bucket that does not exist. Without these, an
endpoint that accepts connections and never answers held the pre-launch check for 824 s
(s3fs's 5 retries × botocore's 5 attempts × 15 s reads, per call).

Atomic writes: a file is written under a hidden temporary name in the same directory and
then renamed (local: ``os.replace``; S3: the object appears only when its upload completes,
and the temporary key starts with ``_tmp`` so readers, which only follow the manifest,
never see it).
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import threading
import uuid
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
    limits = s3_limits()
    kw["config_kwargs"] = {
        "connect_timeout": limits["connect_timeout_s"],
        "read_timeout": limits["read_timeout_s"],
        "retries": {"max_attempts": limits["attempts"], "mode": "standard"},
    }
    # Never cache listings: shards are written and read by different processes. (The
    # filesystem instance itself is cached by fsspec: creating a session is slow.)
    kw["use_listings_cache"] = False
    return kw


def s3_limits() -> dict[str, Any]:
    """Timeouts (s) and attempts of one S3 call, from ``MDIR_S3_*`` (see the module doc)."""

    def num(name: str, default: float) -> float:
        raw = os.environ.get(name, "")
        try:
            return float(raw) if raw.strip() else default
        except ValueError:
            raise DataPathError(f"${name}: not a number: {raw!r}") from None

    return {
        "connect_timeout_s": num("MDIR_S3_CONNECT_TIMEOUT_S", 10.0),
        "read_timeout_s": num("MDIR_S3_READ_TIMEOUT_S", 30.0),
        "attempts": max(1, int(num("MDIR_S3_ATTEMPTS", 3))),
    }


def get_fs(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path inside it) for a local path, file:// or s3:// URI."""
    uri = str(uri)
    if uri.startswith("s3://") or uri.startswith("s3a://"):
        import s3fs

        fs = s3fs.S3FileSystem(**_s3_kwargs())
        fs.retries = s3_limits()["attempts"]  # s3fs's own retry loop around botocore's
        return fs, uri.split("://", 1)[1].rstrip("/")
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


def absolute_local(uri: str, base: str | os.PathLike[str] | None = None) -> str:
    """`uri` unchanged when remote or absolute; a relative local path made absolute against
    `base` (default: the current directory). ``~`` is expanded; ``file://`` is kept."""
    uri = str(uri)
    if is_remote(uri):
        return uri
    prefix = "file://" if uri.startswith("file://") else ""
    path = os.path.expanduser(uri[len(prefix) :])
    if not os.path.isabs(path):
        path = os.path.normpath(os.path.join(os.fspath(base) if base else os.getcwd(), path))
    return prefix + path


def _endpoint() -> str:
    return (
        os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL")
        or "the default AWS S3 endpoint"
    )


def _check_bucket(fs: fsspec.AbstractFileSystem, uri: str, bucket: str) -> None:
    """HEAD the bucket: a missing bucket (the endpoint answered 404) and a refused access
    (403) are told apart from an endpoint that cannot be reached."""
    try:
        fs.call_s3("head_bucket", Bucket=bucket)  # type: ignore[attr-defined]
    except FileNotFoundError:
        raise DataPathError(
            f"bucket {bucket!r} of {uri!r} does not exist (the endpoint {_endpoint()} answered)"
        ) from None
    except PermissionError as e:
        raise DataPathError(
            f"access to bucket {bucket!r} of {uri!r} denied by {_endpoint()} "
            f"(credentials from AWS_*): {e}"
        ) from None
    except Exception as e:  # connection refused / timeouts after the retry limit
        raise DataPathError(
            f"{uri!r}: the S3 endpoint {_endpoint()} is unreachable "
            f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})"
        ) from None


def _check(uri: str, must_exist: bool, manifest: bool) -> None:
    try:
        fs, path = get_fs(uri)
    except DataPathError:
        raise
    except Exception as e:  # unknown protocol, missing driver
        raise DataPathError(f"cannot open {uri!r}: {e}") from e
    try:
        if uri.startswith(("s3://", "s3a://")):
            _check_bucket(fs, uri, path.split("/", 1)[0])
        elif is_remote(uri):
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


#: default deadline of one `check_reachable` call (seconds)
CHECK_TIMEOUT_S = 30.0


def check_reachable(
    uri: str, *, must_exist: bool = True, manifest: bool = False, timeout_s: float | None = None
) -> None:
    """Fail fast (before any cluster resources are allocated) if `uri` cannot be used.

    Raises `DataPathError` naming the URI: unknown scheme, bucket missing, endpoint
    unreachable, credentials refused, path missing (when `must_exist`), no ``manifest.json``
    (when `manifest`), or no answer within `timeout_s` (default `CHECK_TIMEOUT_S`): the
    check runs in a daemon thread, so a storage that never answers cannot hold the caller.
    """
    timeout = CHECK_TIMEOUT_S if timeout_s is None else float(timeout_s)
    box: dict[str, BaseException] = {}

    def run() -> None:
        try:
            _check(uri, must_exist, manifest)
        except BaseException as e:  # handed to the caller's thread
            box["error"] = e

    t = threading.Thread(target=run, name="mdir-check-reachable", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        where = f"the S3 endpoint {_endpoint()}" if is_remote(uri) else "the filesystem"
        raise DataPathError(
            f"{uri!r}: no answer from {where} within {timeout:g} s: it is unreachable or "
            "hanging (a missing bucket or path would have been reported as such)"
        )
    if "error" in box:
        raise box["error"]


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


def arrow_filesystem(uri: str):
    """pyarrow filesystem for `uri` (for pyarrow / Ray Data readers), or None for local."""
    if not is_remote(uri):
        return None
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    fs, _ = get_fs(uri)
    return PyFileSystem(FSSpecHandler(fs))
