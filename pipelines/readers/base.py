"""What every reader shares: documents, quarantine records and their reasons, reading options, splits,
record fields by dotted path, content sniffing."""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, BinaryIO

import zstandard

REASONS: dict[str, str] = {
    "malformed_json": "a JSONL line is not valid JSON",
    "not_an_object": "a JSONL line is valid JSON but not an object",
    "missing_text": "no text: JSON key, CSV/Parquet column absent (one record per file) or value null",
    "text_not_string": "the text value (or the Parquet column type) is not a string",
    "empty_text": "the text is empty or whitespace only",
    "invalid_utf8": "bytes that are not valid UTF-8 (or a lone surrogate); for HTML: no charset tried fits",
    "nul_bytes": "the raw line or the text contains NUL (\\x00)",
    "line_too_long": "a JSONL line longer than ingest.max_line_bytes; skipped as it streams by, never loaded",
    "too_large": "a document whose text is longer than ingest.max_document_bytes (UTF-8); never loaded whole",
    "not_text": "binary content where text was expected (a whole file, or one WARC/WET record)",
    "unreadable_file": "the file cannot be opened or read (permission, I/O error, bad Parquet)",
    "not_a_regular_file": "a FIFO, socket or device among the inputs: skipped without being opened",
    "truncated_file": "the gzip/zstd/WARC stream ends early; the complete records before it were kept",
    "corrupt_file": "the compressed stream is corrupt (bad data, CRC, trailing junk), or a Parquet page "
    "does not match its stored checksum; the records before it (other row groups) kept",
    "malformed_record": "a WARC record header cannot be parsed; the rest of the file is skipped",
    "malformed_row": "a CSV/TSV row that cannot be parsed or has another number of fields than the header",
    "unsupported_format": "unknown file extension, or content that does not match the extension",
    "html_extraction_failed": "HTML (a file or a WARC response) could not be parsed, or trafilatura raised",
    "empty_after_extraction": "trafilatura found no main text in an HTML page (file or WARC response)",
}

MAX_DOCUMENT_BYTES = 10 << 20  # default cap on one document's text; longer -> too_large (or cut)
MAX_LINE_BYTES = 32 << 20  # default cap on one JSONL line; longer lines -> line_too_long
EXCERPT_CHARS = 200
HEAD = 8192  # bytes sniffed at the start of a file or record
CHUNK = 1 << 16
MAGIC = (
    (b"\x1f\x8b", "gzip"), (b"\x28\xb5\x2f\xfd", "zstd"), (b"PAR1", "Parquet"), (b"WARC/", "WARC"),
    (b"\x89PNG\r\n\x1a\n", "PNG image"), (b"\xff\xd8\xff", "JPEG image"), (b"GIF8", "GIF image"),
    (b"%PDF-", "PDF document"), (b"PK\x03\x04", "zip archive"), (b"\xfd7zXZ\x00", "xz"),
)  # fmt: skip
# C0 controls other than \t \n \v \f \r ESC, and DEL: more than 5% of them (and at least 8) means binary.
_CONTROL_BYTES = bytes(b for b in range(256) if (b < 32 and b not in b"\t\n\v\f\r\x1b") or b == 127)
JSON_TYPES = {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number",
              bool: "a boolean", type(None): "null"}  # fmt: skip
STREAM_ERRORS = (EOFError, OSError, zlib.error, zstandard.ZstdError)


@dataclass(frozen=True, slots=True)
class Document:
    """One input document.

    `position` is its line (JSONL, 1-based), row (Parquet, CSV/TSV; 0-based), record (WARC/WET; 0-based)
    or 0 (a whole-file document), counted from the start of the split it was read from; `offset` is the
    byte offset of the record in the (decompressed) file, or of its Parquet row group. `source_id` is the
    record's own id (`ReadOptions.id_key`; the WARC-Record-ID), `metadata` its other fields as a JSON
    object (None when reading without metadata). `truncated`: the text was cut to
    `ReadOptions.max_document_bytes`.
    """

    source: str
    position: int
    text: str
    url: str | None = None
    source_id: str | None = None
    metadata: str | None = None
    offset: int = 0
    truncated: bool = False

    @property
    def id(self) -> str:
        """gristmill's stable id: `<source>:<position>`."""
        return f"{self.source}:{self.position}"


@dataclass(frozen=True, slots=True)
class Quarantined:
    """One piece of bad input, with where it was and why it was set aside.

    `unit` is "file", "line", "row" or "record"; `number` the line/row/record number (counted like
    `Document.position`, None for the whole file); `offset` the record's byte offset when known.
    """

    source: str
    unit: str
    number: int | None
    reason: str  # a key of REASONS
    detail: str
    excerpt: str  # printable, at most EXCERPT_CHARS
    offset: int | None = None

    def __post_init__(self) -> None:
        if self.reason not in REASONS:
            raise ValueError(f"unknown quarantine reason {self.reason!r}")

    @property
    def position(self) -> str:
        """'file', 'line 12', 'row 3' or 'record 5 (offset 1234)'."""
        if self.unit == "file":
            return "file"
        where = f"{self.unit} {self.number}"
        return (
            f"{where} (offset {self.offset})" if self.unit == "record" and self.offset is not None else where
        )

    def record(self) -> dict[str, str]:
        """The quarantine/ line of this record."""
        return {"source": self.source, "position": self.position, "reason": self.reason,
                "detail": self.detail, "excerpt": self.excerpt}  # fmt: skip


# A reader yields documents and quarantine records and returns the number of positions (lines, rows,
# records) it went through, or None when it stopped early (the rest of the file skipped).
Records = Generator[Document | Quarantined, None, int | None]


@dataclass(frozen=True)
class ReadOptions:
    """How to read one input: where the text and the record's own id are, whether to keep metadata,
    limits."""

    text_key: str = "text"  # JSON key, CSV/Parquet column; dotted paths (metadata.text) reach nested fields
    id_key: str | None = "id"  # the record's own id, when present; None: none
    metadata: bool = True  # keep the record's other fields as a JSON object
    max_line_bytes: int = MAX_LINE_BYTES
    max_document_bytes: int = MAX_DOCUMENT_BYTES  # UTF-8 bytes of one document's text
    truncate: bool = False  # a longer text is cut to max_document_bytes (else quarantined as too_large)


@dataclass(frozen=True)
class Split:
    """A part of one input file that one task reads: bytes [start, stop) (JSONL, WARC/WET; a record
    belongs to the split its first byte is in) or row groups [start, stop) (Parquet). The default is
    the whole file."""

    start: int = 0
    stop: int | None = None


WHOLE = Split()


def utf8_size(text: str) -> int:
    """The UTF-8 length of a text (without encoding it when it is ASCII)."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def cut(data: bytes, limit: int) -> bytes:
    """The first `limit` bytes of UTF-8 `data`, less a character the cut would split."""
    end = min(limit, len(data))
    while 0 < end < len(data) and data[end] & 0xC0 == 0x80:  # data[end] continues a character
        end -= 1
    return data[:end]


def too_large(
    source: str, unit: str, number: int | None, size: int | None, limit: int, raw: bytes | str,
    offset: int | None = None,
) -> Quarantined:  # fmt: skip
    """The quarantine record of a document over `limit` bytes (`size`: its bytes; None: not read to
    its end)."""
    length = f"{size} bytes" if size is not None else "longer"
    detail = f"text is {length}, more than max_document_bytes = {limit}"
    return quarantine(source, unit, number, "too_large", detail, raw, offset)


def read_capped(stream: BinaryIO | Any, options: ReadOptions) -> tuple[bytes, bool]:
    """The content of a stream, never more than max_document_bytes of it: (content, whether the stream
    held more). With `options.truncate`, a longer content comes cut to the limit."""
    limit = options.max_document_bytes
    data = stream.read(limit + 1)
    if len(data) <= limit:
        return data, False
    return (cut(data, limit) if options.truncate else data[:HEAD]), True


def sniff(head: bytes) -> str:
    """Name what the first bytes look like: a MAGIC name, 'binary', 'text' or 'empty'."""
    if not head:
        return "empty"
    for magic, name in MAGIC:
        if head.startswith(magic):
            return name
    controls = len(head) - len(head.translate(None, _CONTROL_BYTES))
    return "binary" if controls > 0.05 * len(head) and controls >= 8 else "text"


def excerpt(data: bytes | str) -> str:
    if not data:
        return ""
    text = repr(data[:EXCERPT_CHARS])
    return text if len(text) <= EXCERPT_CHARS else text[: EXCERPT_CHARS - 3] + "..."


def quarantine(
    source: str, unit: str, number: int | None, reason: str, detail: str, raw: bytes | str,
    offset: int | None = None,
) -> Quarantined:  # fmt: skip
    return Quarantined(source, unit, number, reason, detail, excerpt(raw), offset)


def stream_error(
    source: str, unit: str, number: int | None, error: BaseException, offset: int | None = None
) -> Quarantined:
    if isinstance(error, EOFError):
        reason = "truncated_file"
    elif isinstance(error, zlib.error | gzip.BadGzipFile | zstandard.ZstdError):
        reason = "corrupt_file"
    else:
        reason = "unreadable_file"
    return quarantine(source, unit, number, reason, f"{type(error).__name__}: {error}", b"", offset)


def document(
    source: str, unit: str, index: int, text: object, raw: bytes | str, *, url: str | None = None,
    source_id: str | None = None, metadata: str | None = None, offset: int = 0,
) -> Document | Quarantined:  # fmt: skip
    """Check a text value; a Document if it is usable text."""

    def bad(reason: str, detail: str) -> Quarantined:
        return quarantine(source, unit, index, reason, detail, raw, offset)

    if not isinstance(text, str):
        return bad("text_not_string", f"text is {JSON_TYPES.get(type(text), type(text).__name__)}")
    if "\x00" in text:
        return bad("nul_bytes", f"NUL at character {text.index(chr(0))}")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as error:  # a lone surrogate, e.g. from a JSON "\ud800" escape
            where = f"lone surrogate U+{ord(text[error.start]):04X} at character {error.start}"
            return bad("invalid_utf8", where)
    if not text or text.isspace():
        return bad("empty_text", "text is empty or whitespace only")
    return Document(source, index, text, url, source_id, metadata, offset)


MISSING = object()


def field(record: dict[str, Any], path: str) -> Any:
    """The value at `path` in a record: the key itself, else a dotted path through nested objects;
    `MISSING` when absent."""
    if path in record:
        return record[path]
    value: Any = record
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return MISSING
        value = value[part]
    return value


def without(record: dict[str, Any], paths: list[str]) -> dict[str, Any]:
    """A copy of `record` without the fields at `paths` (nested objects along a dotted path copied)."""
    out = dict(record)
    for path in paths:
        if path in out:
            del out[path]
            continue
        parts, node = path.split("."), out
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                break
            node[part] = node = dict(node[part])
        else:
            node.pop(parts[-1], None)
    return out


def id_text(value: Any) -> str | None:
    """A record's own id as text: strings as they are, other values as JSON; None when absent or null."""
    if value is MISSING or value is None:
        return None
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)


def metadata_json(fields: dict[str, Any]) -> str:
    """The metadata column's value: the fields as one compact JSON object (bytes as UTF-8, dates ISO)."""
    return json.dumps(fields, ensure_ascii=False, separators=(",", ":"), default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)
