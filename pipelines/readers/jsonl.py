"""JSON Lines: one document per line with a `text` key (`url`, or `metadata.url`, kept); the position is
the 1-based line number (blank lines are skipped but counted)."""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterator
from typing import BinaryIO

from pipelines.readers import base
from pipelines.readers.base import ReadOptions


def read(
    stream: BinaryIO, head: bytes, source: str, options: ReadOptions
) -> Iterator[base.Document | base.Quarantined]:
    if _pretty_printed(head):
        detail = "a single (pretty-printed) JSON document, not JSON Lines"
        yield base.quarantine(source, "file", "unsupported_format", detail, head)
        return
    max_line_bytes = options.max_line_bytes
    lineno = 1
    try:
        while line := stream.readline(max_line_bytes + 1):
            if len(line) > max_line_bytes and not line.endswith(b"\n"):
                while (rest := stream.readline(base.CHUNK)) and not rest.endswith(b"\n"):
                    pass
                detail = f"line is longer than {max_line_bytes} bytes"
                yield base.quarantine(source, f"line {lineno}", "line_too_long", detail, line)
            elif line.strip():
                yield _record(line.removeprefix(codecs.BOM_UTF8) if lineno == 1 else line, source, lineno)
            lineno += 1
    except base.STREAM_ERRORS as error:
        yield base.stream_error(source, f"line {lineno}", error)


def _pretty_printed(head: bytes) -> bool:
    """A first line that is a lone '[' or '{': one pretty-printed JSON document, not JSON Lines."""
    return head.removeprefix(codecs.BOM_UTF8).lstrip().split(b"\n", 1)[0].strip() in (b"[", b"{")


def _record(line: bytes, source: str, lineno: int) -> base.Document | base.Quarantined:
    position = f"line {lineno}"
    try:
        decoded = line.decode("utf-8")
    except UnicodeDecodeError as error:
        return base.quarantine(source, position, "invalid_utf8", str(error), line)
    if "\x00" in decoded:
        return base.quarantine(
            source, position, "nul_bytes", f"NUL at character {decoded.index(chr(0))}", line
        )
    try:
        record = json.loads(decoded)
    except (ValueError, RecursionError) as error:
        return base.quarantine(source, position, "malformed_json", f"{type(error).__name__}: {error}", line)
    if not isinstance(record, dict):
        detail = f"JSON value is {base.JSON_TYPES.get(type(record), type(record).__name__)}, not an object"
        return base.quarantine(source, position, "not_an_object", detail, line)
    if "text" not in record:
        keys = ", ".join(list(record)[:10])
        return base.quarantine(source, position, "missing_text", f"no 'text' key (keys: {keys})", line)
    url = record.get("url")
    if not isinstance(url, str):
        metadata = record.get("metadata")
        url = metadata.get("url") if isinstance(metadata, dict) else None
    return base.document(
        source, lineno, record["text"], url if isinstance(url, str) else None, position, line
    )
