"""Parquet: one document per row of a `text` column (string or binary; `url` kept when present); the
position is the 0-based row. A file without a single text column gives one `missing_text` record; a row
group that cannot be read is quarantined and the next one is still read."""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.readers import base
from pipelines.readers.base import ReadOptions

BATCH_ROWS = 1024


def _is_text_type(dtype: pa.DataType) -> bool:
    if pa.types.is_dictionary(dtype):
        dtype = dtype.value_type
    return any(check(dtype) for check in (pa.types.is_string, pa.types.is_large_string,
                                          pa.types.is_binary, pa.types.is_large_binary))  # fmt: skip


def read(
    stream: BinaryIO, head: bytes, source: str, options: ReadOptions
) -> Iterator[base.Document | base.Quarantined]:
    """Read the text (and url) columns by batches within each row group; a bad row group is reported and
    the next one is still read."""
    try:
        parquet = pq.ParquetFile(stream)
        schema = parquet.schema_arrow
    except (OSError, pa.ArrowException) as error:
        yield base.quarantine(source, "file", "unreadable_file", f"{type(error).__name__}: {error}", b"")
        return
    with parquet:
        if schema.get_field_index("text") < 0:  # absent, or present twice
            detail = f"no single 'text' column (columns: {', '.join(schema.names[:10])})"
            yield base.quarantine(source, "file", "missing_text", detail, b"")
            return
        if not _is_text_type(dtype := schema.field("text").type):
            yield base.quarantine(source, "file", "text_not_string", f"'text' column has type {dtype}", b"")
            return
        columns = ["text", "url"] if schema.get_field_index("url") >= 0 else ["text"]
        row = 0
        for group in range(parquet.num_row_groups):
            end = row + parquet.metadata.row_group(group).num_rows
            try:
                batches = parquet.iter_batches(batch_size=BATCH_ROWS, row_groups=[group], columns=columns)
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
                yield base.quarantine(source, f"row {row}", "unreadable_file", detail, b"")
            row = end


def _parquet_row(source: str, row: int, text: object, url: object) -> base.Document | base.Quarantined:
    position = f"row {row}"
    if text is None:
        return base.quarantine(source, position, "missing_text", "text is null", "")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as error:
            return base.quarantine(source, position, "invalid_utf8", str(error), text)
    raw = text if isinstance(text, str) else ""
    return base.document(source, row, text, url if isinstance(url, str) else None, position, raw)
