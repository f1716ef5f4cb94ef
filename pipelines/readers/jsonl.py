"""JSON Lines: one document per line, its text at `text_key`, its own id at `id_key`, `url` (or
`metadata.url`) kept, every other field as metadata. The position is the 1-based line number (blank lines
are skipped but counted). Uncompressed files split by bytes: a line belongs to the split its first byte
is in.

Lines end at "\n" ("\r\n" included), or at a lone "\r" in a file whose first line ends that way (old Mac
line ends). A UTF-8 byte order mark is dropped at the start of any line (files joined with `cat`). The
stream is scanned in blocks: a run of blank lines is skipped with a few byte-string operations per block
(no Python work per line), and a line longer than `max_line_bytes` is skipped as it streams by, its first
bytes kept for the excerpt.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterator
from typing import BinaryIO

from pipelines.readers import base
from pipelines.readers.base import ReadOptions, Split

BLOCK = 1 << 20  # bytes read at a time
_WHITESPACE = b" \t\n\r\x0b\x0c"  # what bytes.strip() strips: a line of these alone is blank


def read(stream: BinaryIO, head: bytes, source: str, options: ReadOptions, split: Split) -> base.Records:
    if _pretty_printed(head):
        detail = "a single (pretty-printed) JSON document, not JSON Lines"
        yield base.quarantine(source, "file", None, "unsupported_format", detail, head)
        return None
    lines = _Lines(stream, newline_of(head), options.max_line_bytes, split.start, split.stop)
    try:
        for number, offset, line, complete in lines:
            if not complete:
                detail = f"line is longer than {options.max_line_bytes} bytes"
                yield base.quarantine(source, "line", number, "line_too_long", detail, line, offset)
            elif line.strip():
                yield _record(line.removeprefix(codecs.BOM_UTF8), source, number, offset, options)
    except base.STREAM_ERRORS as error:
        yield base.stream_error(source, "line", lines.count + 1, error, lines.offset)
        return None
    return lines.count


def newline_of(head: bytes) -> bytes:
    """b"\r" when the first line end of a file is a lone carriage return, else b"\n"."""
    cr, lf = head.find(b"\r"), head.find(b"\n")
    lone_cr = cr >= 0 and (lf < 0 or cr < lf) and head[cr + 1 : cr + 2] != b"\n" and cr + 1 < len(head)
    return b"\r" if lone_cr else b"\n"


def _blank_lines_end(data: bytes, pos: int, newline: bytes) -> int:
    """The end of the blank lines that start at data[pos] (pos when the line there is not blank): the
    whitespace run is found in windows that double in size, so a short run costs little and a long one
    (a decompression bomb of newlines) a few C-level passes per block."""
    end, window = pos, 256
    while end < len(data):
        part = data[end : end + window]
        kept = len(part.lstrip())
        end += len(part) - kept
        if kept:
            break
        window = min(2 * window, BLOCK)
    last = data.rfind(newline, pos, end)
    return pos if last < 0 else last + 1


class _Lines:
    """The lines of a stream that starts at a line start (file offset `offset`), up to the last line that
    starts before `stop`: `(number, offset, line, complete)` for each line that is not a run of blank
    lines; a line over `max_bytes` comes as its first bytes with `complete` False. `count` is the number
    of lines gone through, `offset` where the scan is."""

    def __init__(
        self, stream: BinaryIO, newline: bytes, max_bytes: int, offset: int, stop: int | None
    ) -> None:
        # read1: a short read keeps what was decompressed before a truncation or a corrupt block
        self._read = getattr(stream, "read1", stream.read)
        self._newline, self._max = newline, max_bytes
        self.offset, self._stop, self.count = offset, stop, 0
        self._data, self._pos = b"", 0

    def __iter__(self) -> Iterator[tuple[int, int, bytes, bool]]:
        newline = self._newline
        while self._stop is None or self.offset < self._stop:
            if self._pos == len(self._data):
                self._data, self._pos = self._read(BLOCK), 0
                if not self._data:
                    return
            data, pos = self._data, self._pos
            if data[pos] in _WHITESPACE and (blank_end := _blank_lines_end(data, pos, newline)) > pos:
                self._skip_blank(pos, blank_end)
                continue
            end = data.find(newline, pos)
            start = self.offset
            if 0 <= end < pos + self._max:
                line, complete = data[pos : end + 1], True
                self._advance(end + 1)
            else:
                line, complete = self._long_line()
            self.count += 1
            yield self.count, start, line, complete

    def _advance(self, pos: int) -> None:
        self.offset += pos - self._pos
        self._pos = pos

    def _skip_blank(self, pos: int, end: int) -> None:
        """Go past blank lines data[pos:end] (counting only those that start before `stop`)."""
        if self._stop is not None and self.offset + (end - pos) > self._stop:
            end = pos + (self._stop - self.offset)  # the first position at or past stop
            self.count += 1 + self._data.count(self._newline, pos, end - 1)
        else:
            self.count += self._data.count(self._newline, pos, end)
        self._advance(end)

    def _long_line(self) -> tuple[bytes, bool]:
        """Read on to the end of the line that starts at the scan position: (the line, True), or (its first
        bytes, False) when it is longer than max_bytes. The scan goes on after it."""
        newline, size = self._newline, 0
        line = bytearray()
        while True:
            data, pos = self._data, self._pos
            end = data.find(newline, pos)
            stop = len(data) if end < 0 else end + 1
            size += stop - pos
            if size <= self._max:
                line += data[pos:stop]
            elif len(line) > base.HEAD:
                del line[base.HEAD :]  # too long: only the first bytes are kept, for the excerpt
            else:
                line += data[pos : min(stop, pos + base.HEAD - len(line))]
            self._advance(stop)
            if end >= 0:
                break
            self._data, self._pos = self._read(BLOCK), 0
            if not self._data:
                break
        return bytes(line), size <= self._max


def splits(head: bytes, size: int, split_bytes: int) -> list[Split]:
    """Byte ranges of about `split_bytes` (one split for a pretty-printed file or one without a newline
    in its first bytes)."""
    if _pretty_printed(head) or b"\n" not in head:
        return [Split()]
    return [Split(start, min(start + split_bytes, size)) for start in range(0, size, split_bytes)] or [
        Split()
    ]


def _pretty_printed(head: bytes) -> bool:
    """A first line that is a lone '[' or '{': one pretty-printed JSON document, not JSON Lines."""
    return head.removeprefix(codecs.BOM_UTF8).lstrip().split(b"\n", 1)[0].strip() in (b"[", b"{")


def _record(
    line: bytes, source: str, lineno: int, offset: int, options: ReadOptions
) -> base.Document | base.Quarantined:
    def bad(reason: str, detail: str) -> base.Quarantined:
        return base.quarantine(source, "line", lineno, reason, detail, line, offset)

    try:
        decoded = line.decode("utf-8")
    except UnicodeDecodeError as error:
        return bad("invalid_utf8", str(error))
    if "\x00" in decoded:
        return bad("nul_bytes", f"NUL at character {decoded.index(chr(0))}")
    try:
        record = json.loads(decoded.rstrip("\r\n"))  # an unterminated string is reported as one
    except (ValueError, RecursionError) as error:
        return bad("malformed_json", f"{type(error).__name__}: {error}")
    if not isinstance(record, dict):
        return bad(
            "not_an_object",
            f"JSON value is {base.JSON_TYPES.get(type(record), type(record).__name__)}, not an object",
        )
    text = base.field(record, options.text_key)
    if text is base.MISSING:
        keys = ", ".join(list(record)[:10])
        return bad("missing_text", f"no {options.text_key!r} key (keys: {keys})")
    url = record.get("url")
    if not isinstance(url, str):
        nested = record.get("metadata")
        url = nested.get("url") if isinstance(nested, dict) else None
    own_id = base.field(record, options.id_key) if options.id_key else base.MISSING
    metadata = None
    if options.metadata:
        named = [options.text_key, *([options.id_key] if own_id is not base.MISSING else [])]
        metadata = base.metadata_json(base.without(record, named))
    return base.document(
        source, "line", lineno, text, line, url=url if isinstance(url, str) else None,
        source_id=base.id_text(own_id), metadata=metadata, offset=offset,
    )  # fmt: skip
