"""WARC and WET: WET `conversion` records (plain text) and 2xx HTML `response` records (main text
extracted with trafilatura, as datatrove does) become documents; warcinfo, request, metadata, non-HTML and
non-2xx responses are skipped by design. The position is the 0-based record number among all records;
offsets are positions in the decompressed stream."""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterator
from typing import BinaryIO

import trafilatura
from trafilatura.deduplication import LRU_TEST
from warcio.archiveiterator import ArchiveIterator
from warcio.exceptions import ArchiveLoadFailed
from warcio.recordloader import ArcWarcRecord

from pipelines.readers import base
from pipelines.readers.base import ReadOptions

_HTML_TYPES = {"text/html", "application/xhtml+xml"}
_HTTP_CHARSET = re.compile(r"charset\s*=\s*[\"']?\s*([\w.:-]+)", re.IGNORECASE)
_META_CHARSET = re.compile(rb"<meta[^>]{0,200}?charset\s*=\s*[\"']?\s*([\w.:-]+)", re.IGNORECASE)
# Labels that browsers decode with a superset (WHATWG Encoding Standard).
_SUPERSETS = {
    "iso8859-1": "cp1252", "ascii": "cp1252", "gb2312": "gb18030", "gbk": "gb18030",
    "big5": "big5hkscs", "shift_jis": "cp932", "euc_kr": "cp949",
}  # fmt: skip


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


def read(
    stream: BinaryIO, head: bytes, source: str, options: ReadOptions
) -> Iterator[base.Document | base.Quarantined]:
    records = _ArchiveIterator(_Guarded(stream))
    index = 0
    while True:
        position = f"record {index}"
        try:
            records.read_to_end()  # finish the previous record: trailing blank lines, next header line
            position = f"record {index} (offset {records.offset})"
            record = next(records, None)
            if record is None:
                return
            item = _warc_record(record, source, index, position)
            while record.raw_stream.read(base.CHUNK):  # the rest of this record, to check its length
                pass
            if missing := getattr(record.raw_stream, "limit", 0):
                raise _CutShort(f"the stream ends {missing} bytes before the end of the record")
        except _CutShort as error:
            yield base.quarantine(source, position, "truncated_file", str(error), b"")
            return
        except _StreamFailure as error:
            yield base.stream_error(source, position, error.__cause__ or error)
            return
        except ArchiveLoadFailed as error:
            yield base.quarantine(source, position, "malformed_record", " ".join(str(error).split()), b"")
            return
        if item is not None:
            yield item
        index += 1


def _warc_record(
    record: ArcWarcRecord, source: str, index: int, position: str
) -> base.Document | base.Quarantined | None:
    """The document (or quarantine record) of a WET conversion or HTML response record; None to skip it."""
    url = record.rec_headers.get_header("WARC-Target-URI")
    if record.rec_type == "conversion":
        payload = record.content_stream().read()
        if (kind := base.sniff(payload[: base.HEAD])) not in ("text", "empty"):
            return base.quarantine(
                source, position, "not_text", f"conversion record looks like {kind}", payload
            )
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError as error:
            return base.quarantine(source, position, "invalid_utf8", str(error), payload)
        return base.document(source, index, text, url, position, payload)

    http = record.http_headers
    if record.rec_type != "response" or http is None or not (http.get_statuscode() or "").startswith("2"):
        return None
    content_type = http.get_header("Content-Type") or record.rec_headers.get_header(
        "WARC-Identified-Payload-Type", ""
    )
    if content_type.split(";")[0].strip().lower() not in _HTML_TYPES:
        return None
    payload = record.content_stream().read()
    if (kind := base.sniff(payload[: base.HEAD])) not in ("text", "empty"):
        return base.quarantine(source, position, "not_text", f"HTML response looks like {kind}", payload)
    html, tried = _decode_html(payload, content_type)
    if html is None:
        return base.quarantine(
            source, position, "invalid_utf8", f"payload does not decode as {tried}", payload
        )
    if not html.strip():
        return base.quarantine(source, position, "empty_after_extraction", "empty HTML payload", payload)
    try:
        LRU_TEST.clear()  # trafilatura's dedup cache is process-wide: dedup within this page only
        tree = trafilatura.load_html(html)
        text = None
        if tree is not None:
            text = trafilatura.extract(
                tree, url=url, favor_precision=False, include_comments=False, deduplicate=True
            )
    except Exception as error:  # trafilatura/lxml can fail in many ways on hostile HTML
        detail = f"{type(error).__name__}: {error}"
        return base.quarantine(source, position, "html_extraction_failed", detail, payload)
    if tree is None:
        detail = "trafilatura could not parse the payload as HTML"
        return base.quarantine(source, position, "html_extraction_failed", detail, payload)
    if not text or text.isspace():
        detail = "trafilatura found no main text"
        return base.quarantine(source, position, "empty_after_extraction", detail, payload)
    return base.document(source, index, text, url, position, payload)


def _decode_html(payload: bytes, content_type: str) -> tuple[str | None, str]:
    """Decode with the HTTP charset, else the <meta> one, then UTF-8: (html, codec) or (None, tried)."""
    match = _HTTP_CHARSET.search(content_type)
    label = match.group(1) if match else None
    if label is None and (meta := _META_CHARSET.search(payload[:4096])):
        label = meta.group(1).decode("ascii")
    tried = []
    try:
        if label:
            codec = codecs.lookup(label).name
            tried.append(_SUPERSETS.get(codec, codec))
    except LookupError:  # an unknown label
        pass
    tried = list(dict.fromkeys([*tried, "utf-8"]))
    for codec in tried:
        try:
            return payload.decode(codec).removeprefix("\ufeff"), codec
        except (UnicodeDecodeError, LookupError):  # LookupError: a non-text codec such as rot13
            continue
    return None, " or ".join(tried)
