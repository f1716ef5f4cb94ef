"""Plain text: the whole file is one document, at position 0 (a file is one record, so it is never
split)."""

from __future__ import annotations

from typing import BinaryIO

from pipelines.readers import base
from pipelines.readers.base import ReadOptions, Split


def read(stream: BinaryIO, head: bytes, source: str, options: ReadOptions, split: Split) -> base.Records:
    try:
        data = stream.read()
    except base.STREAM_ERRORS as error:
        yield base.stream_error(source, "file", None, error)
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        window = data[max(0, error.start - 50) : error.start + 50]
        yield base.quarantine(source, "file", None, "invalid_utf8", str(error), window)
        return 1
    yield base.document(source, "file", 0, text.removeprefix("\ufeff"), data)
    return 1
