"""Storage URIs for the training stage: local paths (``file://`` allowed) and ``s3://bucket/key``.

S3 goes through boto3, imported only when an ``s3://`` URI is used. The endpoint, region and
credentials come from the standard AWS environment (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``, profiles...), so the same run works against AWS,
MinIO or a loopback test server. Reads can be ranged (one GET per Parquet row group). Every request
is retried by botocore itself on throttling, 5xx and connection errors, with the settings of the
pipeline: ``GRISTMILL_S3_RETRY_MODE`` (default ``standard``), ``GRISTMILL_S3_MAX_ATTEMPTS``
(default 10), ``GRISTMILL_S3_CONNECT_TIMEOUT`` and ``GRISTMILL_S3_READ_TIMEOUT`` (seconds, default
10 and 60). A body cut after botocore returned the response is read again (:func:`_get`).
"""

from __future__ import annotations

import os
import posixpath
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

_NOT_FOUND = ("NoSuchKey", "404", "NotFound", "NoSuchBucket")
_BODY_ATTEMPTS = 3


class StorageError(RuntimeError):
    """A read or write failed (after botocore's retries, for transient errors)."""


class NotFound(StorageError):
    """The object or file does not exist."""


# ---------------------------------------------------------------- URIs


def is_s3(uri: str | Path) -> bool:
    return str(uri).startswith("s3://")


def _local(uri: str | Path) -> Path:
    text = str(uri)
    if "://" in text and not text.startswith("file://"):
        raise StorageError(f"unsupported URI scheme in {text!r} (local paths and s3:// are supported)")
    return Path(text.removeprefix("file://"))


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> (``bucket``, ``a/b``)."""
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    if not bucket:
        raise StorageError(f"no bucket in {uri!r}")
    return bucket, key


def join(base: str | Path, relative: str) -> str:
    """Resolve ``relative`` (may hold ``..``) against the directory ``base``."""
    if is_s3(base):
        bucket, key = split_s3(str(base))
        joined = posixpath.normpath(posixpath.join("/" + key, relative)).lstrip("/")
        return f"s3://{bucket}/{joined}"
    return str((_local(base) / relative).resolve())


def parent(uri: str | Path) -> str:
    """The directory holding ``uri``."""
    if is_s3(uri):
        bucket, key = split_s3(str(uri))
        return f"s3://{bucket}/{posixpath.dirname(key.rstrip('/'))}".rstrip("/")
    return str(_local(uri).resolve().parent)


def normalize(uri: str | Path) -> str:
    """An absolute local path, or the S3 URI without a trailing slash."""
    return str(uri).rstrip("/") if is_s3(uri) else str(_local(uri).resolve())


# ---------------------------------------------------------------- S3 client and errors

_client_lock = threading.Lock()
_client: tuple[int, Any] | None = None


def s3_client() -> Any:
    """One boto3 S3 client per process (re-created after fork); boto3 clients are thread-safe."""
    global _client
    with _client_lock:
        if _client is None or _client[0] != os.getpid():
            import boto3
            from botocore.config import Config

            config = Config(
                retries={
                    "mode": os.environ.get("GRISTMILL_S3_RETRY_MODE", "standard"),
                    "max_attempts": int(os.environ.get("GRISTMILL_S3_MAX_ATTEMPTS") or 10),
                },
                connect_timeout=int(os.environ.get("GRISTMILL_S3_CONNECT_TIMEOUT") or 10),
                read_timeout=int(os.environ.get("GRISTMILL_S3_READ_TIMEOUT") or 60),
                max_pool_connections=32,
                s3={"addressing_style": os.environ.get("AWS_S3_ADDRESSING_STYLE", "auto")},
            )
            _client = (os.getpid(), boto3.session.Session().client("s3", config=config))
        return _client[1]


def _error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None) or {}
    error = response.get("Error", {})
    return str(error.get("Code") or response.get("ResponseMetadata", {}).get("HTTPStatusCode") or "")


def _call(what: str, call: Callable[[], T]) -> T:
    """One S3 call (botocore retries it on transient errors), its errors as NotFound or StorageError."""
    try:
        return call()
    except Exception as exc:
        if _error_code(exc) in _NOT_FOUND:
            raise NotFound(f"{what}: not found") from exc
        raise StorageError(f"{what} failed: {exc}") from exc


def _get(uri: str, start: int = 0, length: int | None = None) -> bytes:
    """The object at ``uri``, or ``length`` bytes of it from ``start``.

    botocore retries the GET, but returns once the headers are in: the body streams afterwards, out
    of reach of its retries, so a connection lost or timed out mid-body (or a short body) would fail
    the read. The GET is then sent again, at most ``_BODY_ATTEMPTS`` times in all.
    """
    from botocore.exceptions import BotoCoreError

    bucket, key = split_s3(uri)
    extra = {"Range": f"bytes={start}-{start + length - 1}"} if length is not None else {}
    what = f"GET {uri}" + (f" [{start}, {start + length})" if length is not None else "")
    for _ in range(_BODY_ATTEMPTS):
        body = _call(what, lambda: s3_client().get_object(Bucket=bucket, Key=key, **extra)["Body"])
        try:
            data: bytes = body.read()
        except (BotoCoreError, OSError) as exc:
            error: Exception = exc
            continue
        if length is None or len(data) == length:
            return data
        error = StorageError(f"short read: {len(data)} of {length} bytes")
    raise StorageError(f"{what} failed: {error} (body read {_BODY_ATTEMPTS} times)") from error


# ---------------------------------------------------------------- reads


def read_bytes(uri: str | Path) -> bytes:
    """The whole file or object."""
    if is_s3(uri):
        return _get(str(uri))
    try:
        return _local(uri).read_bytes()
    except FileNotFoundError as exc:
        raise NotFound(f"file not found: {uri}") from exc


def read_range(uri: str | Path, start: int, length: int) -> bytes:
    """``length`` bytes from offset ``start`` (one ranged GET on S3)."""
    if length <= 0:
        return b""
    if is_s3(uri):
        return _get(str(uri), start, length)
    try:
        with _local(uri).open("rb") as fh:
            fh.seek(start)
            data = fh.read(length)
    except FileNotFoundError as exc:
        raise NotFound(f"file not found: {uri}") from exc
    if len(data) != length:
        raise StorageError(f"{uri}: short read of {len(data)} bytes at {start} (wanted {length})")
    return data


def size(uri: str | Path) -> int:
    """Size in bytes (a HEAD request on S3)."""
    if is_s3(uri):
        bucket, key = split_s3(str(uri))
        return int(
            _call(f"HEAD {uri}", lambda: s3_client().head_object(Bucket=bucket, Key=key))["ContentLength"]
        )
    try:
        return _local(uri).stat().st_size
    except FileNotFoundError as exc:
        raise NotFound(f"file not found: {uri}") from exc


def exists(uri: str | Path) -> bool:
    try:
        size(uri)
    except NotFound:
        return False
    return True


# ---------------------------------------------------------------- writes and listings


def write_bytes(uri: str | Path, data: bytes) -> None:
    """Write a whole file or object (local writes go through a temporary file and a rename)."""
    if is_s3(uri):
        bucket, key = split_s3(str(uri))
        _call(f"PUT {uri}", lambda: s3_client().put_object(Bucket=bucket, Key=key, Body=data))
        return
    path = _local(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def upload_file(local_path: str | Path, uri: str) -> None:
    """Copy a local file to an S3 URI (multipart for large files)."""
    bucket, key = split_s3(uri)
    _call(f"upload {uri}", lambda: s3_client().upload_file(str(local_path), bucket, key))


def download_file(uri: str, local_path: str | Path) -> None:
    bucket, key = split_s3(uri)
    Path(local_path).parent.mkdir(parents=True, exist_ok=True)
    _call(f"download {uri}", lambda: s3_client().download_file(bucket, key, str(local_path)))


def list_files(prefix: str | Path) -> list[str]:
    """Paths of every file under the directory ``prefix``, relative to it, sorted."""
    if is_s3(prefix):
        bucket, key = split_s3(str(prefix))
        key = key.rstrip("/") + "/" if key else ""

        def list_all() -> list[str]:
            names = []
            for page in s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key):
                names += [obj["Key"][len(key) :] for obj in page.get("Contents", [])]
            return names

        return sorted(_call(f"LIST {prefix}", list_all))
    root = _local(prefix)
    if not root.is_dir():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def list_dirs(prefix: str | Path) -> list[str]:
    """Names of the immediate subdirectories (S3: common prefixes) of ``prefix``, sorted."""
    if is_s3(prefix):
        bucket, key = split_s3(str(prefix))
        key = key.rstrip("/") + "/" if key else ""

        def list_prefixes() -> list[str]:
            names = []
            pages = (
                s3_client()
                .get_paginator("list_objects_v2")
                .paginate(Bucket=bucket, Prefix=key, Delimiter="/")
            )
            for page in pages:
                names += [p["Prefix"][len(key) :].rstrip("/") for p in page.get("CommonPrefixes", [])]
            return names

        return sorted(_call(f"LIST {prefix}", list_prefixes))
    root = _local(prefix)
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def delete_tree(prefix: str | Path) -> None:
    """Remove a directory (or every object under an S3 prefix)."""
    if is_s3(prefix):
        bucket, key = split_s3(str(prefix))
        names = list_files(prefix)
        for start in range(0, len(names), 1000):
            objects = [{"Key": f"{key.rstrip('/')}/{n}"} for n in names[start : start + 1000]]
            _call(
                f"DELETE {prefix}",
                lambda objects=objects: s3_client().delete_objects(
                    Bucket=bucket, Delete={"Objects": objects, "Quiet": True}
                ),
            )
        return
    import shutil

    shutil.rmtree(_local(prefix), ignore_errors=True)


def upload_tree(local_dir: str | Path, uri: str, names: list[str] | None = None) -> None:
    """Upload files of ``local_dir`` (all, or the relative ``names``) under the S3 prefix ``uri``."""
    root = Path(local_dir)
    for name in names if names is not None else list_files(root):
        upload_file(root / name, f"{uri.rstrip('/')}/{name}")


def download_tree(uri: str, local_dir: str | Path) -> list[str]:
    """Download every object under the S3 prefix ``uri`` into ``local_dir``; returns the names."""
    names = list_files(uri)
    for name in names:
        download_file(f"{uri.rstrip('/')}/{name}", Path(local_dir) / name)
    return names
