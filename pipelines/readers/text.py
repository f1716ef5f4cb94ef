"""Plain text: the whole file is one document, at position 0 (a file is one record, so it is never
split)."""

from __future__ import annotations

from dataclasses import replace
from typing import BinaryIO

from pipelines.readers import base
from pipelines.readers.base import ReadOptions, Split


def read(stream: BinaryIO, head: bytes, source: str, options: ReadOptions, split: Split) -> base.Records:
    try:
        data, over = base.read_capped(stream, options)
    except base.STREAM_ERRORS as error:
        yield base.stream_error(source, "file", None, error)
        return None
    if over and not options.truncate:
        yield base.too_large(source, "file", None, None, options.max_document_bytes, data)
        return 1
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        window = data[max(0, error.start - 50) : error.start + 50]
        yield base.quarantine(source, "file", None, "invalid_utf8", str(error), window)
        return 1
    doc = base.document(source, "file", 0, text.removeprefix("\ufeff"), data)
    yield replace(doc, truncated=True) if over and isinstance(doc, base.Document) else doc
    return 1
