"""Input splits: every split read on its own, positions continued from the split before, gives exactly
the whole-file read (ids, texts, own ids, metadata, quarantine positions), whatever the split size."""

from __future__ import annotations

import dataclasses
import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from shared_data import SHARED_DATA

from pipelines.readers import Document, Quarantined, ReadOptions, Split, plan_splits, read_file
from pipelines.readers.base import WHOLE

SHAKESPEARE = SHARED_DATA / "tinyshakespeare" / "input.txt"
RESILIPARSE_WARC = SHARED_DATA / "resiliparse-test-warc" / "warcfile.warc.gz"
CCNET = SHARED_DATA / "dolma-test-fixtures" / "cc_en_head" / "cc_en_head-0091.jsonl.gz"
Item = Document | Quarantined


def read_all(
    path: Path, split: Split = WHOLE, options: ReadOptions | None = None
) -> tuple[list[Item], int | None]:
    items = read_file(str(path), "src", options, split)
    out = []
    while True:
        try:
            out.append(next(items))
        except StopIteration as stop:
            return out, stop.value


def read_by_splits(
    path: Path, split_bytes: int, options: ReadOptions | None = None
) -> tuple[list[Item], int]:
    """Every split of the file, positions shifted by the positions of the splits before (what ingest
    does when it assembles documents/), stopping after a split that stopped early."""
    splits = plan_splits(str(path), split_bytes, options)
    out, base = [], 0
    for split in splits:
        items, positions = read_all(path, split, options)
        for item in items:
            if isinstance(item, Document):
                out.append(dataclasses.replace(item, position=item.position + base))
            else:
                number = None if item.number is None else item.number + base
                out.append(dataclasses.replace(item, number=number))
        if positions is None:
            break
        base += positions
    return out, len(splits)


def jsonl_corpus(tmp_path: Path) -> Path:
    """Real CCNet records repeated, with blank lines, bad lines, a BOM and a long line among them."""
    records = gzip.decompress(CCNET.read_bytes()).splitlines()
    lines = [b"\xef\xbb\xbf" + records[0]]
    for i in range(200):
        lines.append(records[i % len(records)])
        if i % 17 == 0:
            lines.append(b"   ")
        if i % 29 == 0:
            lines.append(b'{"text": "unterminated')
        if i % 41 == 0:
            lines.append(json.dumps({"text": "x" * 3000}).encode())
    path = tmp_path / "ccnet.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


@pytest.mark.parametrize("split_bytes", [1000, 4096, 65_536, 1 << 30])
def test_jsonl_splits_read_like_the_whole_file(tmp_path: Path, split_bytes: int) -> None:
    path = jsonl_corpus(tmp_path)
    options = ReadOptions(max_line_bytes=2000)
    whole, positions = read_all(path, options=options)
    assert positions == path.read_bytes().count(b"\n")
    assert {type(i) for i in whole} == {Document, Quarantined}
    by_splits, n_splits = read_by_splits(path, split_bytes, options)
    assert by_splits == whole
    assert n_splits == (1 if split_bytes >= path.stat().st_size else -(-path.stat().st_size // split_bytes))
    offsets = [i.offset for i in whole]
    assert offsets == sorted(offsets) and whole[0].offset == 0


def test_jsonl_compressed_pretty_or_newline_free_files_are_one_split(tmp_path: Path) -> None:
    path = jsonl_corpus(tmp_path)
    packed = tmp_path / "ccnet.jsonl.gz"
    packed.write_bytes(gzip.compress(path.read_bytes()))
    assert plan_splits(str(packed), 100) == [Split()]
    pretty = tmp_path / "pretty.json"
    pretty.write_text(json.dumps([{"text": "a"}] * 500, indent=2))
    assert plan_splits(str(pretty), 100) == [Split()]
    one_line = tmp_path / "one.jsonl"
    one_line.write_bytes(json.dumps({"text": "y" * 20_000}).encode())
    assert plan_splits(str(one_line), 100) == [Split()]


@pytest.fixture(scope="module")
def wet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The resiliparse test WARC uncompressed (50 records: responses, requests, metadata)."""
    path = tmp_path_factory.mktemp("wet") / "crawl.warc"
    path.write_bytes(gzip.decompress(RESILIPARSE_WARC.read_bytes()))
    return path


@pytest.mark.parametrize("split_bytes", [1, 5_000, 40_000, 1 << 30])
def test_warc_splits_start_at_records_and_read_like_the_whole_file(wet: Path, split_bytes: int) -> None:
    whole, positions = read_all(wet)
    assert positions == 50 and len([i for i in whole if isinstance(i, Document)]) == 16
    by_splits, n_splits = read_by_splits(wet, split_bytes)
    assert by_splits == whole
    assert n_splits == {1: 50, 1 << 30: 1}.get(split_bytes, n_splits) and (
        split_bytes > 1 << 29 or n_splits > 1
    )
    data = wet.read_bytes()
    for split in plan_splits(str(wet), split_bytes):
        assert data[split.start : split.start + 5] == b"WARC/"


def test_warc_split_walk_stops_at_a_broken_record(tmp_path: Path, wet: Path) -> None:
    """Garbage between records: the splits end where the walk stops, and the read stops there as a
    whole-file read does."""
    data = wet.read_bytes()
    cut = data.index(b"WARC/1.0\r\n", len(data) // 2)
    path = tmp_path / "bad.warc"
    path.write_bytes(data[:cut] + b"NOT A WARC HEADER\r\n\r\n" + data[cut:])
    whole, positions = read_all(path)
    assert positions is None and whole[-1].reason == "malformed_record"
    by_splits, n_splits = read_by_splits(path, 3000)
    assert by_splits == whole and n_splits > 2
    assert plan_splits(str(path), 3000)[-1].stop is None


@pytest.mark.parametrize("split_bytes", [1, 3_000, 1 << 30])
def test_parquet_splits_are_row_groups(tmp_path: Path, split_bytes: int) -> None:
    texts = [line for line in SHAKESPEARE.read_text().splitlines() if line.strip()][:500]
    texts[17] = ""  # quarantined: empty_text
    path = tmp_path / "t.parquet"
    table = pa.table({"id": [f"r{i}" for i in range(500)], "text": texts, "n": list(range(500))})
    pq.write_table(table, path, row_group_size=60)
    splits = plan_splits(str(path), split_bytes)
    whole, positions = read_all(path)
    assert positions == 500
    by_splits, n_splits = read_by_splits(path, split_bytes)
    assert by_splits == whole
    assert n_splits == {1: 9, 1 << 30: 1}.get(split_bytes, n_splits) and splits[0] == Split(0, splits[0].stop)


@pytest.mark.parametrize("name", ["x.txt", "x.csv", "x.html", "x.jsonl.zst"])
def test_unsplittable_formats(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    data = b"text\n" + b"a line of text\n" * 10_000
    path.write_bytes(zstandard.ZstdCompressor().compress(data) if name.endswith(".zst") else data)
    assert plan_splits(str(path), 100) == [Split()]
