"""JSON Lines: one document per line, its text at `text_key`, its own id at `id_key`, `url` (or
`metadata.url`) kept, every other field as metadata. The position is the 1-based line number (blank lines
are skipped but counted). Uncompressed files split by bytes: a line belongs to the split its first byte
is in."""

from __future__ import annotations

import codecs
import json
from typing import BinaryIO

from pipelines.readers import base
from pipelines.readers.base import ReadOptions, Split


def read(stream: BinaryIO, head: bytes, source: str, options: ReadOptions, split: Split) -> base.Records:
    if _pretty_printed(head):
        detail = "a single (pretty-printed) JSON document, not JSON Lines"
        yield base.quarantine(source, "file", None, "unsupported_format", detail, head)
        return None
    max_line_bytes = options.max_line_bytes
    lineno, offset = 1, split.start
    try:
        while line := stream.readline(max_line_bytes + 1):
            start = offset
            offset += len(line)
            if len(line) > max_line_bytes and not line.endswith(b"\n"):
                while (rest := stream.readline(base.CHUNK)) and not rest.endswith(b"\n"):
                    offset += len(rest)
                offset += len(rest)
                detail = f"line is longer than {max_line_bytes} bytes"
                yield base.quarantine(source, "line", lineno, "line_too_long", detail, line, start)
            elif line.strip():
                if start == 0:
                    line = line.removeprefix(codecs.BOM_UTF8)
                yield _record(line, source, lineno, start, options)
            lineno += 1
    except base.STREAM_ERRORS as error:
        yield base.stream_error(source, "line", lineno, error, offset)
        return None
    return lineno - 1


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
        record = json.loads(decoded)
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
