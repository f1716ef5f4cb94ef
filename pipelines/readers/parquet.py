"""Parquet: one document per row of the `text_key` column (string or binary), the record's own id from
the `id_key` column, `url` kept when present, every other column as metadata. The position is the 0-based
row (within the split: splits are ranges of row groups). A file without a single text column gives one
`missing_text` record; a row group that cannot be read is quarantined and the next one is still read.
Page checksums are verified where the writer stored them: a row group with a page that does not match
is quarantined as `corrupt_file` instead of being read with changed text."""

from __future__ import annotations

from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.readers import base
from pipelines.readers.base import ReadOptions, Split

BATCH_ROWS = 1024


def _is_text_type(dtype: pa.DataType) -> bool:
    if pa.types.is_dictionary(dtype):
        dtype = dtype.value_type
    return any(check(dtype) for check in (pa.types.is_string, pa.types.is_large_string,
                                          pa.types.is_binary, pa.types.is_large_binary))  # fmt: skip


def _path_type(schema: pa.Schema, path: str) -> pa.DataType | None:
    """The type of a column, or of a dotted path into struct columns; None when absent or ambiguous."""
    if schema.get_field_index(path) >= 0:
        return schema.field(path).type
    top, *rest = path.split(".")
    if not rest or schema.get_field_index(top) < 0:
        return None
    dtype = schema.field(top).type
    for part in rest:
        if not pa.types.is_struct(dtype) or dtype.get_field_index(part) < 0:
            return None
        dtype = dtype.field(part).type
    return dtype


def _column(batch: pa.RecordBatch, path: str) -> pa.Array:
    """A column of a batch, or a dotted path into its struct columns."""
    if batch.schema.get_field_index(path) >= 0:
        return batch.column(path)
    top, *rest = path.split(".")
    value = batch.column(top)
    for part in rest:
        value = pc.struct_field(value, part)
    return value


def _top(schema: pa.Schema, path: str) -> str:
    """The top-level column a column path reads."""
    return path if schema.get_field_index(path) >= 0 else path.split(".")[0]


def _problem(schema: pa.Schema, options: ReadOptions) -> tuple[str, str] | None:
    """(reason, detail) when the file has no usable text column."""
    if (dtype := _path_type(schema, options.text_key)) is None:  # absent, or present twice
        columns = ", ".join(schema.names[:10])
        return "missing_text", f"no single {options.text_key!r} column (columns: {columns})"
    if not _is_text_type(dtype):
        return "text_not_string", f"{options.text_key!r} column has type {dtype}"
    return None


def group_offset(metadata: pq.FileMetaData, group: int) -> int:
    """The byte offset of a row group in its file (where its first column chunk starts)."""
    column = metadata.row_group(group).column(0)
    offsets = [o for o in (column.dictionary_page_offset, column.data_page_offset) if o]
    return min(offsets) if offsets else 0


def splits(stream: BinaryIO, split_bytes: int, options: ReadOptions) -> list[Split]:
    """Runs of whole row groups, a new one at the first group starting past each multiple of
    `split_bytes` (one split when the file cannot be read or has no text column)."""
    try:
        parquet = pq.ParquetFile(stream)
    except (OSError, pa.ArrowException):
        return [Split()]
    if _problem(parquet.schema_arrow, options) or parquet.num_row_groups < 2:
        return [Split()]
    starts, next_cut = [0], split_bytes
    for group in range(1, parquet.num_row_groups):
        if group_offset(parquet.metadata, group) >= next_cut:
            starts.append(group)
            next_cut = (group_offset(parquet.metadata, group) // split_bytes + 1) * split_bytes
    stops = [*starts[1:], parquet.num_row_groups]
    return [Split(a, b) for a, b in zip(starts, stops, strict=True)]


def read(stream: BinaryIO, head: bytes, source: str, options: ReadOptions, split: Split) -> base.Records:
    """Read the text, id, url and metadata columns by batches within each row group of the split; a bad
    row group is reported and the next one is still read."""
    try:
        parquet = pq.ParquetFile(stream, page_checksum_verification=True)
        schema = parquet.schema_arrow
    except (OSError, pa.ArrowException) as error:
        detail = f"{type(error).__name__}: {error}"
        yield base.quarantine(source, "file", None, "unreadable_file", detail, b"")
        return None
    with parquet:
        if problem := _problem(schema, options):
            yield base.quarantine(source, "file", None, *problem, b"")
            return None
        names = schema.names
        id_key = options.id_key if options.id_key and _path_type(schema, options.id_key) else None
        named = [options.text_key, *([id_key] if id_key else [])]
        tops = [_top(schema, path) for path in named]
        # a column read for the text or id alone is not metadata; a struct holding them is, without them
        others = (
            [n for n in names if n not in tops or "." in named[tops.index(n)]] if options.metadata else []
        )
        columns = list(dict.fromkeys([*tops, *(["url"] if "url" in names else []), *others]))
        groups = range(split.start, parquet.num_row_groups if split.stop is None else split.stop)
        row = 0
        for group in groups:
            end = row + parquet.metadata.row_group(group).num_rows
            offset = group_offset(parquet.metadata, group)
            try:
                batches = parquet.iter_batches(batch_size=BATCH_ROWS, row_groups=[group], columns=columns)
                for batch in batches:
                    yield from _batch(batch, source, row, offset, named, others)
                    row += batch.num_rows
            except (OSError, pa.ArrowException) as error:
                # a page that does not match its stored CRC: changed bytes, never read as text
                reason = "corrupt_file" if "checksum" in str(error).lower() else "unreadable_file"
                detail = (
                    f"rows {row}-{end - 1} of row group {group} unreadable: {type(error).__name__}: {error}"
                )
                yield base.quarantine(source, "row", row, reason, detail, b"", offset)
            row = end
        return row


def _batch(
    batch: pa.RecordBatch, source: str, first: int, offset: int, named: list[str], others: list[str]
) -> list[base.Document | base.Quarantined]:
    texts = _column(batch, named[0]).to_pylist()
    n = len(texts)
    urls = _strings(batch, "url", n)
    own_ids = _ids(_column(batch, named[1])) if len(named) > 1 else [None] * n
    metadata: list[str | None] = [None] * n
    if others:
        nested = [path for path in named if "." in path]
        rows = batch.select(others).to_pylist()
        metadata = [base.metadata_json(base.without(row, nested) if nested else row) for row in rows]
    return [_row(source, first + i, texts[i], urls[i], own_ids[i], metadata[i], offset) for i in range(n)]


def _strings(batch: pa.RecordBatch, name: str, n: int) -> list[Any]:
    if name not in batch.schema.names:
        return [None] * n
    return [v if isinstance(v, str) else None for v in batch.column(name).to_pylist()]


def _ids(column: pa.Array) -> list[str | None]:
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return column.to_pylist()
    if pa.types.is_integer(column.type):
        return pc.cast(column, pa.string()).to_pylist()
    return [base.id_text(v) for v in column.to_pylist()]


def _row(
    source: str, row: int, text: object, url: str | None, own_id: str | None, metadata: str | None,
    offset: int,
) -> base.Document | base.Quarantined:  # fmt: skip
    if text is None:
        return base.quarantine(source, "row", row, "missing_text", "text is null", "", offset)
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as error:
            return base.quarantine(source, "row", row, "invalid_utf8", str(error), text, offset)
    raw = text if isinstance(text, str) else ""
    return base.document(
        source, "row", row, text, raw, url=url, source_id=own_id, metadata=metadata, offset=offset
    )
