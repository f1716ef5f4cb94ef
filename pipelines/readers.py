"""Input readers: JSONL, Parquet, WARC/WET and plain-text files -> documents.

Every document gets a stable id ``f"{source}:{index}"``. Bad input never raises: it becomes one
:class:`Quarantined` record with a reason from :data:`REASONS`, and the good records around it are kept.

Formats come from the file name (``.jsonl``/``.json``/``.ndjson``, ``.parquet``, ``.warc``/``.wet``,
``.txt``, each but Parquet optionally ``.gz``/``.zst``) and are confirmed by the first bytes. The
compression actually applied is taken from the magic bytes (gzip ``1f8b``, zstd ``28b52ffd``), not the name.

Index per format: JSONL the 1-based line number (blank lines are skipped but counted), Parquet the 0-based
row, WARC/WET the 0-based record number among all records, ``.txt`` always 0 (the whole file is one document).
Parquet without a ``text`` column gives one ``missing_text`` record for the file; a null value one per row.
WARC: only 2xx ``response`` records with an HTML content type (text extracted with trafilatura) and
``conversion`` records (WET plain text) become documents; warcinfo, request, metadata, non-HTML and
non-2xx responses are skipped by design. WARC offsets are positions in the decompressed stream.
"""

from __future__ import annotations

import codecs
import gzip
import io
import json
import os
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq
import trafilatura
import zstandard
from trafilatura.deduplication import LRU_TEST
from warcio.archiveiterator import ArchiveIterator
from warcio.exceptions import ArchiveLoadFailed
from warcio.recordloader import ArcWarcRecord

REASONS: dict[str, str] = {
    "malformed_json": "a JSONL line is not valid JSON",
    "not_an_object": "a JSONL line is valid JSON but not an object",
    "missing_text": "no text: JSON key absent, Parquet column absent (one record per file) or null",
    "text_not_string": "the text value (or the Parquet column type) is not a string",
    "empty_text": "the text is empty or whitespace only",
    "invalid_utf8": "bytes that are not valid UTF-8 (or a lone surrogate); for HTML: no charset tried fits",
    "nul_bytes": "the raw line or the text contains NUL (\\x00)",
    "line_too_long": "a JSONL line longer than max_line_bytes; skipped without being loaded",
    "not_text": "binary content where text was expected (a whole file, or one WARC/WET record)",
    "unreadable_file": "the file cannot be opened or read (permission, I/O error, bad Parquet)",
    "truncated_file": "the gzip/zstd/WARC stream ends early; the complete records before it were kept",
    "corrupt_file": "the compressed stream is corrupt (bad data, CRC, trailing junk); records before it kept",
    "malformed_record": "a WARC record header cannot be parsed; the rest of the file is skipped",
    "unsupported_format": "unknown file extension, or content that does not match the extension",
    "html_extraction_failed": "the HTML of a WARC response could not be parsed, or trafilatura raised",
    "empty_after_extraction": "trafilatura found no main text in a WARC HTML response",
}

MAX_LINE_BYTES = 1 << 30  # default cap on one JSONL line; longer lines -> line_too_long
EXCERPT_CHARS = 200

_HEAD = 8192  # bytes sniffed at the start of a file or record
_CHUNK = 1 << 16
_PARQUET_BATCH = 1024
_FORMATS = {
    ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet",
    ".warc": "warc", ".wet": "warc", ".txt": "text",
}  # fmt: skip
_COMPRESSION_SUFFIXES = (".gz", ".zst", ".zstd")
_MAGIC = (
    (b"\x1f\x8b", "gzip"), (b"\x28\xb5\x2f\xfd", "zstd"), (b"PAR1", "Parquet"), (b"WARC/", "WARC"),
    (b"\x89PNG\r\n\x1a\n", "PNG image"), (b"\xff\xd8\xff", "JPEG image"), (b"GIF8", "GIF image"),
    (b"%PDF-", "PDF document"), (b"PK\x03\x04", "zip archive"), (b"\xfd7zXZ\x00", "xz"),
)  # fmt: skip
# C0 controls other than \t \n \v \f \r ESC, and DEL: more than 5% of them (and at least 8) means binary.
_CONTROL_BYTES = bytes(b for b in range(256) if (b < 32 and b not in b"\t\n\v\f\r\x1b") or b == 127)
_HTML_TYPES = {"text/html", "application/xhtml+xml"}
_HTTP_CHARSET = re.compile(r"charset\s*=\s*[\"']?\s*([\w.:-]+)", re.IGNORECASE)
_META_CHARSET = re.compile(rb"<meta[^>]{0,200}?charset\s*=\s*[\"']?\s*([\w.:-]+)", re.IGNORECASE)
# Labels that browsers decode with a superset (WHATWG Encoding Standard).
_SUPERSETS = {
    "iso8859-1": "cp1252", "ascii": "cp1252", "gb2312": "gb18030", "gbk": "gb18030",
    "big5": "big5hkscs", "shift_jis": "cp932", "euc_kr": "cp949",
}  # fmt: skip
_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number",
               bool: "a boolean", type(None): "null"}  # fmt: skip
_STREAM_ERRORS = (EOFError, OSError, zlib.error, zstandard.ZstdError)


@dataclass(frozen=True, slots=True)
class Document:
    """One input document."""

    id: str  # f"{source}:{index}"
    text: str
    source: str
    url: str | None = None


@dataclass(frozen=True, slots=True)
class Quarantined:
    """One piece of bad input, with where it was and why it was set aside."""

    source: str
    position: str  # "line 12", "row 3", "row group 1", "record 5 (offset 1234)" or "file"
    reason: str  # a key of REASONS
    detail: str
    excerpt: str  # printable, at most EXCERPT_CHARS

    def __post_init__(self) -> None:
        if self.reason not in REASONS:
            raise ValueError(f"unknown quarantine reason {self.reason!r}")


# ---------------------------------------------------------------------------------------------- listing


def list_inputs(uris: list[str]) -> list[tuple[str, str]]:
    """Expand files and directories into sorted ``(path, source)`` pairs.

    A directory is walked recursively (hidden files and directories, ``*.md`` and ``LICENSE*`` skipped) and
    its files are named ``<directory basename>/<relative path>``; a file given directly is named by its
    basename. Raises ValueError on a missing path, an unlistable directory, or two inputs with one
    source name.
    """
    pairs: list[tuple[str, str]] = []
    for uri in uris:
        if os.path.isdir(uri):
            root = os.path.basename(os.path.abspath(uri))
            pairs += [(os.path.join(uri, rel), f"{root}/{rel}") for rel in _walk(uri)]
        elif os.path.lexists(uri):
            pairs.append((uri, os.path.basename(uri)))
        else:
            raise ValueError(f"input path does not exist: {uri!r}")
    seen: dict[str, str] = {}
    for path, source in pairs:
        if source in seen:
            raise ValueError(f"inputs {seen[source]!r} and {path!r} have the same source name {source!r}")
        seen[source] = path
    return pairs


def _walk(top: str) -> list[str]:
    """Sorted POSIX paths, relative to top, of the files under it that are inputs."""

    def fail(error: OSError) -> None:
        raise ValueError(f"cannot list input directory {error.filename!r}: {error.strerror}") from error

    found = []
    for dirpath, dirnames, filenames in os.walk(top, onerror=fail):
        dirnames[:] = [name for name in dirnames if not name.startswith(".")]
        for name in filenames:
            if not (
                name.startswith(".") or name.lower().endswith(".md") or name.upper().startswith("LICENSE")
            ):
                found.append(Path(dirpath, name).relative_to(top).as_posix())
    return sorted(found)


# ---------------------------------------------------------------------------------------------- reading


def read_file(
    path: str, source: str, *, max_line_bytes: int = MAX_LINE_BYTES
) -> Iterator[Document | Quarantined]:
    """Yield the documents and quarantine records of one input file, in input order; never raises for bad
    content or unreadable files."""
    fmt = _format_from_name(path)
    try:
        with open(path, "rb") as raw:
            head = raw.read(_HEAD)
            kind = _sniff(head)
            if fmt is None:
                detail = f"unknown file extension; content looks like {kind}"
                yield _quarantine(source, "file", "unsupported_format", detail, head)
                return
            if fmt == "parquet":
                if kind != "Parquet":
                    detail = f"named .parquet but content looks like {kind}"
                    yield _quarantine(source, "file", "unsupported_format", detail, head)
                else:
                    yield from _read_parquet(path, source)
                return
            raw.seek(0)
            stream: BinaryIO = raw
            if kind == "gzip":
                stream = gzip.GzipFile(fileobj=raw)
            elif kind == "zstd":
                stream = io.BufferedReader(_ZstdReader(raw), _CHUNK)
            if stream is not raw:
                head = stream.peek(_HEAD)[:_HEAD]
                kind = _sniff(head)
            expected = ("WARC", "empty") if fmt == "warc" else ("text", "empty")
            if kind not in expected:
                reason = "not_text" if fmt != "warc" and kind != "WARC" else "unsupported_format"
                detail = f"{fmt} file whose content looks like {kind}"
                yield _quarantine(source, "file", reason, detail, head)
            elif fmt == "jsonl" and _pretty_printed(head):
                detail = "a single (pretty-printed) JSON document, not JSON Lines"
                yield _quarantine(source, "file", "unsupported_format", detail, head)
            elif fmt == "jsonl":
                yield from _read_jsonl(stream, source, max_line_bytes)
            elif fmt == "warc":
                yield from _read_warc(stream, source)
            else:
                yield from _read_text(stream, source)
    except _STREAM_ERRORS as error:
        yield _stream_error(source, "file", error)


def _format_from_name(path: str) -> str | None:
    name = os.path.basename(path).lower()
    for suffix in _COMPRESSION_SUFFIXES:
        if name.endswith(suffix):
            name = name.removesuffix(suffix)
            break
    return _FORMATS.get(os.path.splitext(name)[1])


def _sniff(head: bytes) -> str:
    """Name what the first bytes look like: a _MAGIC name, 'binary', 'text' or 'empty'."""
    if not head:
        return "empty"
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    controls = len(head) - len(head.translate(None, _CONTROL_BYTES))
    return "binary" if controls > 0.05 * len(head) and controls >= 8 else "text"


def _pretty_printed(head: bytes) -> bool:
    """A first line that is a lone '[' or '{': one pretty-printed JSON document, not JSON Lines."""
    return head.removeprefix(codecs.BOM_UTF8).lstrip().split(b"\n", 1)[0].strip() in (b"[", b"{")


def _excerpt(data: bytes | str) -> str:
    if not data:
        return ""
    text = repr(data[:EXCERPT_CHARS])
    return text if len(text) <= EXCERPT_CHARS else text[: EXCERPT_CHARS - 3] + "..."


def _quarantine(source: str, position: str, reason: str, detail: str, raw: bytes | str) -> Quarantined:
    return Quarantined(source, position, reason, detail, _excerpt(raw))


def _stream_error(source: str, position: str, error: BaseException) -> Quarantined:
    if isinstance(error, EOFError):
        reason = "truncated_file"
    elif isinstance(error, zlib.error | gzip.BadGzipFile | zstandard.ZstdError):
        reason = "corrupt_file"
    else:
        reason = "unreadable_file"
    return _quarantine(source, position, reason, f"{type(error).__name__}: {error}", b"")


def _document(
    source: str, index: int, text: object, url: str | None, position: str, raw: bytes | str
) -> Document | Quarantined:
    """Check a text value; a Document if it is usable text."""
    if not isinstance(text, str):
        kind = _JSON_TYPES.get(type(text), type(text).__name__)
        return _quarantine(source, position, "text_not_string", f"text is {kind}", raw)
    if "\x00" in text:
        return _quarantine(source, position, "nul_bytes", f"NUL at character {text.index(chr(0))}", raw)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as error:  # a lone surrogate, e.g. from a JSON "\ud800" escape
            detail = f"lone surrogate U+{ord(text[error.start]):04X} at character {error.start}"
            return _quarantine(source, position, "invalid_utf8", detail, raw)
    if not text or text.isspace():
        return _quarantine(source, position, "empty_text", "text is empty or whitespace only", raw)
    return Document(f"{source}:{index}", text, source, url)


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
            chunk = self._file.read(_CHUNK)
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


# ---------------------------------------------------------------------------------------------- JSONL


def _read_jsonl(stream: BinaryIO, source: str, max_line_bytes: int) -> Iterator[Document | Quarantined]:
    lineno = 1
    try:
        while line := stream.readline(max_line_bytes + 1):
            if len(line) > max_line_bytes and not line.endswith(b"\n"):
                while (rest := stream.readline(_CHUNK)) and not rest.endswith(b"\n"):
                    pass
                detail = f"line is longer than {max_line_bytes} bytes"
                yield _quarantine(source, f"line {lineno}", "line_too_long", detail, line)
            elif line.strip():
                yield _jsonl_record(
                    line.removeprefix(codecs.BOM_UTF8) if lineno == 1 else line, source, lineno
                )
            lineno += 1
    except _STREAM_ERRORS as error:
        yield _stream_error(source, f"line {lineno}", error)


def _jsonl_record(line: bytes, source: str, lineno: int) -> Document | Quarantined:
    position = f"line {lineno}"
    try:
        decoded = line.decode("utf-8")
    except UnicodeDecodeError as error:
        return _quarantine(source, position, "invalid_utf8", str(error), line)
    if "\x00" in decoded:
        return _quarantine(source, position, "nul_bytes", f"NUL at character {decoded.index(chr(0))}", line)
    try:
        record = json.loads(decoded)
    except (ValueError, RecursionError) as error:
        return _quarantine(source, position, "malformed_json", f"{type(error).__name__}: {error}", line)
    if not isinstance(record, dict):
        detail = f"JSON value is {_JSON_TYPES.get(type(record), type(record).__name__)}, not an object"
        return _quarantine(source, position, "not_an_object", detail, line)
    if "text" not in record:
        keys = ", ".join(list(record)[:10])
        return _quarantine(source, position, "missing_text", f"no 'text' key (keys: {keys})", line)
    url = record.get("url")
    if not isinstance(url, str):
        metadata = record.get("metadata")
        url = metadata.get("url") if isinstance(metadata, dict) else None
    return _document(source, lineno, record["text"], url if isinstance(url, str) else None, position, line)


# ---------------------------------------------------------------------------------------------- Parquet


def _is_text_type(dtype: pa.DataType) -> bool:
    if pa.types.is_dictionary(dtype):
        dtype = dtype.value_type
    return any(check(dtype) for check in (pa.types.is_string, pa.types.is_large_string,
                                          pa.types.is_binary, pa.types.is_large_binary))  # fmt: skip


def _read_parquet(path: str, source: str) -> Iterator[Document | Quarantined]:
    """Read the text (and url) columns by batches within each row group; a bad row group is reported and
    the next one is still read."""
    try:
        parquet = pq.ParquetFile(path)
        schema = parquet.schema_arrow
    except (OSError, pa.ArrowException) as error:
        yield _quarantine(source, "file", "unreadable_file", f"{type(error).__name__}: {error}", b"")
        return
    with parquet:
        if schema.get_field_index("text") < 0:  # absent, or present twice
            detail = f"no single 'text' column (columns: {', '.join(schema.names[:10])})"
            yield _quarantine(source, "file", "missing_text", detail, b"")
            return
        if not _is_text_type(dtype := schema.field("text").type):
            yield _quarantine(source, "file", "text_not_string", f"'text' column has type {dtype}", b"")
            return
        columns = ["text", "url"] if schema.get_field_index("url") >= 0 else ["text"]
        row = 0
        for group in range(parquet.num_row_groups):
            end = row + parquet.metadata.row_group(group).num_rows
            try:
                batches = parquet.iter_batches(batch_size=_PARQUET_BATCH, row_groups=[group], columns=columns)
                for batch in batches:
                    texts = batch.column(0).to_pylist()
                    urls = batch.column(1).to_pylist() if len(columns) == 2 else [None] * len(texts)
                    for text, url in zip(texts, urls, strict=True):
                        yield _parquet_row(source, row, text, url)
                        row += 1
            except (OSError, pa.ArrowException) as error:
                detail = (
                    f"rows {row}-{end - 1} of row group {group} unreadable: {type(error).__name__}: {error}"
                )
                yield _quarantine(source, f"row {row}", "unreadable_file", detail, b"")
            row = end


def _parquet_row(source: str, row: int, text: object, url: object) -> Document | Quarantined:
    position = f"row {row}"
    if text is None:
        return _quarantine(source, position, "missing_text", "text is null", "")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as error:
            return _quarantine(source, position, "invalid_utf8", str(error), text)
    raw = text if isinstance(text, str) else ""
    return _document(source, row, text, url if isinstance(url, str) else None, position, raw)


# ---------------------------------------------------------------------------------------------- text


def _read_text(stream: BinaryIO, source: str) -> Iterator[Document | Quarantined]:
    try:
        data = stream.read()
    except _STREAM_ERRORS as error:
        yield _stream_error(source, "file", error)
        return
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        window = data[max(0, error.start - 50) : error.start + 50]
        yield _quarantine(source, "file", "invalid_utf8", str(error), window)
        return
    yield _document(source, 0, text.removeprefix("\ufeff"), None, "file", data)


# ---------------------------------------------------------------------------------------------- WARC/WET


class _StreamFailure(Exception):
    """A read error under warcio, wrapped so that warcio cannot take it for the clean end of the archive."""


class _CutShort(Exception):
    """The archive ends inside a record."""


class _Guarded:
    """File-like wrapper turning stream errors into _StreamFailure (warcio swallows EOFError)."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream

    def read(self, size: int = -1) -> bytes:
        try:  # read1: a short read keeps what was decompressed before a truncation
            return self._stream.read1(size)
        except _STREAM_ERRORS as error:
            raise _StreamFailure(error) from error


class _ArchiveIterator(ArchiveIterator):
    """warcio's iterator, except that a record cut inside its headers raises instead of quietly ending
    the archive (warcio treats any EOFError while parsing a record as the end)."""

    def _next_record(self, next_line: bytes | None) -> ArcWarcRecord:
        if next_line is None:
            next_line = self.reader.readline()
            if not next_line:
                raise EOFError  # the clean end of the archive
        try:
            return super()._next_record(next_line)
        except (EOFError, ArchiveLoadFailed, AttributeError, TypeError, ValueError) as error:
            # warcio fails in various ways on broken headers: cut short if nothing follows, else malformed
            if isinstance(error, EOFError) or not self.reader.read(1):
                raise _CutShort("the stream ends inside a record's headers") from error
            raise ArchiveLoadFailed(f"{type(error).__name__}: {error}") from error


def _read_warc(stream: BinaryIO, source: str) -> Iterator[Document | Quarantined]:
    records = _ArchiveIterator(_Guarded(stream))
    index = 0
    while True:
        position = f"record {index}"
        try:
            records.read_to_end()  # finish the previous record: trailing blank lines, next header line
            position = f"record {index} (offset {records.offset})"
            record = next(records, None)
            if record is None:
                return
            item = _warc_record(record, source, index, position)
            while record.raw_stream.read(_CHUNK):  # the rest of this record, to check its length
                pass
            if missing := getattr(record.raw_stream, "limit", 0):
                raise _CutShort(f"the stream ends {missing} bytes before the end of the record")
        except _CutShort as error:
            yield _quarantine(source, position, "truncated_file", str(error), b"")
            return
        except _StreamFailure as error:
            yield _stream_error(source, position, error.__cause__ or error)
            return
        except ArchiveLoadFailed as error:
            yield _quarantine(source, position, "malformed_record", " ".join(str(error).split()), b"")
            return
        if item is not None:
            yield item
        index += 1


def _warc_record(
    record: ArcWarcRecord, source: str, index: int, position: str
) -> Document | Quarantined | None:
    """The document (or quarantine record) of a WET conversion or HTML response record; None to skip it."""
    url = record.rec_headers.get_header("WARC-Target-URI")
    if record.rec_type == "conversion":
        payload = record.content_stream().read()
        if (kind := _sniff(payload[:_HEAD])) not in ("text", "empty"):
            return _quarantine(source, position, "not_text", f"conversion record looks like {kind}", payload)
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError as error:
            return _quarantine(source, position, "invalid_utf8", str(error), payload)
        return _document(source, index, text, url, position, payload)

    http = record.http_headers
    if record.rec_type != "response" or http is None or not (http.get_statuscode() or "").startswith("2"):
        return None
    content_type = http.get_header("Content-Type") or record.rec_headers.get_header(
        "WARC-Identified-Payload-Type", ""
    )
    if content_type.split(";")[0].strip().lower() not in _HTML_TYPES:
        return None
    payload = record.content_stream().read()
    if (kind := _sniff(payload[:_HEAD])) not in ("text", "empty"):
        return _quarantine(source, position, "not_text", f"HTML response looks like {kind}", payload)
    html, tried = _decode_html(payload, content_type)
    if html is None:
        return _quarantine(source, position, "invalid_utf8", f"payload does not decode as {tried}", payload)
    if not html.strip():
        return _quarantine(source, position, "empty_after_extraction", "empty HTML payload", payload)
    try:
        LRU_TEST.clear()  # trafilatura's dedup cache is process-wide: dedup within this page only
        tree = trafilatura.load_html(html)
        text = None
        if tree is not None:
            text = trafilatura.extract(
                tree, url=url, favor_precision=False, include_comments=False, deduplicate=True
            )
    except Exception as error:  # trafilatura/lxml can fail in many ways on hostile HTML
        detail = f"{type(error).__name__}: {error}"
        return _quarantine(source, position, "html_extraction_failed", detail, payload)
    if tree is None:
        detail = "trafilatura could not parse the payload as HTML"
        return _quarantine(source, position, "html_extraction_failed", detail, payload)
    if not text or text.isspace():
        detail = "trafilatura found no main text"
        return _quarantine(source, position, "empty_after_extraction", detail, payload)
    return _document(source, index, text, url, position, payload)


def _decode_html(payload: bytes, content_type: str) -> tuple[str | None, str]:
    """Decode with the HTTP charset, else the <meta> one, then UTF-8: (html, codec) or (None, tried)."""
    match = _HTTP_CHARSET.search(content_type)
    label = match.group(1) if match else None
    if label is None and (meta := _META_CHARSET.search(payload[:4096])):
        label = meta.group(1).decode("ascii")
    tried = []
    try:
        if label:
            codec = codecs.lookup(label).name
            tried.append(_SUPERSETS.get(codec, codec))
    except LookupError:  # an unknown label
        pass
    tried = list(dict.fromkeys([*tried, "utf-8"]))
    for codec in tried:
        try:
            return payload.decode(codec).removeprefix("\ufeff"), codec
        except (UnicodeDecodeError, LookupError):  # LookupError: a non-text codec such as rot13
            continue
    return None, " or ".join(tried)
