"""Within-file splits and the records' own ids, on a whole corpus build (every stage but the report).

The same inputs (real books and web pages of data/sample as an uncompressed JSONL file with ids and a
Parquet file of many row groups, the resiliparse crawl as an uncompressed WARC, a zstd file that cannot
split) are built with 1 MB splits on 2 workers, 1 GB splits on 2 workers and 1 MB splits on one worker:
documents/, quarantine/, clean/, signals/, dedup/, tokenizer/ and tokens/ come out byte for byte the same.
Then every output row of the first build joins back to the input records by their own ids.
"""

from __future__ import annotations

import gzip
import json
import random
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from run_outputs import run_outputs
from shared_data import SHARED_DATA
from stage_helpers import build

from pipelines.config import RunConfig
from pipelines.run import RunDir

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data" / "sample"
STAGES = ("ingest", "signals", "dedup", "tokenizer", "tokenize")
SETTINGS: dict[str, Any] = {
    "ingest": {"shard_mb": 0.25},
    "tokenizer": {"vocab_size": 512},
    "tokenize": {"shard_target_tokens": 100_000},
}


def _records(name: str) -> list[dict[str, Any]]:
    data = zstandard.ZstdDecompressor().decompress((SAMPLE / name).read_bytes(), max_output_size=1 << 30)
    return [json.loads(line) for line in data.splitlines()]


def _near_copy(text: str, rng: random.Random) -> str:
    words = text.split(" ")
    for _ in range(max(1, len(words) // 200)):
        words[rng.randrange(len(words))] = "edited"
    return " ".join(words)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("splits") / "in"
    root.mkdir()
    rng = random.Random(5)
    books = [{"id": f"book-{i}", **r} for i, r in enumerate(_records("books.jsonl.zst")[:60])]
    books += [
        {**books[i], "id": f"book-copy-{i}", "text": _near_copy(books[i]["text"], rng)} for i in (3, 17)
    ]
    lines = [json.dumps(r).encode() for r in books]
    lines.insert(20, b'{"text": "a broken line')
    (root / "books.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    web = _records("web.jsonl.zst")
    table = pa.table(
        {
            "doc": [f"page-{i}" for i in range(len(web))],
            "text": [r["text"] for r in web],
            "url": [r.get("url") for r in web],
        }
    )
    pq.write_table(table, root / "web.parquet", row_group_size=25, compression="none")
    crawl = gzip.decompress((SHARED_DATA / "resiliparse-test-warc" / "warcfile.warc.gz").read_bytes())
    (root / "crawl.warc").write_bytes(crawl)
    shutil.copy(SAMPLE / "spam.jsonl.zst", root / "spam.jsonl.zst")
    return root


def _build(corpus: Path, out: Path, split_mb: float, workers: int) -> RunDir:
    inputs = [str(corpus / "books.jsonl"), {"uri": str(corpus / "web.parquet"), "id_key": "doc"},
              str(corpus / "crawl.warc"), str(corpus / "spam.jsonl.zst")]  # fmt: skip
    settings = {**SETTINGS, "ingest": {**SETTINGS["ingest"], "split_mb": split_mb}}
    config = RunConfig.model_validate({**settings, "inputs": inputs, "executor": {"workers": workers}})
    run = RunDir(out / "r").create()
    run.start("r", config.model_dump(mode="json"), config.inputs)
    build(run, config, *STAGES)
    return run


@pytest.fixture(scope="module")
def runs(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, RunDir]:
    work = tmp_path_factory.mktemp("builds")
    return {
        "1 MB, 2 workers": _build(corpus, work / "a", 1, 2),
        "1 GB, 2 workers": _build(corpus, work / "b", 1024, 2),
        "1 MB, 1 worker": _build(corpus, work / "c", 1, 1),
    }


def _splits(run: RunDir) -> list[int]:
    """Splits per input file."""
    plan = json.loads(run.splits.read_text())["splits"]
    return [sum(1 for s in plan if s["input"] == i) for i in range(4)]


def test_outputs_do_not_depend_on_split_size_or_workers(runs: dict[str, RunDir]) -> None:
    small, large, serial = runs.values()
    assert _splits(large) == [1, 1, 1, 1]
    assert _splits(small) == _splits(serial) and _splits(small)[0] >= 2 and _splits(small)[1] >= 2
    assert len(small.shards()) > 4  # several documents shards per big file
    reference = run_outputs(small.root, ("tokens/_sources.parquet",))
    assert any(name.startswith("dedup/removed") for name in reference)
    for label, run in runs.items():
        outputs = run_outputs(run.root, ("tokens/_sources.parquet",))
        assert sorted(outputs) == sorted(reference), label
        different = [name for name in reference if outputs[name] != reference[name]]
        assert different == [], f"{label}: {different}"


def test_positions_and_quarantine_are_those_of_the_whole_file(runs: dict[str, RunDir], corpus: Path) -> None:
    run = runs["1 MB, 2 workers"]
    documents = pq.read_table(run.documents, columns=["id", "source", "source_id"])
    books = [i for i in documents.column("id").to_pylist() if i.startswith("in/books.jsonl:")]
    assert books == [f"in/books.jsonl:{n}" for n in [*range(1, 21), *range(22, 64)]]
    quarantine = [json.loads(line) for p in sorted(run.quarantine.glob("*.jsonl")) for line in p.open()]
    assert [(q["source"], q["position"], q["reason"]) for q in quarantine] == [
        ("in/books.jsonl", "line 21", "malformed_json")
    ]
    web = [i for i in documents.column("id").to_pylist() if i.startswith("in/web.parquet:")]
    assert web == [f"in/web.parquet:{n}" for n in range(353)]


def test_own_ids_reach_every_output(runs: dict[str, RunDir]) -> None:
    run = runs["1 MB, 2 workers"]
    documents = pq.read_table(run.documents).to_pylist()
    own = {d["id"]: d["source_id"] for d in documents}
    assert own["in/books.jsonl:1"] == "book-0" and own["in/books.jsonl:63"] == "book-copy-17"
    assert own["in/web.parquet:7"] == "page-7" and own["in/spam.jsonl.zst:1"] is None
    crawl = [d for d in documents if d["source"] == "in/crawl.warc"]
    assert crawl and all(d["source_id"].startswith("<urn:uuid:") for d in crawl)
    book = next(d for d in documents if d["id"] == "in/books.jsonl:1")
    assert set(json.loads(book["metadata"])) == {"title", "author", "chunk", "source_file"}
    signals = pq.read_table(run.signals, columns=["id", "source_id", "metadata"]).to_pylist()
    assert {s["id"]: s["source_id"] for s in signals} == own
    removed = pq.read_table(run.removed).to_pylist()
    copies = {r["source_id"]: r["duplicate_of_source_id"] for r in removed if r["source_id"]}
    assert copies.get("book-copy-3") == "book-3" or copies.get("book-3") == "book-copy-3"
    assert all(own[r["id"]] == r["source_id"] and own[r["duplicate_of"]] == r["duplicate_of_source_id"]
               for r in removed)  # fmt: skip
    clusters = pq.read_table(run.clusters).to_pylist()
    assert all(own[c["survivor"]] == c["survivor_source_id"] for c in clusters)
    sources = pq.read_table(run.tokens / "_sources.parquet").to_pylist()
    manifest = json.loads(run.manifest.read_text())
    assert len(sources) == manifest["totals"]["documents"]
    assert all(own[s["id"]] == s["source_id"] for s in sources)
    first = sources[0]
    shard = pq.read_table(run.tokens / first["shard"], columns=["id"]).column("id").to_pylist()
    assert shard[first["row"]] == first["id"]


def test_ingest_without_metadata(corpus: Path, tmp_path: Path) -> None:
    config = RunConfig.model_validate(
        {"inputs": [str(corpus / "books.jsonl")], "ingest": {"metadata": False}, "executor": {"workers": 1}}
    )
    run = RunDir(tmp_path / "r").create()
    build(run, config, "ingest")
    documents = pq.read_table(run.documents, columns=["source_id", "metadata"])
    assert set(documents.column("metadata").to_pylist()) == {None}
    assert documents.column("source_id").to_pylist()[0] == "book-0"


def test_text_and_id_keys_from_the_command_line(tmp_path: Path) -> None:
    """The Stack's layout (`content`, an id under `meta`): --text-key and --id-key reach the ingest."""
    from flows.cli import _common_config, build_parser

    stack = tmp_path / "stack.jsonl"
    rows = [
        {"content": f"def f{i}(x):\n    return x + {i}\n" * 20, "meta": {"repo": f"r/{i}"}} for i in range(3)
    ]
    stack.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = build_parser().parse_args(
        ["run", "--input", str(stack), "--text-key", "content", "--id-key", "meta.repo", "--workers", "1"]
    )
    config = _common_config(args)
    assert (config.ingest.text_key, config.ingest.id_key) == ("content", "meta.repo")
    run = RunDir(tmp_path / "r").create()
    build(run, config, "ingest")
    documents = pq.read_table(run.documents).to_pylist()
    assert [d["source_id"] for d in documents] == ["r/0", "r/1", "r/2"]
    assert documents[0]["text"] == rows[0]["content"] and json.loads(documents[0]["metadata"]) == {"meta": {}}


def test_report_examples_carry_the_records_own_ids(runs: dict[str, RunDir]) -> None:
    from pipelines.report import write_report

    run = runs["1 MB, 2 workers"]
    report = write_report(run, 1)
    own = {
        r["id"]: r["source_id"] for r in pq.read_table(run.signals, columns=["id", "source_id"]).to_pylist()
    }
    examples = [e for rule in report["rules"] for e in rule["examples"]]
    assert examples and all(e["source_id"] == own[e["id"]] for e in examples)
    assert any(e["source_id"] for e in examples)
    pairs = report["duplicates"]["examples"]
    assert pairs and all(p["source_id"] == own[p["id"]] for p in pairs)
    html = (run.report / "report.html").read_text()
    named = next(e for e in examples if e["source_id"])
    assert f"{named['id']} (id {named['source_id']})" in html
