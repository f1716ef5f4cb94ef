"""WARC and WET: WET `conversion` records (plain text) and 2xx HTML `response` records (main text
extracted with trafilatura, as datatrove does: `readers.html`) become documents; warcinfo, request,
metadata, non-HTML and non-2xx responses are skipped by design. The position is the 0-based record number
among all records; offsets are positions in the decompressed stream. A document's own id is its
WARC-Record-ID; its metadata the headers that matter (record id, type, target URI, date, content type,
refers-to, identified language). Uncompressed files split at record starts, found by following
Content-Length from the first record."""

from __future__ import annotations

from dataclasses import replace
from typing import BinaryIO

from warcio.archiveiterator import ArchiveIterator
from warcio.exceptions import ArchiveLoadFailed
from warcio.recordloader import ArcWarcRecord

from pipelines.readers import base, html
from pipelines.readers.base import ReadOptions, Split

_HTML_TYPES = {"text/html", "application/xhtml+xml"}


class _StreamFailure(Exception):
    """A read error under warcio, wrapped so that warcio cannot take it for the clean end of the archive."""


class _CutShort(Exception):
    """The archive ends inside a record."""


class _Guarded:
    """File-like wrapper turning stream errors into _StreamFailure (warcio swallows EOFError)."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream

    def read(self, size: int = -1) -> bytes:
        try:  # read1: a short read keeps what was decompressed before a truncation
            return self._stream.read1(size)
        except base.STREAM_ERRORS as error:
            raise _StreamFailure(error) from error


class _ArchiveIterator(ArchiveIterator):
    """warcio's iterator, except that a record cut inside its headers raises instead of quietly ending
    the archive (warcio treats any EOFError while parsing a record as the end)."""

    def _next_record(self, next_line: bytes | None) -> ArcWarcRecord:
        if next_line is None:
            next_line = self.reader.readline()
            if not next_line:
                raise EOFError  # the clean end of the archive
        try:
            return super()._next_record(next_line)
        except (EOFError, ArchiveLoadFailed, AttributeError, TypeError, ValueError) as error:
            # warcio fails in various ways on broken headers: cut short if nothing follows, else malformed
            if isinstance(error, EOFError) or not self.reader.read(1):
                raise _CutShort("the stream ends inside a record's headers") from error
            raise ArchiveLoadFailed(f"{type(error).__name__}: {error}") from error


def read(stream: BinaryIO, head: bytes, source: str, options: ReadOptions, split: Split) -> base.Records:
    records = _ArchiveIterator(_Guarded(stream))
    index, offset = 0, None
    while True:
        try:
            offset = None
            records.read_to_end()  # finish the previous record: trailing blank lines, next header line
            offset = records.offset + split.start
            record = next(records, None)
            if record is None:
                return index
            item = _warc_record(record, source, index, offset, options)
            while record.raw_stream.read(base.CHUNK):  # the rest of this record, to check its length
                pass
            if missing := getattr(record.raw_stream, "limit", 0):
                raise _CutShort(f"the stream ends {missing} bytes before the end of the record")
        except _CutShort as error:
            yield base.quarantine(source, "record", index, "truncated_file", str(error), b"", offset)
            return None
        except _StreamFailure as error:
            yield base.stream_error(source, "record", index, error.__cause__ or error, offset)
            return None
        except ArchiveLoadFailed as error:
            detail = " ".join(str(error).split())
            yield base.quarantine(source, "record", index, "malformed_record", detail, b"", offset)
            return None
        if item is not None:
            yield item
        index += 1


_METADATA_HEADERS = ("WARC-Record-ID", "WARC-Type", "WARC-Target-URI", "WARC-Date", "WARC-Refers-To",
                     "WARC-Identified-Content-Language")  # fmt: skip


def _warc_record(
    record: ArcWarcRecord, source: str, index: int, offset: int, options: ReadOptions
) -> base.Document | base.Quarantined | None:
    """The document (or quarantine record) of a WET conversion or HTML response record; None to skip it."""
    headers = record.rec_headers
    url = headers.get_header("WARC-Target-URI")
    if record.rec_type == "conversion":
        content_type = headers.get_header("Content-Type", "")
    else:
        http = record.http_headers
        if record.rec_type != "response" or http is None or not (http.get_statuscode() or "").startswith("2"):
            return None
        content_type = http.get_header("Content-Type") or headers.get_header(
            "WARC-Identified-Payload-Type", ""
        )
        if content_type.split(";")[0].strip().lower() not in _HTML_TYPES:
            return None

    def bad(reason: str, detail: str) -> base.Quarantined:
        return base.quarantine(source, "record", index, reason, detail, payload, offset)

    conversion = record.rec_type == "conversion"  # plain text, may be cut; a cut HTML page is no page
    payload, over = base.read_capped(
        record.content_stream(), replace(options, truncate=options.truncate and conversion)
    )
    if over and not (conversion and options.truncate):
        return base.too_large(source, "record", index, None, options.max_document_bytes, payload, offset)
    if conversion:
        if (kind := base.sniff(payload[: base.HEAD])) not in ("text", "empty"):
            return bad("not_text", f"conversion record looks like {kind}")
        try:
            text: str | None = payload.decode("utf-8")
        except UnicodeDecodeError as error:
            return bad("invalid_utf8", str(error))
    else:
        text, reason, detail = html.extract(payload, content_type, url)
        if text is None:
            return bad(reason, detail.replace("HTML looks like", "HTML response looks like"))
    metadata = None
    if options.metadata:
        fields = {name: value for name in _METADATA_HEADERS if (value := headers.get_header(name))}
        metadata = base.metadata_json({**fields, "Content-Type": content_type} if content_type else fields)
    doc = base.document(
        source, "record", index, text, payload, url=url, source_id=headers.get_header("WARC-Record-ID"),
        metadata=metadata, offset=offset,
    )  # fmt: skip
    return replace(doc, truncated=True) if over and isinstance(doc, base.Document) else doc


def splits(stream: BinaryIO, size: int, split_bytes: int) -> list[Split]:
    """Byte ranges starting at records, a new one at the first record starting past each multiple of
    `split_bytes`. The walk reads only record headers; where one cannot be parsed the last split runs to
    the end of the file, so the reader meets the problem as in a whole-file read."""
    starts, next_cut = [0], split_bytes
    end = _record_end(stream, 0, size)
    while end is not None and end < size:
        following = _record_end(stream, end, size)
        if following is None:
            break  # the record at `end` cannot be walked: it stays in the last split
        if end >= next_cut:
            starts.append(end)
            next_cut = (end // split_bytes + 1) * split_bytes
        end = following
    return [Split(a, b) for a, b in zip(starts, [*starts[1:], None], strict=True)]


_MAX_HEADER_LINES = 1000


def _record_end(stream: BinaryIO, offset: int, size: int) -> int | None:
    """Where the record at `offset` ends (past its trailing blank lines), or None when its header cannot
    be parsed or its content runs past the end of the file."""
    stream.seek(offset)
    if not stream.readline(base.CHUNK).startswith(b"WARC/"):
        return None
    length = None
    for _ in range(_MAX_HEADER_LINES):
        line = stream.readline(base.CHUNK)
        if not line.endswith(b"\n"):
            return None
        if not line.strip():
            break
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            try:
                length = int(value.strip())
            except ValueError:
                return None
    else:
        return None
    end = stream.tell() + (length if length is not None and length >= 0 else size + 1)
    if end > size:
        return None
    stream.seek(end)
    while True:
        here = stream.tell()
        line = stream.readline(base.CHUNK)
        if not line or line.strip():
            return here
