"""What every reader shares: documents, quarantine records and their reasons, content sniffing."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import zstandard

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


Records = Iterator[Document | Quarantined]


@dataclass(frozen=True)
class ReadOptions:
    """Limits every reader honours."""

    max_line_bytes: int = MAX_LINE_BYTES


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


def quarantine(source: str, position: str, reason: str, detail: str, raw: bytes | str) -> Quarantined:
    return Quarantined(source, position, reason, detail, excerpt(raw))


def stream_error(source: str, position: str, error: BaseException) -> Quarantined:
    if isinstance(error, EOFError):
        reason = "truncated_file"
    elif isinstance(error, zlib.error | gzip.BadGzipFile | zstandard.ZstdError):
        reason = "corrupt_file"
    else:
        reason = "unreadable_file"
    return quarantine(source, position, reason, f"{type(error).__name__}: {error}", b"")


def document(
    source: str, index: int, text: object, url: str | None, position: str, raw: bytes | str
) -> Document | Quarantined:
    """Check a text value; a Document if it is usable text."""
    if not isinstance(text, str):
        kind = JSON_TYPES.get(type(text), type(text).__name__)
        return quarantine(source, position, "text_not_string", f"text is {kind}", raw)
    if "\x00" in text:
        return quarantine(source, position, "nul_bytes", f"NUL at character {text.index(chr(0))}", raw)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as error:  # a lone surrogate, e.g. from a JSON "\ud800" escape
            detail = f"lone surrogate U+{ord(text[error.start]):04X} at character {error.start}"
            return quarantine(source, position, "invalid_utf8", detail, raw)
    if not text or text.isspace():
        return quarantine(source, position, "empty_text", "text is empty or whitespace only", raw)
    return Document(f"{source}:{index}", text, source, url)
