"""Cheap fingerprints of input files, so that a resumed run can tell that its inputs changed.

A local file is fingerprinted by its size, its mtime (nanoseconds) and the sha256 of its size and its
first and last MiB; it has changed when any of the three differs (a file rewritten with its old mtime is
caught by the sampled content, an edit in the middle by the mtime). An S3 object is fingerprinted by its
size and ETag (a content hash, whatever its LastModified says). Only a fingerprint is read: 2 MiB of a
local file, one HEAD request of an object; FIFOs and devices are never opened.
"""

from __future__ import annotations

import hashlib
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pipelines.io import s3

SAMPLE_BYTES = 1 << 20
THREADS = 16


def fingerprint(path: str) -> dict[str, Any]:
    """`{"size", "mtime_ns", "sha256"}` of a local file, `{"size", "etag"}` of an S3 object; `{"kind"}`
    for what is not a regular file, `{"missing": True}` for what is gone."""
    if s3.is_s3(path):
        info = s3.head(s3.S3Uri.parse(path))
        if info is None:
            return {"missing": True}
        return {"size": int(info["ContentLength"]), "etag": str(info.get("ETag", "")).strip('"')}
    try:
        status = os.stat(path)
    except FileNotFoundError:
        return {"missing": True}
    if not stat.S_ISREG(status.st_mode):
        return {"kind": stat.filemode(status.st_mode)[0]}  # p: FIFO, s: socket, c/b: device, d: folder
    digest = hashlib.sha256(str(status.st_size).encode())
    try:
        with open(path, "rb") as f:
            digest.update(f.read(SAMPLE_BYTES))
            if status.st_size > SAMPLE_BYTES:
                f.seek(max(SAMPLE_BYTES, status.st_size - SAMPLE_BYTES))
                digest.update(f.read(SAMPLE_BYTES))
    except OSError as error:  # unreadable: the reader quarantines it; its state still counts
        return {"size": status.st_size, "mtime_ns": status.st_mtime_ns, "error": error.strerror}
    return {"size": status.st_size, "mtime_ns": status.st_mtime_ns, "sha256": digest.hexdigest()}


def fingerprints(files: list[tuple[str, str]]) -> dict[str, dict[str, Any]]:
    """The fingerprint of every `(path, source)` input file, by source (read on a few threads)."""
    with ThreadPoolExecutor(THREADS) as pool:
        found = list(pool.map(fingerprint, [path for path, _ in files]))
    return {source: state for (_, source), state in zip(files, found, strict=True)}


def changes(recorded: dict[str, dict[str, Any]], current: dict[str, dict[str, Any]]) -> list[str]:
    """What differs between two fingerprint sets, one phrase per input file (empty when nothing did)."""
    found = []
    for source, before in recorded.items():
        now = current.get(source)
        if now is None or now.get("missing"):
            found.append(f"{source} is gone")
        elif now != before:
            found.append(f"{source} changed ({_difference(before, now)})")
    found += [f"{source} is new" for source in current if source not in recorded]
    return found


def _difference(before: dict[str, Any], now: dict[str, Any]) -> str:
    if before.get("size") != now.get("size"):
        return f"size {before.get('size')} -> {now.get('size')} bytes"
    for key, what in (("etag", "ETag"), ("sha256", "content"), ("mtime_ns", "modification time")):
        if before.get(key) != now.get(key):
            return f"{what} differs"
    return "file type or readability differs"
