"""Input readers: one module per format, registered in FORMATS by file-name suffix.

Every document gets a stable id ``f"{source}:{position}"``. Bad input never raises: it becomes one
`Quarantined` record with a reason from `REASONS`, and the good records around it are kept. The format
comes from the file name (each but Parquet optionally ``.gz``/``.zst``) and is confirmed by the first
bytes; the compression actually applied is taken from the magic bytes (gzip ``1f8b``, zstd ``28b52ffd``),
not the name. A reader is `read(stream, head, source, options)` over the decompressed stream.

To add a format: a module with `read`, and one entry in FORMATS.
"""

from __future__ import annotations

import gzip
import io
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

import zstandard

from pipelines.readers import jsonl, parquet, text, warc
from pipelines.readers.base import (
    CHUNK,
    HEAD,
    REASONS,
    STREAM_ERRORS,
    Document,
    Quarantined,
    ReadOptions,
    quarantine,
    sniff,
    stream_error,
)

__all__ = ["FORMATS", "REASONS", "Document", "Quarantined", "ReadOptions", "read_file"]

Reader = Callable[[BinaryIO, bytes, str, ReadOptions], Iterator[Document | Quarantined]]


@dataclass(frozen=True)
class Format:
    """A registered input format: its reader and what its (decompressed) first bytes must look like."""

    name: str
    read: Reader
    content: str = "text"  # a base.sniff() name
    compressible: bool = True


_JSONL = Format("jsonl", jsonl.read)
_WARC = Format("warc", warc.read, content="WARC")
FORMATS = {
    ".jsonl": _JSONL, ".json": _JSONL, ".ndjson": _JSONL,
    ".parquet": Format("parquet", parquet.read, content="Parquet", compressible=False),
    ".warc": _WARC, ".wet": _WARC,
    ".txt": Format("text", text.read),
}  # fmt: skip
COMPRESSION_SUFFIXES = (".gz", ".zst", ".zstd")


def format_of(path: str) -> Format | None:
    """The registered format of a file name (compression suffixes looked through)."""
    name = os.path.basename(path).lower()
    for suffix in COMPRESSION_SUFFIXES:
        if name.endswith(suffix):
            name = name.removesuffix(suffix)
            break
    return FORMATS.get(os.path.splitext(name)[1])


def read_file(path: str, source: str, options: ReadOptions | None = None) -> Iterator[Document | Quarantined]:
    """Yield the documents and quarantine records of one input file, in input order; never raises for bad
    content or unreadable files."""
    options = options or ReadOptions()
    fmt = format_of(path)
    try:
        with open(path, "rb") as raw:
            head = raw.read(HEAD)
            kind = sniff(head)
            raw.seek(0)
            if fmt is None:
                detail = f"unknown file extension; content looks like {kind}"
                yield quarantine(source, "file", "unsupported_format", detail, head)
                return
            stream: BinaryIO = raw
            if fmt.compressible and kind in ("gzip", "zstd"):
                stream = (
                    gzip.GzipFile(fileobj=raw)
                    if kind == "gzip"
                    else io.BufferedReader(_ZstdReader(raw), CHUNK)
                )
                head = stream.peek(HEAD)[:HEAD]
                kind = sniff(head)
            if kind not in (fmt.content, "empty") or (kind == "empty" and not fmt.compressible):
                reason = "not_text" if fmt.content == "text" and kind != "WARC" else "unsupported_format"
                detail = f"{fmt.name} file whose content looks like {kind}"
                if not fmt.compressible:
                    detail = f"named .{fmt.name} but content looks like {kind}"
                yield quarantine(source, "file", reason, detail, head)
                return
            yield from fmt.read(stream, head, source, options)
    except STREAM_ERRORS as error:
        yield stream_error(source, "file", error)


class _ZstdReader(io.RawIOBase):
    """Raw reader over concatenated zstd frames that raises EOFError when the input ends inside a frame
    (zstandard's stream_reader just stops there)."""

    def __init__(self, fileobj: BinaryIO) -> None:
        self._file = fileobj
        self._dctx = zstandard.ZstdDecompressor()
        self._frame: zstandard.ZstdDecompressionObj | None = None  # None between frames
        self._out = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while not self._out:
            chunk = self._file.read(CHUNK)
            if not chunk:
                if self._frame is not None:
                    raise EOFError("zstd stream ended before the end of a frame")
                return 0
            parts = []
            while chunk:
                if self._frame is None:
                    self._frame = self._dctx.decompressobj()
                parts.append(self._frame.decompress(chunk))
                chunk = b""
                if self._frame.eof:
                    chunk, self._frame = self._frame.unused_data, None
            self._out = memoryview(b"".join(parts))
        size = min(len(buffer), len(self._out))
        buffer[:size] = self._out[:size]
        self._out = self._out[size:]
        return size
