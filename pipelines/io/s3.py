"""S3 storage for run directories and inputs: `s3://bucket/key` URIs through boto3.

Everything the pipeline does on S3 goes through this module: listing, HEAD, download, upload (multipart
for large files) and delete. boto3 finds the endpoint, credentials and region itself in the standard AWS
environment and config files (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
`AWS_DEFAULT_REGION`, `AWS_PROFILE`, instance/IRSA roles), so one code path serves AWS, MinIO and a
loopback test server.

Retries are botocore's own (mode `GRISTMILL_S3_RETRY_MODE`, default `standard`, `GRISTMILL_S3_MAX_ATTEMPTS`
attempts, default 10): throttling (SlowDown, 503), 500s, dropped and timed-out connections, with
exponential backoff and jitter; s3transfer re-reads a download stream that breaks mid-way.

Integrity: an upload sends a SHA-256 checksum (S3 rejects a body that does not match it) and stores the
file's own sha256 in the object metadata (`gristmill-sha256`). After every upload, and after an upload
that raised (a response lost after the server acted, e.g. a CompleteMultipartUpload), a HEAD compares
the object with the file: size, metadata and the checksum S3 stored (the file's SHA-256, or for a
multipart upload the SHA-256 of its parts' SHA-256s, recomputed locally with the same part size). A
mismatch re-uploads once, then raises `ChecksumMismatch`. Downloads are checked against the size and the
stored sha256, and fetched once more on a mismatch.
A PUT and a CompleteMultipartUpload are atomic, so an object is never visible half-written.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import logging
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

log = logging.getLogger("gristmill")

T = TypeVar("T")

SHA256_METADATA = "gristmill-sha256"  # user metadata (x-amz-meta-gristmill-sha256): hex sha256 of the file
MB = 1024 * 1024
_MIN_PART = 5 * MB  # S3's smallest part (all but the last)


class StorageError(RuntimeError):
    """An S3 operation failed (after retries, for transient errors)."""


class ChecksumMismatch(StorageError):
    """An object's stored checksum does not match the local file, even after a re-upload."""


# ---------------------------------------------------------------------------------------------- URIs


def is_s3(uri: str | Path) -> bool:
    return str(uri).startswith("s3://")


@dataclass(frozen=True)
class S3Uri:
    """`s3://bucket/key`; `key` has no leading slash and may be empty (the bucket) or end in `/`."""

    bucket: str
    key: str

    @classmethod
    def parse(cls, uri: str) -> S3Uri:
        if not is_s3(uri):
            raise ValueError(f"not an s3:// URI: {uri!r}")
        bucket, _, key = uri[len("s3://") :].partition("/")
        if not bucket or "@" in bucket or ":" in bucket:
            raise ValueError(f"{redact(uri)}: expected s3://bucket/key")
        return cls(bucket, key)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def join(self, relative: str) -> S3Uri:
        """The object `relative` (a POSIX path) under this URI taken as a folder."""
        base = self.key.rstrip("/")
        return S3Uri(self.bucket, f"{base}/{relative}" if base else relative)

    @property
    def prefix(self) -> str:
        """The key as a folder prefix (ends with `/`, or empty for the whole bucket)."""
        return self.key.rstrip("/") + "/" if self.key.strip("/") else ""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str


# ---------------------------------------------------------------------------------------------- settings


def _env_int(name: str, default: int) -> int:
    try:
        return max(1, int(os.environ.get(name, default)))
    except ValueError:
        return default


def cache_root() -> Path:
    """Where S3 data is mirrored locally: `$GRISTMILL_CACHE_DIR`, default `~/.cache/gristmill`."""
    return Path(os.environ.get("GRISTMILL_CACHE_DIR") or Path.home() / ".cache" / "gristmill")


def cache_path(uri: S3Uri) -> Path:
    """The local copy of an S3 object or folder: `<cache>/s3/<bucket>/<key>`."""
    parts = [p for p in uri.key.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise ValueError(f"{uri}: '.' and '..' are not allowed in keys gristmill mirrors")
    return cache_root().joinpath("s3", uri.bucket, *parts)


def multipart_bytes() -> int:
    """Multipart threshold and part size: `GRISTMILL_S3_MULTIPART_MB` (default 64, at least S3's 5 MiB)."""
    return max(_MIN_PART, _env_int("GRISTMILL_S3_MULTIPART_MB", 64) * MB)


def transfer_config() -> Any:
    from boto3.s3.transfer import TransferConfig

    size = multipart_bytes()
    return TransferConfig(
        multipart_threshold=size,
        multipart_chunksize=size,
        max_concurrency=_env_int("GRISTMILL_S3_CONCURRENCY", 8),
        num_download_attempts=_env_int("GRISTMILL_S3_MAX_ATTEMPTS", 10),
    )


@functools.cache
def _client_of(pid: int) -> Any:
    import boto3
    from botocore.config import Config

    retries = {"mode": os.environ.get("GRISTMILL_S3_RETRY_MODE", "standard"),
               "max_attempts": _env_int("GRISTMILL_S3_MAX_ATTEMPTS", 10)}  # fmt: skip
    timeouts = {"connect_timeout": _env_int("GRISTMILL_S3_CONNECT_TIMEOUT", 10),
                "read_timeout": _env_int("GRISTMILL_S3_READ_TIMEOUT", 60)}  # fmt: skip
    addressing = {"addressing_style": os.environ.get("AWS_S3_ADDRESSING_STYLE", "auto")}
    config = Config(retries=retries, max_pool_connections=32, s3=addressing, **timeouts)
    return boto3.session.Session().client("s3", config=config)


def client() -> Any:
    """One boto3 S3 client per process (made again after a fork; clients are thread-safe)."""
    return _client_of(os.getpid())


def reset_client() -> None:
    """Forget the client, so the next call reads the environment again (endpoint, credentials)."""
    _client_of.cache_clear()


def endpoint() -> str:
    """The endpoint in use, without any user:password part (safe to log)."""
    return redact_url(str(client().meta.endpoint_url))


# ---------------------------------------------------------------------------------------------- secrets

_SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")
_SECRET_ASSIGNMENT = re.compile(
    r"(?i)(aws_secret_access_key|aws_session_token|secret_access_key|secretaccesskey|x-amz-security-token)"
    r"(\s*[=:]\s*[\"']?)[^\s\"',}]+"
)


def redact_url(url: str) -> str:
    """`scheme://user:pass@host/path` -> `scheme://***@host/path`."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def redact(text: str) -> str:
    """Text with credentials removed: secret values of the environment (12+ characters, as real keys
    are), `aws_secret_access_key=...` style assignments and passwords in URLs."""
    for name in _SECRET_ENV:
        value = os.environ.get(name, "")
        if len(value) >= 12:
            text = text.replace(value, "***")
    text = _SECRET_ASSIGNMENT.sub(r"\1\2***", text)
    return re.sub(r"([a-z][a-z0-9+.-]*://)[^/\s@:]+:[^/\s@]+@", r"\1***@", text)


# ---------------------------------------------------------------------------------------------- errors


def _error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None) or {}
    error = response.get("Error", {})
    return str(error.get("Code") or response.get("ResponseMetadata", {}).get("HTTPStatusCode") or "")


def _is_not_found(exc: BaseException) -> bool:
    return _error_code(exc) in ("404", "NoSuchKey", "NotFound")


def _call(what: str, call: Callable[[], T]) -> T:
    """Run one S3 call (botocore retries transient errors); a failure becomes a StorageError with
    credentials scrubbed."""
    try:
        return call()
    except (StorageError, FileNotFoundError):
        raise
    except Exception as exc:
        raise StorageError(redact(f"{what} failed: {type(exc).__name__}: {exc}")) from exc


# ---------------------------------------------------------------------------------------------- reads


def head(uri: S3Uri) -> dict[str, Any] | None:
    """The object's HEAD response (with its stored checksum), or None when it does not exist."""

    def call() -> dict[str, Any] | None:
        try:
            return dict(client().head_object(Bucket=uri.bucket, Key=uri.key, ChecksumMode="ENABLED"))
        except Exception as exc:
            if _is_not_found(exc):
                return None
            raise

    return _call(f"HEAD {uri}", call)


def read_range(uri: S3Uri, start: int, stop: int) -> bytes:
    """Bytes [start, stop) of an object (fewer at its end): one ranged GET."""
    if stop <= start:
        return b""

    def call() -> bytes:
        response = client().get_object(Bucket=uri.bucket, Key=uri.key, Range=f"bytes={start}-{stop - 1}")
        return response["Body"].read()

    return _call(f"GET {uri} bytes {start}-{stop - 1}", call)


def exists(uri: S3Uri) -> bool:
    return head(uri) is not None


def list_objects(uri: S3Uri) -> list[ObjectInfo]:
    """Every object under the folder `uri` (recursively), keys sorted."""

    def call() -> list[ObjectInfo]:
        found = []
        pages = client().get_paginator("list_objects_v2").paginate(Bucket=uri.bucket, Prefix=uri.prefix)
        for page in pages:
            for obj in page.get("Contents", []):
                found.append(ObjectInfo(obj["Key"], int(obj["Size"]), str(obj.get("ETag", "")).strip('"')))
        return found

    return sorted(_call(f"LIST {uri}", call), key=lambda o: o.key)


def download(uri: S3Uri, path: Path) -> dict[str, Any]:
    """Copy an object to `path` (through a temporary file and a rename); returns its HEAD response.

    The copy is checked against the object's size and, when the object carries one, its sha256; a copy
    that does not match is fetched once more, then StorageError is raised.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.download")
    try:
        for attempt in (1, 2):
            info = head(uri)
            if info is None:
                raise FileNotFoundError(f"{uri}: no such object")
            _call(
                f"download {uri}",
                lambda: client().download_file(uri.bucket, uri.key, str(tmp), Config=transfer_config()),
            )
            problem = _download_problem(info, tmp)
            if problem is None:
                os.replace(tmp, path)
                return info
            log.warning("download %s: %s (attempt %d)", uri, problem, attempt)
        raise StorageError(f"download {uri}: {problem}")
    finally:
        tmp.unlink(missing_ok=True)


def _download_problem(info: dict[str, Any], path: Path) -> str | None:
    size = path.stat().st_size
    if size != int(info["ContentLength"]):
        return f"downloaded {size} bytes, the object has {info['ContentLength']}"
    want = (info.get("Metadata") or {}).get(SHA256_METADATA)
    if want and file_sha256(path) != want:
        return "downloaded bytes do not match the stored sha256"
    return None


# ---------------------------------------------------------------------------------------------- writes


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(4 * MB), b""):
            digest.update(block)
    return digest.hexdigest()


def expected_checksum(path: Path, size: int) -> str:
    """The ChecksumSHA256 S3 stores for `path` uploaded with transfer_config(): base64 SHA-256 of the
    file, or for a multipart upload the SHA-256 of the parts' SHA-256 digests (without the `-N`)."""
    if size < multipart_bytes():
        return base64.b64encode(bytes.fromhex(file_sha256(path))).decode()
    from s3transfer.utils import ChunksizeAdjuster

    part = ChunksizeAdjuster().adjust_chunksize(multipart_bytes(), size)
    combined = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(part), b""):
            combined.update(hashlib.sha256(block).digest())
    return base64.b64encode(combined.digest()).decode()


def upload(path: Path, uri: S3Uri, tags: dict[str, str] | None = None) -> dict[str, Any]:
    """Upload a local file as one object (multipart above the threshold) and verify it; returns the
    object's HEAD response. The object appears whole or not at all."""
    from urllib.parse import urlencode

    sha256 = file_sha256(path)
    size = path.stat().st_size
    extra: dict[str, Any] = {"ChecksumAlgorithm": "SHA256", "Metadata": {SHA256_METADATA: sha256}}
    if tags:
        extra["Tagging"] = urlencode(tags)

    for attempt in (1, 2):
        try:
            client().upload_file(str(path), uri.bucket, uri.key, ExtraArgs=extra, Config=transfer_config())
        except Exception as exc:  # the server may have acted before the response was lost: HEAD tells
            log.warning("upload %s: %s; checking the object", uri, redact(f"{type(exc).__name__}: {exc}"))
        info = head(uri)
        problem = _verify(info, path, size, sha256)
        if problem is None:
            assert info is not None
            return info
        if attempt == 1:
            log.warning("upload %s: %s; uploading again", uri, problem)
    raise ChecksumMismatch(f"upload {uri}: {problem} (after a re-upload); the object cannot be trusted")


def _verify(info: dict[str, Any] | None, path: Path, size: int, sha256: str) -> str | None:
    """Why the uploaded object does not match the file, or None when it does."""
    if info is None:
        return "the object is missing after the upload"
    if int(info.get("ContentLength", -1)) != size:
        return f"size {info.get('ContentLength')} != {size} bytes"
    if (info.get("Metadata") or {}).get(SHA256_METADATA) != sha256:
        return "stored sha256 metadata does not match the file"
    stored = info.get("ChecksumSHA256")
    if stored is None:
        return None  # the store keeps no checksum (some S3-compatible servers); size and metadata matched
    if stored.split("-", 1)[0] != expected_checksum(path, size):
        return "stored SHA-256 checksum does not match the file's content"
    return None


def delete(uri: S3Uri) -> None:
    """Delete an object (no error when it is already gone)."""
    _call(f"DELETE {uri}", lambda: client().delete_object(Bucket=uri.bucket, Key=uri.key))


def iter_files(root: Path) -> Iterator[Path]:
    """Files under `root`, skipping anything with a path component that starts with '.'."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith("."):
                yield Path(dirpath, name)
