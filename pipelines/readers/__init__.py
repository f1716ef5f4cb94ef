"""Input readers: one module per format, registered in FORMATS by file-name suffix.

Every document gets a stable id ``f"{source}:{position}"``. Bad input never raises: it becomes one
`Quarantined` record with a reason from `REASONS`, and the good records around it are kept. The format
comes from the file name (each but Parquet optionally ``.gz``/``.zst``) and is confirmed by the first
bytes; the compression actually applied is taken from the magic bytes (gzip ``1f8b``, zstd ``28b52ffd``),
not the name. A reader is `read(stream, head, source, options, split)` over the decompressed stream: a
generator of documents and quarantine records that returns how many positions it went through (None when
it stopped early).

Splits: `plan_splits` cuts one uncompressed JSONL or WARC/WET file into byte ranges and a Parquet file
into runs of row groups; every other file is one split. `read_file(path, source, options, split)` reads
one split, positions counted from the split's start (`Document.position`), offsets from the file's.

To add a format: a module with `read` (and optionally a splitter), and one entry in FORMATS.
"""

from __future__ import annotations

import gzip
import io
import os
import stat
from collections.abc import Callable, Generator
from dataclasses import dataclass, replace
from typing import BinaryIO

import zstandard

from pipelines.readers import csv, html, jsonl, parquet, text, warc
from pipelines.readers.base import (
    CHUNK,
    HEAD,
    REASONS,
    STREAM_ERRORS,
    WHOLE,
    Document,
    Quarantined,
    ReadOptions,
    Records,
    Split,
    cut,
    quarantine,
    sniff,
    stream_error,
    too_large,
    utf8_size,
)

__all__ = [
    "FORMATS",
    "REASONS",
    "Document",
    "Quarantined",
    "ReadOptions",
    "Split",
    "plan_splits",
    "read_file",
]

Reader = Callable[[BinaryIO, bytes, str, ReadOptions, Split], Records]
# (file, first bytes, size, split_bytes, options) -> splits of an uncompressed file
Splitter = Callable[[BinaryIO, bytes, int, int, ReadOptions], list[Split]]


@dataclass(frozen=True)
class Format:
    """A registered input format: its reader, what its (decompressed) first bytes must look like, and
    how an uncompressed file splits (None: never)."""

    name: str
    read: Reader
    unit: str  # what a position counts: line, row, record, or file (one document per file)
    content: str = "text"  # a base.sniff() name
    compressible: bool = True
    split: Splitter | None = None
    split_by: str = "bytes"  # what a Split counts: bytes (a stream range) or row groups (the reader's own)


def _jsonl_splits(
    raw: BinaryIO, head: bytes, size: int, split_bytes: int, options: ReadOptions
) -> list[Split]:
    return jsonl.splits(head, size, split_bytes)


def _warc_splits(
    raw: BinaryIO, head: bytes, size: int, split_bytes: int, options: ReadOptions
) -> list[Split]:
    return warc.splits(raw, size, split_bytes)


def _parquet_splits(
    raw: BinaryIO, head: bytes, size: int, split_bytes: int, options: ReadOptions
) -> list[Split]:
    return parquet.splits(raw, split_bytes, options)


_JSONL = Format("jsonl", jsonl.read, "line", split=_jsonl_splits)
_WARC = Format("warc", warc.read, "record", content="WARC", split=_warc_splits)
_HTML = Format("html", html.read, "file")
FORMATS = {
    ".jsonl": _JSONL, ".json": _JSONL, ".ndjson": _JSONL,
    ".parquet": Format("parquet", parquet.read, "row", content="Parquet", compressible=False,
                       split=_parquet_splits, split_by="row groups"),
    ".warc": _WARC, ".wet": _WARC,
    ".txt": Format("text", text.read, "file"),
    ".csv": Format("csv", csv.read_csv, "row"), ".tsv": Format("tsv", csv.read_tsv, "row"),
    ".html": _HTML, ".htm": _HTML,
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


def plan_splits(path: str, split_bytes: int, options: ReadOptions | None = None) -> list[Split]:
    """The splits of one input file: byte ranges or row-group runs of about `split_bytes` for an
    uncompressed splittable file whose content matches its name, else the whole file."""
    fmt = format_of(path)
    if fmt is None or fmt.split is None or _not_regular(path):
        return [WHOLE]
    try:
        with open(path, "rb") as raw:
            head = raw.read(HEAD)
            size = os.fstat(raw.fileno()).st_size
            if sniff(head) != fmt.content or (size <= split_bytes and fmt.split_by == "bytes"):
                return [WHOLE]
            raw.seek(0)
            return fmt.split(raw, head, size, split_bytes, options or ReadOptions())
    except OSError:
        return [WHOLE]  # read_file reports it


def plan_splits_by_head(name: str, head: bytes, size: int, split_bytes: int) -> list[Split] | None:
    """The splits of a file planned from its first HEAD bytes and its size alone (JSONL: no need to
    fetch an object on S3 to plan it), or None when planning needs the whole file."""
    fmt = format_of(name)
    if fmt is not _JSONL:
        return None
    if sniff(head) != fmt.content or size <= split_bytes:
        return [WHOLE]
    return jsonl.splits(head, size, split_bytes)


def read_file(
    path: str, source: str, options: ReadOptions | None = None, split: Split = WHOLE
) -> Generator[Document | Quarantined, None, int | None]:
    """Yield the documents and quarantine records of one input file (or one split of it), in input
    order; return the number of positions read (None when the rest of the file had to be skipped).
    Never raises for bad content or unreadable files."""
    options = options or ReadOptions()
    fmt = format_of(path)
    if kind := _not_regular(path):
        yield quarantine(source, "file", None, "not_a_regular_file", f"the input is a {kind}", b"")
        return None
    try:
        with open(path, "rb") as raw:
            head = raw.read(HEAD)
            kind = sniff(head)
            raw.seek(0)
            if fmt is None:
                detail = f"unknown file extension; content looks like {kind}"
                yield quarantine(source, "file", None, "unsupported_format", detail, head)
                return None
            stream: BinaryIO = raw
            if split != WHOLE and fmt.split_by == "bytes":
                stream, split = _byte_range(raw, fmt, split)
            elif fmt.compressible and kind in ("gzip", "zstd"):
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
                yield quarantine(source, "file", None, reason, detail, head)
                return None
            return (yield from _capped(fmt.read(stream, head, source, options, split), fmt.unit, options))
    except STREAM_ERRORS as error:
        yield stream_error(source, "file", None, error)
        return None


def _not_regular(path: str) -> str | None:
    """What a path is when it is not a regular file (FIFO, socket, device), without opening it (opening a
    FIFO waits for a writer; a device may never end); None for a regular file or one stat cannot see."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None  # open() reports it
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):  # open() reports a directory
        return None
    kinds = ((stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
             (stat.S_ISBLK, "block device"))  # fmt: skip
    return next((name for check, name in kinds if check(mode)), "special file")


def _capped(records: Records, unit: str, options: ReadOptions) -> Records:
    """A reader's records with every document over `options.max_document_bytes` quarantined as too_large
    (or, with `options.truncate`, cut to that size and marked truncated)."""
    while True:
        try:
            item = next(records)
        except StopIteration as stop:
            return stop.value
        yield _within_limit(item, unit, options) if isinstance(item, Document) else item


def _within_limit(doc: Document, unit: str, options: ReadOptions) -> Document | Quarantined:
    limit = options.max_document_bytes
    if len(doc.text) * 4 <= limit or (size := utf8_size(doc.text)) <= limit:  # at most 4 bytes a character
        return doc
    if options.truncate:
        return replace(doc, text=cut(doc.text.encode("utf-8"), limit).decode("utf-8"), truncated=True)
    number = None if unit == "file" else doc.position
    return too_large(doc.source, unit, number, size, limit, doc.text, doc.offset)


def _byte_range(raw: BinaryIO, fmt: Format, split: Split) -> tuple[BinaryIO, Split]:
    """The stream of a byte-range split and the split as the reader sees it: JSONL from the first line
    that starts in the range to the end of the last one; WARC exactly the range (it starts and ends at
    records)."""
    start = split.start
    if fmt is _JSONL and start > 0:
        raw.seek(start - 1)
        if raw.read(1) != b"\n":
            while (rest := raw.readline(CHUNK)) and not rest.endswith(b"\n"):
                pass
        start = raw.tell()
    raw.seek(start)
    if fmt is _JSONL:  # the reader ends after the last line that starts before stop
        return raw, Split(start, split.stop)
    return io.BufferedReader(_Range(raw, start, split.stop), CHUNK), Split(start, split.stop)


class _Range(io.RawIOBase):
    """Bytes [start, stop) of a file (to its end when stop is None)."""

    def __init__(self, raw: BinaryIO, start: int, stop: int | None) -> None:
        self._raw, self._left = raw, None if stop is None else stop - start
        raw.seek(start)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        size = len(buffer) if self._left is None else min(len(buffer), self._left)
        data = self._raw.read(size)
        buffer[: len(data)] = data
        if self._left is not None:
            self._left -= len(data)
        return len(data)


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
