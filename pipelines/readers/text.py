"""Plain text: the whole file is one document, at position 0."""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

from pipelines.readers.base import (
    STREAM_ERRORS,
    Document,
    Quarantined,
    ReadOptions,
    document,
    quarantine,
    stream_error,
)


def read(
    stream: BinaryIO, head: bytes, source: str, options: ReadOptions
) -> Iterator[Document | Quarantined]:
    try:
        data = stream.read()
    except STREAM_ERRORS as error:
        yield stream_error(source, "file", error)
        return
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        window = data[max(0, error.start - 50) : error.start + 50]
        yield quarantine(source, "file", "invalid_utf8", str(error), window)
        return
    yield document(source, 0, text.removeprefix("\ufeff"), None, "file", data)
