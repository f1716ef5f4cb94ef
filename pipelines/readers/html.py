"""HTML pages: the main text extracted with trafilatura, as datatrove does (and as the WARC reader does
for HTML responses). An `.html`/`.htm` file is one document at position 0."""

from __future__ import annotations

import codecs
import re
from dataclasses import replace
from typing import BinaryIO

import trafilatura
from trafilatura.deduplication import LRU_TEST

from pipelines.readers import base
from pipelines.readers.base import ReadOptions, Split

_HTTP_CHARSET = re.compile(r"charset\s*=\s*[\"']?\s*([\w.:-]+)", re.IGNORECASE)
_META_CHARSET = re.compile(rb"<meta[^>]{0,200}?charset\s*=\s*[\"']?\s*([\w.:-]+)", re.IGNORECASE)
# Labels that browsers decode with a superset (WHATWG Encoding Standard).
_SUPERSETS = {
    "iso8859-1": "cp1252", "ascii": "cp1252", "gb2312": "gb18030", "gbk": "gb18030",
    "big5": "big5hkscs", "shift_jis": "cp932", "euc_kr": "cp949",
}  # fmt: skip


def extract(payload: bytes, content_type: str = "", url: str | None = None) -> tuple[str | None, str, str]:
    """The main text of an HTML payload: (text, "", "") or (None, reason, detail)."""
    if (kind := base.sniff(payload[: base.HEAD])) not in ("text", "empty"):
        return None, "not_text", f"HTML looks like {kind}"
    html, tried = decode(payload, content_type)
    if html is None:
        return None, "invalid_utf8", f"payload does not decode as {tried}"
    if not html.strip():
        return None, "empty_after_extraction", "empty HTML payload"
    try:
        LRU_TEST.clear()  # trafilatura's dedup cache is process-wide: dedup within this page only
        tree = trafilatura.load_html(html)
        text = None
        if tree is not None:
            text = trafilatura.extract(
                tree, url=url, favor_precision=False, include_comments=False, deduplicate=True
            )
    except Exception as error:  # trafilatura/lxml can fail in many ways on hostile HTML
        return None, "html_extraction_failed", f"{type(error).__name__}: {error}"
    if tree is None:
        return None, "html_extraction_failed", "trafilatura could not parse the payload as HTML"
    if not text or text.isspace():
        return None, "empty_after_extraction", "trafilatura found no main text"
    return text, "", ""


def decode(payload: bytes, content_type: str = "") -> tuple[str | None, str]:
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


def read(stream: BinaryIO, head: bytes, source: str, options: ReadOptions, split: Split) -> base.Records:
    try:
        payload, over = base.read_capped(stream, replace(options, truncate=False))  # a cut page is no page
    except base.STREAM_ERRORS as error:
        yield base.stream_error(source, "file", None, error)
        return None
    if over:
        yield base.too_large(source, "file", None, None, options.max_document_bytes, payload)
        return 1
    text, reason, detail = extract(payload)
    if text is None:
        yield base.quarantine(source, "file", None, reason, detail, payload)
    else:
        yield base.document(source, "file", 0, text, payload)
    return 1
