"""CSV and TSV with a header row: one document per row, its text in the `text_key` column, its own id in
the `id_key` column, `url` kept, every other column as metadata (values as the strings they are). The
position is the 0-based data row. A quoted field may span lines, so a file is never split."""

from __future__ import annotations

import csv
import io
import re
from typing import BinaryIO

from pipelines.readers import base
from pipelines.readers.base import ReadOptions, Split

_SURROGATE = re.compile("[\udc80-\udcff]")  # undecodable bytes, kept by the surrogateescape handler


def read_csv(stream: BinaryIO, head: bytes, source: str, options: ReadOptions, split: Split) -> base.Records:
    return (yield from _read(stream, source, options, ","))


def read_tsv(stream: BinaryIO, head: bytes, source: str, options: ReadOptions, split: Split) -> base.Records:
    return (yield from _read(stream, source, options, "\t"))


def _read(stream: BinaryIO, source: str, options: ReadOptions, delimiter: str) -> base.Records:
    csv.field_size_limit(max(csv.field_size_limit(), options.max_line_bytes))
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape", newline="")
    rows = csv.reader(text, delimiter=delimiter, strict=True)
    row = 0
    try:
        header = next(rows, None)
        if header is None:
            return 0
        if options.text_key not in header or header.count(options.text_key) > 1:
            detail = f"no single {options.text_key!r} column (columns: {', '.join(header[:10])})"
            yield base.quarantine(source, "file", None, "missing_text", detail, ",".join(header))
            return None
        while True:
            try:
                values = next(rows, None)
            except csv.Error as error:
                yield base.quarantine(source, "row", row, "malformed_row", f"csv.Error: {error}", "")
                row += 1
                continue
            if values is None:
                return row
            if values:  # a blank line is no row
                yield _row(source, row, header, values, options)
                row += 1
    except base.STREAM_ERRORS as error:
        yield base.stream_error(source, "row", row, error)
        return None


def _row(
    source: str, row: int, header: list[str], values: list[str], options: ReadOptions
) -> base.Document | base.Quarantined:
    raw = ",".join(values)
    if len(values) != len(header):
        detail = f"{len(values)} fields, the header has {len(header)}"
        return base.quarantine(source, "row", row, "malformed_row", detail, raw)
    if match := _SURROGATE.search(raw):
        detail = f"byte 0x{ord(match.group()) - 0xDC00:02x} is not UTF-8"
        return base.quarantine(
            source, "row", row, "invalid_utf8", detail, raw.encode("utf-8", "surrogateescape")
        )
    record = dict(zip(header, values, strict=True))
    text = record.pop(options.text_key)
    own_id = record.pop(options.id_key, None) if options.id_key else None
    url = record.get("url") or None
    metadata = base.metadata_json(record) if options.metadata else None
    return base.document(source, "row", row, text, raw, url=url, source_id=own_id or None, metadata=metadata)
