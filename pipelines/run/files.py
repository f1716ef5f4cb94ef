"""How gristmill writes files: atomically (readers see the old content or the whole new one), Parquet
with one set of writer options (page checksums stored) and read back with those checksums verified,
sha256 of a file, and an exclusive lock between processes."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

PARQUET_OPTIONS: dict[str, Any] = {"compression": "zstd", "write_page_checksum": True}
_SURROGATE = re.compile("[\ud800-\udfff]")


def _file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


FILE_MODE = _file_mode()  # what a plain open() would give; mkstemp alone makes 0600


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside `path`, renamed to `path` when the block ends without an error (removed
    when it raises). Nest them to order renames: the outermost is renamed last."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, FILE_MODE)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write a whole file atomically (fsynced before the rename)."""
    with atomic_path(path) as tmp, tmp.open("wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())


def json_text(obj: Any) -> str:
    """Pretty, stable JSON in UTF-8 text. A lone surrogate (how Python holds a file name's bytes that are
    not UTF-8) is written as its `\\u` escape, so the file stays UTF-8 and reads back to the same string."""
    text = json.dumps(obj, indent=2, ensure_ascii=False, default=str)
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text) + "\n"


def write_json(path: Path, obj: Any) -> None:
    """Write pretty, stable JSON atomically."""
    write_atomic(path, json_text(obj))


def parquet_writer(path: Path, schema: pa.Schema) -> pq.ParquetWriter:
    """The writer of the Parquet files gristmill streams (shards of every stage)."""
    return pq.ParquetWriter(path, schema, **PARQUET_OPTIONS)


def write_parquet(table: pa.Table, path: Path, **options: Any) -> None:
    """Write one table as a Parquet file atomically (`options` override PARQUET_OPTIONS)."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, **(PARQUET_OPTIONS | options))


def parquet_file(source: Any) -> pq.ParquetFile:
    """A Parquet file opened so that every page read is checked against its stored CRC (a page whose
    checksum does not match raises OSError; pages written without one are read unchecked)."""
    return pq.ParquetFile(source, page_checksum_verification=True)


def read_table(path: Path, columns: list[str] | None = None) -> pa.Table:
    """A whole Parquet file (or some of its columns), page checksums verified. (Read through ParquetFile:
    pq.read_table goes through pyarrow.dataset, whose import alone costs a stage 0.14 s.)"""
    with parquet_file(path) as source:
        missing = [c for c in columns or () if c not in source.schema_arrow.names]
        if missing:  # ParquetFile.read would leave them out without a word
            raise KeyError(f"{path}: no column {', '.join(map(repr, missing))}")
        return source.read(columns=columns)


def sha256_file(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if missing) for the block, across processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def local_path(uri: str) -> Path:
    """A local URI (a path or `file://`) as a path; other schemes are refused."""
    if uri.startswith("file://"):
        return Path(uri[len("file://") :])
    if "://" in uri:
        raise ValueError(f"{uri.split('@')[-1]}: only a local path is supported here")
    return Path(uri)
