"""Tests of pipelines.readers: every format on real text, and every bad-input case.

Each bad-input test checks the exact reason and position, that the good records around the bad one are
all yielded with the right ids, and (by consuming read_file fully) that nothing raises.
"""

from __future__ import annotations

import csv
import functools
import gzip
import io
import json
import os
import random
import shutil
import time
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from shared_data import SHARED_DATA
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from pipelines.io.inputs import list_inputs
from pipelines.readers import REASONS, Document, Quarantined, ReadOptions, read_file

DATA = SHARED_DATA
SHAKESPEARE = DATA / "tinyshakespeare" / "input.txt"
WHIRLWIND_WARC = DATA / "commoncrawl-whirlwind" / "whirlwind.warc.gz"
WHIRLWIND_WET = DATA / "commoncrawl-whirlwind" / "whirlwind.warc.wet.gz"
RESILIPARSE_WARC = DATA / "resiliparse-test-warc" / "warcfile.warc.gz"
ESCOPETE = "https://an.wikipedia.org/wiki/Escopete"
PNG_HEADER = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"


@functools.cache
def _all_lines() -> tuple[str, ...]:
    return tuple(line for line in SHAKESPEARE.read_text().splitlines() if line.strip())


def lines(n: int, start: int = 0) -> list[str]:
    """n non-blank lines of tinyshakespeare."""
    return list(_all_lines()[start : start + n])


def jsonl(texts: list[str]) -> bytes:
    return b"".join(json.dumps({"text": t}).encode() + b"\n" for t in texts)


def compress(data: bytes, kind: str) -> bytes:
    if kind == ".gz":
        return gzip.compress(data, compresslevel=1)
    return zstandard.ZstdCompressor().compress(data) if kind == ".zst" else data


def read(path: Path, source: str = "src", **kwargs: int) -> tuple[list[Document], list[Quarantined]]:
    items = list(read_file(str(path), source, ReadOptions(**kwargs)))
    assert all(isinstance(item, Document | Quarantined) for item in items)
    return [i for i in items if isinstance(i, Document)], [i for i in items if isinstance(i, Quarantined)]


def only(quarantined: list[Quarantined], reason: str, position: str) -> Quarantined:
    """The single quarantine record, checked."""
    assert [(q.reason, q.position) for q in quarantined] == [(reason, position)]
    assert reason in REASONS and len(quarantined[0].excerpt) <= 200 and quarantined[0].detail
    return quarantined[0]


def ids(docs: list[Document]) -> list[str]:
    return [doc.id for doc in docs]


def random_bytes(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


# ------------------------------------------------------------------------------------------- list_inputs


def test_list_inputs_names_sorted_and_skips(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "sample"
    inputs = ["b.jsonl", "a/c.txt", "sub/d.parquet", "sub/deep/e.warc.gz"]
    skipped = [".hidden.jsonl", "README.md", "sub/notes.MD", "LICENSE", "LICENSE.txt", ".git/x.jsonl"]
    for rel in inputs + skipped:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x")
    single = tmp_path / "other" / "single.jsonl"
    single.parent.mkdir()
    single.write_text("x")

    expected = [
        (str(root / "a/c.txt"), "sample/a/c.txt"),
        (str(root / "b.jsonl"), "sample/b.jsonl"),
        (str(root / "sub/d.parquet"), "sample/sub/d.parquet"),
        (str(root / "sub/deep/e.warc.gz"), "sample/sub/deep/e.warc.gz"),
    ]
    assert list_inputs([str(root)]) == expected
    # A trailing slash or a relative path gives the same sources; a file named directly is named after
    # its folder, as when the folder is given (a nested one after its own folder).
    assert list_inputs([str(root) + "/"]) == expected
    assert list_inputs([str(root / "b.jsonl")]) == [expected[1]]
    assert list_inputs([str(root / "sub/deep/e.warc.gz")]) == [(expected[3][0], "deep/e.warc.gz")]
    monkeypatch.chdir(tmp_path)
    assert list_inputs(["sample"]) == list_inputs(["./sample/"]) == expected
    assert [s for _, s in list_inputs(["sample", "other/single.jsonl"])] == [
        *(s for _, s in expected),
        "other/single.jsonl",
    ]
    assert (
        list_inputs([str(single)])
        == list_inputs([str(single.parent)])
        == [(str(single), "other/single.jsonl")]
    )
    assert list_inputs([]) == []


def test_list_inputs_missing_path(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        list_inputs([str(tmp_path / "nope")])


def test_list_inputs_duplicate_source_names(tmp_path: Path) -> None:
    for parent in ("one", "two"):
        (tmp_path / parent / "data").mkdir(parents=True)
        (tmp_path / parent / "data" / "web.jsonl").write_text("x")
    one, two = tmp_path / "one" / "data", tmp_path / "two" / "data"
    with pytest.raises(ValueError, match=r"same source name 'data/web\.jsonl'"):
        list_inputs([str(one), str(two)])
    with pytest.raises(ValueError, match=r"same source name 'data/web\.jsonl'"):
        list_inputs([str(one), str(one / "web.jsonl")])
    with pytest.raises(ValueError, match="same source name"):
        list_inputs([str(one), str(one)])


# ------------------------------------------------------------------------------------------- JSONL


@pytest.mark.parametrize("compression", ["", ".gz", ".zst"])
@pytest.mark.parametrize("extension", [".jsonl", ".json", ".ndjson"])
def test_jsonl_good(tmp_path: Path, extension: str, compression: str) -> None:
    texts = lines(30)
    records = [{"text": t, "id": "theirs", "url": f"https://example.org/{i}"} for i, t in enumerate(texts)]
    records[1] = {"text": texts[1], "metadata": {"url": "https://meta.example.org/"}}
    records[2] = {"text": texts[2], "url": 7}  # not a string: no url
    path = tmp_path / f"web{extension}{compression}"
    path.write_bytes(compress(b"".join(json.dumps(r).encode() + b"\n" for r in records), compression))

    docs, quarantined = read(path, "sample/web")
    assert quarantined == []
    assert ids(docs) == [f"sample/web:{i}" for i in range(1, 31)]
    assert [d.text for d in docs] == texts and {d.source for d in docs} == {"sample/web"}
    assert [d.url for d in docs[:4]] == [
        "https://example.org/0", "https://meta.example.org/", None, "https://example.org/3",
    ]  # fmt: skip


def test_jsonl_blank_lines_bom_crlf_and_no_final_newline(tmp_path: Path) -> None:
    a, b, c = lines(3)
    data = b"\xef\xbb\xbf" + jsonl([a]) + b"\n   \n" + json.dumps({"text": b}).encode() + b"\r\n"
    path = tmp_path / "x.jsonl"
    path.write_bytes(data + json.dumps({"text": c}).encode())
    docs, quarantined = read(path)
    assert quarantined == []
    assert [(d.id, d.text) for d in docs] == [("src:1", a), ("src:4", b), ("src:5", c)]


BAD_LINES = [
    (b'{"text": "unterminated', "malformed_json"),
    (b'{"text": "a"} trailing', "malformed_json"),
    (b"[" * 100_000 + b"]" * 100_000, "malformed_json"),  # nesting too deep for the parser
    (b'{"text": "x", "n": ' + b"9" * 5000 + b"}", "malformed_json"),  # int past Python's digit limit
    (b'["text", "a list"]', "not_an_object"),
    (b'"just a string"', "not_an_object"),
    (b"null", "not_an_object"),
    (b'{"content": "no text key", "url": "https://x"}', "missing_text"),
    (b'{"text": 42}', "text_not_string"),
    (b'{"text": null}', "text_not_string"),
    (b'{"text": ["a", "b"]}', "text_not_string"),
    (b'{"text": ""}', "empty_text"),
    (b'{"text": " \\n\\t\\u3000 "}', "empty_text"),
    (b'{"text": "caf\xe9 au lait"}', "invalid_utf8"),  # Latin-1 byte
    (b'{"text": "cut \xe2\x82"}', "invalid_utf8"),  # UTF-8 sequence cut short
    (b'{"text": "lone \\ud800 surrogate"}', "invalid_utf8"),
    (b'{"text": "raw \x00 NUL"}', "nul_bytes"),
    (b'{"text": "escaped \\u0000 NUL"}', "nul_bytes"),
]


@pytest.mark.parametrize(("bad", "reason"), BAD_LINES, ids=[f"{r}-{i}" for i, (_, r) in enumerate(BAD_LINES)])
@pytest.mark.parametrize("compression", ["", ".gz"])
def test_jsonl_bad_line_between_good_ones(tmp_path: Path, bad: bytes, reason: str, compression: str) -> None:
    before, after = lines(3), lines(3, start=3)
    path = tmp_path / f"x.jsonl{compression}"
    path.write_bytes(compress(jsonl(before) + bad + b"\n" + jsonl(after), compression))
    docs, quarantined = read(path)
    q = only(quarantined, reason, "line 4")
    assert q.source == "src" and q.excerpt[:30] == repr(bad + b"\n")[:30]
    assert ids(docs) == ["src:1", "src:2", "src:3", "src:5", "src:6", "src:7"]
    assert [d.text for d in docs] == before + after


def test_jsonl_every_bad_line_in_one_file(tmp_path: Path) -> None:
    good = lines(len(BAD_LINES) + 1)
    data = b"".join(jsonl([g]) + bad + b"\n" for g, (bad, _) in zip(good, BAD_LINES, strict=False))
    path = tmp_path / "x.jsonl.zst"
    path.write_bytes(compress(data + jsonl(good[-1:]), ".zst"))
    docs, quarantined = read(path)
    assert [(q.reason, q.position) for q in quarantined] == [
        (reason, f"line {2 * i + 2}") for i, (_, reason) in enumerate(BAD_LINES)
    ]
    assert ids(docs) == [f"src:{2 * i + 1}" for i in range(len(BAD_LINES) + 1)]
    assert [d.text for d in docs] == good


def test_jsonl_line_too_long_is_skipped(tmp_path: Path) -> None:
    a, b = lines(2)
    path = tmp_path / "x.jsonl"
    path.write_bytes(jsonl([a]) + jsonl(["y" * 5000]) + jsonl([b]))
    docs, quarantined = read(path, max_line_bytes=1000)
    only(quarantined, "line_too_long", "line 2")
    assert [(d.id, d.text) for d in docs] == [("src:1", a), ("src:3", b)]


@pytest.fixture(scope="module")
def big_jsonl() -> tuple[str, bytes]:
    """A 30 MiB one-line document between two short ones."""
    big = ("\n".join(lines(60)) * 15_000)[: 30 * 1024 * 1024]
    return big, jsonl(lines(1)) + jsonl([big]) + jsonl(lines(1))


@pytest.mark.parametrize("compression", ["", ".gz", ".zst"])
def test_jsonl_30mb_line_is_linear(tmp_path: Path, big_jsonl: tuple[str, bytes], compression: str) -> None:
    big, data = big_jsonl
    path = tmp_path / f"big.jsonl{compression}"
    path.write_bytes(compress(data, compression))
    start = time.perf_counter()
    docs, quarantined = read(path, max_document_bytes=64 << 20)
    assert time.perf_counter() - start < 10
    assert quarantined == [] and ids(docs) == ["src:1", "src:2", "src:3"]
    assert docs[1].text == big


@pytest.mark.parametrize("compression", [".gz", ".zst"])
def test_jsonl_truncated_stream_keeps_complete_lines(tmp_path: Path, compression: str) -> None:
    texts = lines(40_000)  # all of them: several zstd blocks
    data = compress(jsonl(texts), compression)
    cut = data[: len(data) // 2]
    if compression == ".gz":
        readable = zlib.decompressobj(zlib.MAX_WBITS | 16).decompress(cut)
    else:
        readable = zstandard.ZstdDecompressor().decompressobj().decompress(cut)
    complete = readable.count(b"\n")
    assert 0 < complete < len(texts)
    path = tmp_path / f"x.jsonl{compression}"
    path.write_bytes(cut)

    docs, quarantined = read(path)
    q = only(quarantined, "truncated_file", f"line {complete + 1}")
    assert "EOFError" in q.detail
    assert ids(docs) == [f"src:{i}" for i in range(1, complete + 1)]
    assert [d.text for d in docs] == texts[:complete]


def test_jsonl_gzip_crc_error_is_corrupt_but_lines_are_kept(tmp_path: Path) -> None:
    texts = lines(50)
    data = bytearray(gzip.compress(jsonl(texts)))
    data[-8] ^= 0xFF  # CRC32 in the gzip trailer
    path = tmp_path / "x.jsonl.gz"
    path.write_bytes(bytes(data))
    docs, quarantined = read(path)
    assert "CRC" in only(quarantined, "corrupt_file", "line 51").detail
    assert [d.text for d in docs] == texts and ids(docs)[-1] == "src:50"


def test_jsonl_gzip_content_named_plain_is_decompressed(tmp_path: Path) -> None:
    """Compression is taken from the magic bytes, not the name."""
    path = tmp_path / "x.jsonl"
    path.write_bytes(gzip.compress(jsonl(lines(3))))
    docs, quarantined = read(path)
    assert quarantined == [] and [d.text for d in docs] == lines(3)


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("image.jsonl", PNG_HEADER + random_bytes(4000), "not_text"),
        ("random.jsonl", random_bytes(4000), "not_text"),
        ("random.jsonl.gz", gzip.compress(random_bytes(4000)), "not_text"),
        ("utf16.jsonl", jsonl(["hello"]).decode().encode("utf-16"), "not_text"),
        ("book.txt", PNG_HEADER + random_bytes(4000), "not_text"),
        ("image.png", PNG_HEADER + random_bytes(4000), "unsupported_format"),
        ("random.bin", random_bytes(4000), "unsupported_format"),
        ("data.xml", b"<text>hello</text>\n", "unsupported_format"),
        ("noext", b'{"text": "hi"}\n', "unsupported_format"),
        ("archive.jsonl.gz", gzip.compress(b"WARC/1.0\r\nWARC-Type: warcinfo\r\n"), "unsupported_format"),
        ("web.warc", jsonl(["not a warc"]), "unsupported_format"),
        ("web.warc.gz", PNG_HEADER + random_bytes(4000), "unsupported_format"),
        ("table.parquet", jsonl(["not parquet"]), "unsupported_format"),
        ("table.parquet", b"", "unsupported_format"),
        ("data.jsonl.xz", b"\xfd7zXZ\x00" + random_bytes(100), "unsupported_format"),
        ("pretty.json", json.dumps([{"text": t} for t in lines(3)], indent=2).encode(), "unsupported_format"),
        ("pretty.json.gz", gzip.compress(b'\n {\n  "text": "a"\n }\n'), "unsupported_format"),
    ],
)
def test_whole_file_rejected(tmp_path: Path, name: str, content: bytes, reason: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    docs, quarantined = read(path)
    assert docs == []
    only(quarantined, reason, "file")


@pytest.mark.parametrize("name", ["x.jsonl", "x.jsonl.gz", "x.parquet", "x.warc.gz", "x.txt"])
def test_directory_in_place_of_file_is_unreadable(tmp_path: Path, name: str) -> None:
    (tmp_path / name).mkdir()
    docs, quarantined = read(tmp_path / name)
    assert docs == [] and "IsADirectoryError" in only(quarantined, "unreadable_file", "file").detail


def test_vanished_file_is_unreadable(tmp_path: Path) -> None:
    docs, quarantined = read(tmp_path / "gone.jsonl")
    assert docs == [] and "FileNotFoundError" in only(quarantined, "unreadable_file", "file").detail


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read a chmod 000 file")
def test_permission_denied_is_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_bytes(jsonl(lines(2)))
    path.chmod(0)
    docs, quarantined = read(path)
    assert docs == [] and "PermissionError" in only(quarantined, "unreadable_file", "file").detail


def test_empty_files(tmp_path: Path) -> None:
    for name in ("x.jsonl", "x.warc"):
        (tmp_path / name).write_bytes(b"")
        assert read(tmp_path / name) == ([], [])
    (tmp_path / "x.jsonl.gz").write_bytes(gzip.compress(b""))
    assert read(tmp_path / "x.jsonl.gz") == ([], [])
    (tmp_path / "x.txt").write_bytes(b"")
    only(read(tmp_path / "x.txt")[1], "empty_text", "file")


# ------------------------------------------------------------------------------------------- Parquet


def write_parquet(path: Path, table: pa.Table, **kwargs: object) -> None:
    pq.write_table(table, path, row_group_size=7, **kwargs)


def test_parquet_good_by_row_groups(tmp_path: Path) -> None:
    texts = lines(20)
    urls = [f"https://example.org/{i}" for i in range(20)]
    path = tmp_path / "t.parquet"
    write_parquet(path, pa.table({"id": list(range(20)), "text": texts, "url": urls}))
    assert pq.ParquetFile(path).num_row_groups == 3
    docs, quarantined = read(path, "sample/t.parquet")
    assert quarantined == []
    assert ids(docs) == [f"sample/t.parquet:{i}" for i in range(20)]
    assert [d.text for d in docs] == texts and [d.url for d in docs] == urls


def test_parquet_large_string_and_dictionary_columns(tmp_path: Path) -> None:
    texts = lines(5)
    for column in (pa.array(texts, pa.large_string()), pa.array(texts).dictionary_encode()):
        write_parquet(tmp_path / "t.parquet", pa.table({"text": column}))
        docs, quarantined = read(tmp_path / "t.parquet")
        assert quarantined == [] and [d.text for d in docs] == texts and docs[0].url is None


def test_parquet_bad_rows(tmp_path: Path) -> None:
    good = lines(5)
    texts = [good[0], None, good[1], "", good[2], "a\x00b", good[3], "  \n ", good[4]]
    path = tmp_path / "t.parquet"
    urls = [None, "u", None, None, "https://x", None, None, None, None]
    write_parquet(path, pa.table({"text": texts, "url": urls}))
    docs, quarantined = read(path)
    assert [(q.reason, q.position) for q in quarantined] == [
        ("missing_text", "row 1"), ("empty_text", "row 3"), ("nul_bytes", "row 5"), ("empty_text", "row 7"),
    ]  # fmt: skip
    assert ids(docs) == ["src:0", "src:2", "src:4", "src:6", "src:8"]
    assert [d.text for d in docs] == good and docs[2].url == "https://x" and docs[1].url is None


def test_parquet_binary_column_is_decoded(tmp_path: Path) -> None:
    a, b = lines(2)
    path = tmp_path / "t.parquet"
    write_parquet(path, pa.table({"text": pa.array([a.encode(), b"caf\xe9", b.encode()], pa.binary())}))
    docs, quarantined = read(path)
    only(quarantined, "invalid_utf8", "row 1")
    assert [(d.id, d.text) for d in docs] == [("src:0", a), ("src:2", b)]


def test_parquet_without_text_column(tmp_path: Path) -> None:
    """Documented choice: one missing_text record for the whole file."""
    write_parquet(tmp_path / "t.parquet", pa.table({"content": lines(10)}))
    docs, quarantined = read(tmp_path / "t.parquet")
    assert docs == [] and "content" in only(quarantined, "missing_text", "file").detail


def test_parquet_duplicate_text_columns(tmp_path: Path) -> None:
    a, b = lines(2)
    write_parquet(tmp_path / "t.parquet", pa.table([pa.array([a]), pa.array([b])], names=["text", "text"]))
    docs, quarantined = read(tmp_path / "t.parquet")
    assert docs == [] and "no single 'text' column" in only(quarantined, "missing_text", "file").detail


def test_parquet_text_column_not_string(tmp_path: Path) -> None:
    write_parquet(tmp_path / "t.parquet", pa.table({"text": list(range(10))}))
    docs, quarantined = read(tmp_path / "t.parquet")
    assert docs == [] and "int64" in only(quarantined, "text_not_string", "file").detail


@pytest.mark.parametrize("damage", ["truncated", "footer"])
def test_parquet_corrupt_footer(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "t.parquet"
    write_parquet(path, pa.table({"text": lines(20)}))
    data = path.read_bytes()
    data = data[: len(data) // 2] if damage == "truncated" else data[:-40] + b"\xff" * 32 + data[-8:]
    path.write_bytes(data)
    docs, quarantined = read(path)
    assert docs == []
    only(quarantined, "unreadable_file", "file")


def test_parquet_corrupt_row_group_is_skipped(tmp_path: Path) -> None:
    texts = lines(21)
    path = tmp_path / "t.parquet"
    write_parquet(path, pa.table({"text": texts}), use_dictionary=False, compression="none")
    offset = pq.ParquetFile(path).metadata.row_group(1).column(0).data_page_offset
    data = bytearray(path.read_bytes())
    data[offset : offset + 16] = b"\xff" * 16  # the page header of row group 1 (rows 7-13)
    path.write_bytes(bytes(data))
    docs, quarantined = read(path)
    assert "rows 7-13" in only(quarantined, "unreadable_file", "row 7").detail
    assert ids(docs) == [f"src:{i}" for i in [*range(7), *range(14, 21)]]
    assert [d.text for d in docs] == texts[:7] + texts[14:]


# ------------------------------------------------------------------------------------------- text


@pytest.mark.parametrize("compression", ["", ".gz", ".zst"])
def test_text_file_is_one_document(tmp_path: Path, compression: str) -> None:
    data = SHAKESPEARE.read_bytes()
    path = tmp_path / f"play.txt{compression}"
    path.write_bytes(compress(data, compression))
    docs, quarantined = read(path, "books/play.txt")
    assert quarantined == []
    assert ids(docs) == ["books/play.txt:0"] and docs[0].text == data.decode() and docs[0].url is None


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("Ceci est un café".encode("latin-1"), "invalid_utf8"),
        ("第一章".encode("gbk") * 100, "invalid_utf8"),
        (b"some text\x00with a NUL", "nul_bytes"),
        (b" \n\t\n", "empty_text"),
    ],
)
def test_text_file_bad(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "x.txt"
    path.write_bytes(content)
    docs, quarantined = read(path)
    assert docs == []
    only(quarantined, reason, "file")


@pytest.mark.parametrize("compression", [".gz", ".zst"])
def test_text_file_truncated(tmp_path: Path, compression: str) -> None:
    data = compress(SHAKESPEARE.read_bytes(), compression)
    path = tmp_path / f"play.txt{compression}"
    path.write_bytes(data[: len(data) // 3])
    docs, quarantined = read(path)
    assert docs == []
    only(quarantined, "truncated_file", "file")


# ------------------------------------------------------------------------------------------- WARC / WET


def test_warc_whirlwind(tmp_path: Path) -> None:
    docs, quarantined = read(WHIRLWIND_WARC, "cc/whirlwind.warc.gz")
    assert quarantined == []
    assert ids(docs) == ["cc/whirlwind.warc.gz:2"]  # warcinfo, request, *response*, metadata
    assert docs[0].url == ESCOPETE and docs[0].text.startswith("Escopete\n")
    assert "<" not in docs[0].text and "Ir al contenido" not in docs[0].text  # boilerplate gone

    # The same archive uncompressed reads the same.
    plain = tmp_path / "whirlwind.warc"
    plain.write_bytes(gzip.decompress(WHIRLWIND_WARC.read_bytes()))
    assert [(d.text, d.url) for d in read(plain)[0]] == [(docs[0].text, ESCOPETE)]


def test_wet_whirlwind() -> None:
    docs, quarantined = read(WHIRLWIND_WET, "cc/whirlwind.warc.wet.gz")
    assert quarantined == []
    assert ids(docs) == ["cc/whirlwind.warc.wet.gz:1"]  # warcinfo, *conversion*
    assert docs[0].url == ESCOPETE
    assert docs[0].text.startswith("Escopete - Biquipedia, a enciclopedia libre\n")


@pytest.fixture(scope="module")
def resiliparse_docs() -> list[Document]:
    docs, quarantined = read(RESILIPARSE_WARC)
    assert quarantined == []
    return docs


def test_warc_resiliparse_all_html_responses(resiliparse_docs: list[Document]) -> None:
    # 50 records: warcinfo, then (request, response, metadata) x 16 and a last request.
    assert ids(resiliparse_docs) == [f"src:{i}" for i in range(2, 48, 3)]
    by_url = {d.url: d.text for d in resiliparse_docs}
    assert "О компании" in by_url["http://01spb.ru/company/"]  # windows-1251 from the HTTP header
    assert "职位名称" in by_url["http://0760.jxtdw.com/area/sanxiang/"]  # gb2312, decoded as gb18030
    assert "Hovenier in Oosterbeek" in by_url["http://0900-hovenier.nl/gelderland/oosterbeek/"]


@pytest.mark.parametrize("compression", [".gz", ".zst"])
def test_warc_truncated_keeps_records_before(
    tmp_path: Path, resiliparse_docs: list[Document], compression: str
) -> None:
    plain = gzip.decompress(RESILIPARSE_WARC.read_bytes())
    request_16 = plain.index(b"WARC-Type: request", plain.index(b"WARC-Target-URI: http://041696.com") + 1)
    response_17 = plain.index(b"WARC/1.0\r\nWARC-Type: response", request_16)
    if compression == ".gz":  # per-record gzip as Common Crawl writes it; member 17 spans bytes 48321-60226
        data = RESILIPARSE_WARC.read_bytes()[:60000]
    else:  # zstd frames of 4 KiB, cut in the middle of the frame 5000 bytes into record 17
        cctx = zstandard.ZstdCompressor()
        frames = [cctx.compress(plain[i : i + 4096]) for i in range(0, len(plain), 4096)]
        k = (response_17 + 5000) // 4096
        data = b"".join(frames[:k]) + frames[k][: len(frames[k]) // 2]
    path = tmp_path / f"cut.warc{compression}"
    path.write_bytes(data)
    docs, quarantined = read(path)
    only(quarantined, "truncated_file", f"record 17 (offset {response_17})")
    assert [(d.id, d.text) for d in docs] == [(d.id, d.text) for d in resiliparse_docs[:5]]


def test_warc_plain_truncated_inside_record_and_inside_headers(tmp_path: Path) -> None:
    plain = gzip.decompress(WHIRLWIND_WARC.read_bytes())
    response = plain.index(b"WARC/1.0\r\nWARC-Type: response")
    path = tmp_path / "cut.warc"
    path.write_bytes(plain[: response + 5000])
    docs, quarantined = read(path)
    position = f"record 2 (offset {response})"
    assert docs == [] and "bytes before the end" in only(quarantined, "truncated_file", position).detail
    path.write_bytes(plain[: response + 60])  # inside the WARC headers
    docs, quarantined = read(path)
    assert docs == [] and "headers" in only(quarantined, "truncated_file", position).detail


def test_warc_garbage_between_records(tmp_path: Path) -> None:
    plain = gzip.decompress(WHIRLWIND_WARC.read_bytes())
    metadata = plain.index(b"WARC/1.0\r\nWARC-Type: metadata")
    path = tmp_path / "bad.warc"
    path.write_bytes(plain[:metadata] + b"NOT A WARC HEADER\r\n\r\n" + plain[metadata:])
    docs, quarantined = read(path)
    assert ids(docs) == ["src:2"]
    only(quarantined, "malformed_record", f"record 3 (offset {metadata})")


def test_warc_trailing_junk_after_last_gzip_member(tmp_path: Path) -> None:
    path = tmp_path / "junk.warc.gz"
    path.write_bytes(WHIRLWIND_WARC.read_bytes() + b"junk")
    docs, quarantined = read(path)
    assert ids(docs) == ["src:2"]
    only(quarantined, "corrupt_file", "record 4")


Record = tuple[str, str, bytes, StatusAndHeaders | None]  # WARC-Type, url, payload, HTTP status+headers


def write_warc(path: Path, records: list[Record]) -> None:
    """A per-record gzip WARC starting with a warcinfo record (record 0)."""
    with path.open("wb") as out:
        writer = WARCWriter(out, gzip=True)
        writer.write_record(writer.create_warcinfo_record(path.name, {"software": "test"}))
        for rec_type, url, payload, http in records:
            content_type = "" if http else "text/plain"
            record = writer.create_warc_record(
                url, rec_type, payload=io.BytesIO(payload), http_headers=http, warc_content_type=content_type
            )
            writer.write_record(record)


def html(body: str) -> bytes:
    return f"<html><head><title>t</title></head><body><article>{body}</article></body></html>".encode()


def http(content_type: str, status: str = "200 OK") -> StatusAndHeaders:
    return StatusAndHeaders(status, [("Content-Type", content_type)], protocol="HTTP/1.1")


def test_warc_bad_html_records(tmp_path: Path) -> None:
    para = " ".join(lines(12))
    good = html(f"<p>{para}</p>")
    latin1 = f"<html><head><meta charset='iso-8859-1'></head><body><p>{para} café</p></body></html>"
    records: list[Record] = [
        ("response", "https://a.example/", good, http("text/html; charset=utf-8")),  # 1 doc
        ("response", "https://b.example/", PNG_HEADER + random_bytes(3000), http("text/html")),  # 2 not_text
        ("response", "https://c.example/", html(""), http("text/html")),  # 3 empty_after_extraction
        ("response", "https://d.example/", b"", http("text/html")),  # 4 empty_after_extraction
        ("response", "https://e.example/", b"words, no markup", http("text/html")),  # 5 extraction failed
        ("resource", "https://f.example/", b"resource records are skipped", None),  # 6 skipped
        ("response", "https://g.example/", good.replace(b"</p>", b" caf\xe9</p>"), http("text/html")),  # 7
        ("response", "https://h.example/", latin1.encode("latin-1"), http("text/html")),  # 8 doc via <meta>
        ("response", "https://i.example/", PNG_HEADER, http("image/png")),  # 9 skipped: not HTML
        ("response", "https://j.example/", good, http("text/html", "404 Not Found")),  # 10 skipped: not 2xx
        ("request", "https://k.example/", b"", StatusAndHeaders("GET / HTTP/1.1", [], is_http_request=True)),
        ("response", "https://l.example/", good, http("application/xhtml+xml")),  # 12 doc
    ]
    path = tmp_path / "x.warc.gz"
    write_warc(path, records)
    docs, quarantined = read(path)
    assert [(q.reason, q.position.split(" (")[0]) for q in quarantined] == [
        ("not_text", "record 2"),
        ("empty_after_extraction", "record 3"),
        ("empty_after_extraction", "record 4"),
        ("html_extraction_failed", "record 5"),
        ("invalid_utf8", "record 7"),
    ]
    assert [(d.id, d.url) for d in docs] == [
        ("src:1", "https://a.example/"), ("src:8", "https://h.example/"), ("src:12", "https://l.example/"),
    ]  # fmt: skip
    assert docs[0].text == para and docs[1].text == f"{para} café"


def test_wet_bad_conversion_records(tmp_path: Path) -> None:
    a, b = lines(2)
    records: list[Record] = [
        ("conversion", "https://a.example/", a.encode(), None),
        ("conversion", "https://b.example/", "café".encode("latin-1"), None),
        ("conversion", "https://c.example/", b"", None),
        ("conversion", "https://d.example/", b"text with a \x00 NUL", None),
        ("conversion", "https://e.example/", PNG_HEADER + random_bytes(2000), None),
        ("conversion", "https://f.example/", b.encode(), None),
    ]
    path = tmp_path / "x.warc.wet.gz"
    write_warc(path, records)
    docs, quarantined = read(path)
    assert [(q.reason, q.position.split(" (")[0]) for q in quarantined] == [
        ("invalid_utf8", "record 2"), ("empty_text", "record 3"), ("nul_bytes", "record 4"),
        ("not_text", "record 5"),
    ]  # fmt: skip
    assert [(d.id, d.text, d.url) for d in docs] == [
        ("src:1", a, "https://a.example/"), ("src:6", b, "https://f.example/"),
    ]  # fmt: skip


def test_quarantined_rejects_unknown_reason() -> None:
    with pytest.raises(ValueError, match="unknown quarantine reason"):
        Quarantined("s", "file", None, "no_such_reason", "d", "")


def test_reasons_are_documented() -> None:
    required = {
        "malformed_json", "not_an_object", "missing_text", "text_not_string", "empty_text", "invalid_utf8",
        "nul_bytes", "not_text", "unreadable_file", "truncated_file", "unsupported_format",
        "html_extraction_failed", "empty_after_extraction",
    }  # fmt: skip
    assert required <= REASONS.keys() and all(REASONS.values())


def test_sample_directory_end_to_end(tmp_path: Path) -> None:
    """list_inputs + read_file over a small mixed directory: ids are unique and nothing raises."""
    root = tmp_path / "sample"
    root.mkdir()
    shutil.copy(WHIRLWIND_WET, root / "cc.warc.wet.gz")
    (root / "web.jsonl.zst").write_bytes(compress(jsonl(lines(5)) + b"{bad\n", ".zst"))
    (root / "book.txt.gz").write_bytes(compress(SHAKESPEARE.read_bytes()[:5000], ".gz"))
    (root / "README.md").write_text("not an input")
    items = [item for path, source in list_inputs([str(root)]) for item in read_file(path, source)]
    docs = [i for i in items if isinstance(i, Document)]
    assert ids(docs) == ["sample/book.txt.gz:0", "sample/cc.warc.wet.gz:1"] + [
        f"sample/web.jsonl.zst:{i}" for i in range(1, 6)
    ]
    assert [(q.source, q.reason, q.position) for q in items if isinstance(q, Quarantined)] == [
        ("sample/web.jsonl.zst", "malformed_json", "line 6")
    ]


# ------------------------------------------------------------------------------- record ids and metadata

DOLMA = DATA / "dolma-test-fixtures"
HTML_PAGES = DATA / "trafilatura-eval-html" / "html"


def test_jsonl_own_id_and_metadata_of_real_records() -> None:
    """CCNet records (Dolma fixtures): `id` becomes source_id, every other field but the text is metadata."""
    path = DOLMA / "cc_en_head" / "cc_en_head-0091.jsonl.gz"
    records = [json.loads(line) for line in gzip.decompress(path.read_bytes()).splitlines()]
    docs, quarantined = read(path, "cc/head.jsonl.gz")
    assert quarantined == [] and len(docs) == len(records) == 10
    for doc, record in zip(docs, records, strict=True):
        assert doc.id == f"cc/head.jsonl.gz:{records.index(record) + 1}"
        assert doc.source_id == record["id"] and doc.text == record["text"]
        assert json.loads(doc.metadata) == {k: v for k, v in record.items() if k not in ("id", "text")}
        assert doc.url == record["metadata"]["url"]


def test_jsonl_text_key_and_dotted_id_key(tmp_path: Path) -> None:
    """The Stack's `content` field as the text; an id nested in metadata; without metadata."""
    texts = lines(3)
    path = tmp_path / "stack.jsonl"
    records = [
        {"content": t, "metadata": {"id": f"repo/{i}", "lang": "py"}, "n": i} for i, t in enumerate(texts)
    ]
    records[2] = {"content": texts[2], "n": 2}  # no id: source_id is null
    path.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in records))
    items = list(read_file(str(path), "s", ReadOptions(text_key="content", id_key="metadata.id")))
    assert [(d.text, d.source_id) for d in items] == [
        (texts[0], "repo/0"),
        (texts[1], "repo/1"),
        (texts[2], None),
    ]
    assert json.loads(items[0].metadata) == {"metadata": {"lang": "py"}, "n": 0}
    assert json.loads(items[2].metadata) == {"n": 2}
    assert [
        d.metadata for d in read_file(str(path), "s", ReadOptions(text_key="content", metadata=False))
    ] == [None] * 3
    docs, quarantined = read(path)  # the default text key is absent
    assert docs == [] and [q.reason for q in quarantined] == ["missing_text"] * 3
    assert "no 'text' key" in quarantined[0].detail


def test_jsonl_numeric_own_ids(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_bytes(
        jsonl_records([{"id": 7, "text": "a"}, {"id": None, "text": "b"}, {"id": [1], "text": "c"}])
    )
    assert [d.source_id for d in read(path)[0]] == ["7", None, "[1]"]


def jsonl_records(records: list[dict[str, object]]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in records)


def test_parquet_own_id_metadata_and_text_key(tmp_path: Path) -> None:
    texts = lines(9)
    path = tmp_path / "t.parquet"
    table = pa.table(
        {
            "doc_id": [f"d{i}" for i in range(9)],
            "content": texts,
            "lang": ["en"] * 9,
            "meta": [{"id": i, "date": "2024-01-0" + str(i + 1)} for i in range(9)],
        }
    )
    write_parquet(path, table)
    docs, quarantined = read_options(path, text_key="content", id_key="doc_id")
    assert quarantined == [] and [d.text for d in docs] == texts
    assert [d.source_id for d in docs] == [f"d{i}" for i in range(9)]
    assert json.loads(docs[3].metadata) == {"lang": "en", "meta": {"id": 3, "date": "2024-01-04"}}
    docs, _ = read_options(path, text_key="content", id_key="meta.id")
    assert [d.source_id for d in docs] == [str(i) for i in range(9)]
    assert json.loads(docs[3].metadata) == {"doc_id": "d3", "lang": "en", "meta": {"date": "2024-01-04"}}
    docs, _ = read_options(path, text_key="content", metadata=False)
    assert {d.metadata for d in docs} == {None} and {d.source_id for d in docs} == {None}


def read_options(path: Path, **options: object) -> tuple[list[Document], list[Quarantined]]:
    items = list(read_file(str(path), "src", ReadOptions(**options)))  # type: ignore[arg-type]
    return [i for i in items if isinstance(i, Document)], [i for i in items if isinstance(i, Quarantined)]


def test_warc_record_ids_and_headers() -> None:
    docs, _ = read(WHIRLWIND_WARC)
    assert docs[0].source_id == "<urn:uuid:" + docs[0].source_id.removeprefix("<urn:uuid:")
    metadata = json.loads(docs[0].metadata)
    assert metadata["WARC-Record-ID"] == docs[0].source_id and metadata["WARC-Type"] == "response"
    assert metadata["WARC-Target-URI"] == ESCOPETE and metadata["WARC-Date"].startswith("20")
    assert metadata["Content-Type"].startswith("text/html")
    wet, _ = read(WHIRLWIND_WET)
    metadata = json.loads(wet[0].metadata)
    assert metadata["WARC-Type"] == "conversion" and metadata["WARC-Refers-To"].startswith("<urn:uuid:")
    assert metadata["Content-Type"] == "text/plain"


# ------------------------------------------------------------------------------------------- CSV / TSV


@pytest.mark.parametrize(("name", "delimiter"), [("t.csv", ","), ("t.tsv.gz", "\t")])
def test_csv_and_tsv_with_header(tmp_path: Path, name: str, delimiter: str) -> None:
    texts = lines(4)
    rows = [["id", "text", "label"]] + [[f"m{i}", t, "ham"] for i, t in enumerate(texts)]
    rows[2][1] = f'{texts[1]}\nsecond line, with "quotes"'  # a quoted field over two lines
    out = io.StringIO()
    csv.writer(out, delimiter=delimiter, lineterminator="\r\n").writerows(rows)
    path = tmp_path / name
    path.write_bytes(compress(out.getvalue().encode(), ".gz" if name.endswith(".gz") else ""))
    docs, quarantined = read(path)
    assert quarantined == []
    assert [(d.id, d.source_id) for d in docs] == [(f"src:{i}", f"m{i}") for i in range(4)]
    assert docs[1].text == rows[2][1] and json.loads(docs[0].metadata) == {"label": "ham"}


def test_csv_real_sms_collection(tmp_path: Path) -> None:
    """The SMS spam collection (tab-separated, no header) with a header line put in front."""
    raw = next((DATA / "sms-spam-collection").rglob("SMSSpamCollection*")).read_bytes()
    path = tmp_path / "sms.tsv"
    path.write_bytes(b"label\ttext\n" + raw)
    docs, quarantined = read(path)
    assert len(docs) + len(quarantined) >= 5000
    assert {json.loads(d.metadata)["label"] for d in docs} == {"ham", "spam"}
    assert all(q.reason == "malformed_row" for q in quarantined)


def test_csv_bad_rows_and_missing_text_column(tmp_path: Path) -> None:
    a, b, c = lines(3)
    path = tmp_path / "t.csv"

    def rows(*values: list[str]) -> bytes:
        out = io.StringIO()
        csv.writer(out).writerows(values)
        return out.getvalue().encode()

    path.write_bytes(
        rows(["text", "url"], [a, "https://a"], ["only", "three", "fields"])
        + b"caf\xe9,x\n"
        + rows([b, ""], ["", ""], [c, "u"])
    )
    docs, quarantined = read(path)
    assert [(q.reason, q.position) for q in quarantined] == [
        ("malformed_row", "row 1"), ("invalid_utf8", "row 2"), ("empty_text", "row 4"),
    ]  # fmt: skip
    assert [(d.id, d.text, d.url) for d in docs] == [
        ("src:0", a, "https://a"),
        ("src:3", b, None),
        ("src:5", c, "u"),
    ]
    path.write_bytes(b"content,url\nx,y\n")
    docs, quarantined = read(path)
    assert docs == [] and "content" in only(quarantined, "missing_text", "file").detail


# ------------------------------------------------------------------------------------------- HTML


def test_html_files_use_the_warc_extraction(tmp_path: Path) -> None:
    """A real page as .html.gz and as .html: one document with trafilatura's main text."""
    page = sorted(HTML_PAGES.glob("*.html.gz"))[0]
    docs, quarantined = read(page, "pages/p.html.gz")
    assert quarantined == [] and ids(docs) == ["pages/p.html.gz:0"]
    assert len(docs[0].text) > 200 and "<div" not in docs[0].text
    plain = tmp_path / "p.html"
    plain.write_bytes(gzip.decompress(page.read_bytes()))
    assert [d.text for d in read(plain)[0]] == [docs[0].text]
    (tmp_path / "empty.htm").write_bytes(html(""))
    only(read(tmp_path / "empty.htm")[1], "empty_after_extraction", "file")
    (tmp_path / "image.html").write_bytes(PNG_HEADER + random_bytes(3000))
    only(read(tmp_path / "image.html")[1], "not_text", "file")
