"""Plain text: the whole file is one document, at position 0."""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

from pipelines.readers import base
from pipelines.readers.base import ReadOptions


def read(
    stream: BinaryIO, head: bytes, source: str, options: ReadOptions
) -> Iterator[base.Document | base.Quarantined]:
    try:
        data = stream.read()
    except base.STREAM_ERRORS as error:
        yield base.stream_error(source, "file", error)
        return
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        window = data[max(0, error.start - 50) : error.start + 50]
        yield base.quarantine(source, "file", "invalid_utf8", str(error), window)
        return
    yield base.document(source, 0, text.removeprefix("\ufeff"), None, "file", data)
