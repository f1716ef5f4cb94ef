"""Reader limits and line ends: documents over max_document_bytes, lines over max_line_bytes, runs of blank
lines, CR-only line ends, byte order marks inside a file, FIFOs and devices, Parquet page checksums."""

from __future__ import annotations

import codecs
import gzip
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from stage_helpers import run_stages

from pipelines.readers import Document, Quarantined, ReadOptions, Split, plan_splits, read_file
from pipelines.readers.jsonl import BLOCK
from pipelines.run import RunDir


@pytest.fixture(autouse=True)
def no_hang() -> Iterator[None]:
    """A reader that blocks (on a FIFO, a device) fails the test instead of hanging it."""
    signal.signal(signal.SIGALRM, lambda *_: pytest.fail("the reader blocked"))
    signal.alarm(60)
    yield
    signal.alarm(0)


def read(path: Path, **options: object) -> tuple[list[Document], list[Quarantined]]:
    items = list(read_file(str(path), "src", ReadOptions(**options)))  # type: ignore[arg-type]
    return [i for i in items if isinstance(i, Document)], [i for i in items if isinstance(i, Quarantined)]


def line(text: str) -> bytes:
    return json.dumps({"text": text}).encode()


def test_cr_only_line_ends_are_line_ends(tmp_path: Path) -> None:
    path = tmp_path / "mac.jsonl"
    path.write_bytes(b"\r".join(line(f"record {i}") for i in range(5)) + b"\r")
    docs, quarantined = read(path)
    assert quarantined == []
    assert [(d.id, d.text) for d in docs] == [(f"src:{i + 1}", f"record {i}") for i in range(5)]


def test_crlf_line_ends_and_a_bom_on_a_later_line(tmp_path: Path) -> None:
    path = tmp_path / "joined.jsonl"
    bom = codecs.BOM_UTF8
    path.write_bytes(bom + line("a") + b"\r\n" + bom + line("b") + b"\r\n\r\n" + line("c") + b"\r\n")
    docs, quarantined = read(path)
    assert quarantined == []
    assert [(d.id, d.text) for d in docs] == [("src:1", "a"), ("src:2", "b"), ("src:4", "c")]


def test_unterminated_string_is_named(tmp_path: Path) -> None:
    path = tmp_path / "cut.jsonl"
    path.write_bytes(line("a") + b"\n" + b'{"text": "no end\n' + line("c") + b"\n")
    docs, quarantined = read(path)
    assert [d.id for d in docs] == ["src:1", "src:3"]
    [bad] = quarantined
    assert (bad.reason, bad.position) == ("malformed_json", "line 2")
    assert "Unterminated string" in bad.detail


def test_runs_of_blank_lines_across_blocks_are_counted(tmp_path: Path) -> None:
    blank = b"\n" * (3 * BLOCK + 7) + b"  \t\n" * 1000 + b" " * (BLOCK + 3) + b"\n"
    path = tmp_path / "gaps.jsonl"
    path.write_bytes(line("a") + b"\n" + blank + line("b") + b"\n" + blank + line("c"))
    docs, quarantined = read(path)
    gap = 3 * BLOCK + 7 + 1000 + 1
    assert quarantined == []
    assert [d.id for d in docs] == ["src:1", f"src:{2 + gap}", f"src:{3 + 2 * gap}"]


@pytest.mark.parametrize("split_bytes", [BLOCK // 3, BLOCK + 1, 5 * BLOCK])
def test_splits_through_blank_runs_read_like_the_whole_file(tmp_path: Path, split_bytes: int) -> None:
    path = tmp_path / "gaps.jsonl"
    parts = [line(f"doc {i}") + b"\n" + b"\n" * (i * 50_000) for i in range(40)]
    path.write_bytes(b"".join(parts))
    whole = [(d.id, d.text) for d in read(path)[0]]
    splits = plan_splits(str(path), split_bytes)
    assert len(splits) > 1
    found, first = [], 0
    for split in splits:
        items = read_file(str(path), "src", ReadOptions(), Split(split.start, split.stop))
        while True:
            try:
                item = next(items)
            except StopIteration as stop:
                positions = stop.value
                break
            assert isinstance(item, Document)
            found.append((f"src:{item.position + first}", item.text))
        first += positions
    assert found == whole


def test_line_over_max_line_bytes_is_skipped_as_it_streams(tmp_path: Path) -> None:
    long = line("x" * (3 * BLOCK))
    path = tmp_path / "long.jsonl.gz"
    path.write_bytes(gzip.compress(line("a") + b"\n" + long + b"\n" + line("b") + b"\n"))
    docs, quarantined = read(path, max_line_bytes=BLOCK)
    assert [d.id for d in docs] == ["src:1", "src:3"]
    [bad] = quarantined
    assert (bad.reason, bad.position) == ("line_too_long", "line 2")
    assert bad.excerpt.startswith('b\'{"text": "xxx')


def test_document_over_max_document_bytes_is_quarantined_or_cut(tmp_path: Path) -> None:
    big = "é" * 600  # 1200 bytes
    path = tmp_path / "big.jsonl"
    path.write_bytes(line("small") + b"\n" + json.dumps({"text": big}, ensure_ascii=False).encode() + b"\n")
    docs, quarantined = read(path, max_document_bytes=1001)
    assert [d.id for d in docs] == ["src:1"]
    [bad] = quarantined
    assert (bad.reason, bad.position) == ("too_large", "line 2")
    assert "1200 bytes" in bad.detail and "1001" in bad.detail
    docs, quarantined = read(path, max_document_bytes=1001, truncate=True)
    assert quarantined == [] and [d.truncated for d in docs] == [False, True]
    assert docs[1].text == "é" * 500  # 1000 bytes: the character cut by byte 1001 left out


@pytest.mark.parametrize("truncate", [False, True])
def test_text_file_is_read_no_further_than_the_limit(tmp_path: Path, truncate: bool) -> None:
    path = tmp_path / "book.txt"
    path.write_text("word " * 10_000)
    docs, quarantined = read(path, max_document_bytes=4096, truncate=truncate)
    if truncate:
        assert quarantined == [] and docs[0].truncated and docs[0].text == ("word " * 10_000)[:4096]
    else:
        assert docs == [] and [(q.reason, q.position) for q in quarantined] == [("too_large", "file")]


def test_fifo_and_device_are_skipped_without_being_opened(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    device = tmp_path / "zero.jsonl"
    device.symlink_to("/dev/zero")
    for path, kind in ((fifo, "FIFO"), (device, "character device")):
        assert plan_splits(str(path), 1024) == [Split()]
        docs, quarantined = read(path)
        assert docs == [] and [(q.reason, q.position) for q in quarantined] == [
            ("not_a_regular_file", "file")
        ]
        assert kind in quarantined[0].detail


def _flip_byte_in_row_group(path: Path, group: int, needle: bytes) -> None:
    data = bytearray(path.read_bytes())
    start = pq.ParquetFile(path).metadata.row_group(group).column(0).data_page_offset
    at = data.index(needle, start)
    data[at] ^= 0x20
    path.write_bytes(bytes(data))


def test_parquet_page_with_a_wrong_checksum_is_quarantined(tmp_path: Path) -> None:
    texts = [f"document number {i} " * 10 for i in range(300)]
    path = tmp_path / "pages.parquet"
    pq.write_table(
        pa.table({"text": texts}),
        path,
        compression="none",
        use_dictionary=False,
        write_page_checksum=True,
        row_group_size=100,
    )
    _flip_byte_in_row_group(path, 1, b"document number 150 ")
    docs, quarantined = read(path)
    assert [d.text for d in docs] == texts[:100] + texts[200:]
    [bad] = quarantined
    assert (bad.reason, bad.position) == ("corrupt_file", "row 100")
    assert "rows 100-199 of row group 1" in bad.detail and "checksum" in bad.detail.lower()


def test_ingest_counts_documents_it_cut(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "a.jsonl").write_bytes(line("short") + b"\n" + line("long " * 500) + b"\n")
    limits = {"max_document_bytes": 1000}
    run = RunDir(tmp_path / "quarantined").create()
    summary = run_stages(run, "ingest", inputs=[str(inputs)], ingest=limits, workers=1)
    assert (summary["documents"], summary["truncated"], summary["quarantine_reasons"]) == (
        1,
        0,
        {"too_large": 1},
    )
    run = RunDir(tmp_path / "cut").create()
    summary = run_stages(
        run, "ingest", inputs=[str(inputs)], ingest={**limits, "too_large": "truncate"}, workers=1
    )
    assert (summary["documents"], summary["truncated"], summary["quarantined"]) == (2, 1, 0)
    texts = pq.read_table(run.documents / "00000.parquet").column("text").to_pylist()
    assert texts == ["short", ("long " * 500)[:1000]]


def test_parquet_and_csv_documents_over_the_limit(tmp_path: Path) -> None:
    texts = ["small", "x" * 3000, "small again"]
    pq.write_table(pa.table({"text": texts}), tmp_path / "rows.parquet")
    (tmp_path / "rows.csv").write_text("text\n" + "\n".join(texts) + "\n")
    for name in ("rows.parquet", "rows.csv"):
        docs, quarantined = read(tmp_path / name, max_document_bytes=1000)
        assert [d.text for d in docs] == ["small", "small again"]
        assert [(q.reason, q.position) for q in quarantined] == [("too_large", "row 1")]
