"""The whole product through the commands a user types: run, report, train (torchrun), generate."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from gristmill_cli import gristmill

from tokenizer import file_sha256

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data" / "sample"


def _bad_inputs(folder: Path) -> dict[str, int]:
    """Write one of each kind of bad record next to good ones; return the expected quarantine counts."""
    folder.mkdir(parents=True)
    good = json.dumps({"text": "A perfectly good record that must survive the bad ones around it."})
    lines = [
        good.encode(),
        b'{"text": "unterminated',  # malformed_json
        b'{"text": "caf\xe9 au lait"}',  # invalid_utf8
        b'{"text": "nul \\u0000 byte"}',  # nul_bytes
        b'{"text": "   "}',  # empty_text
        b'{"title": "no text field"}',  # missing_text
        good.encode(),
    ]
    (folder / "mixed.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    (folder / "image.jsonl").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8)
    whole = gzip.compress(
        b"".join(json.dumps({"text": f"record {i} " * 20}).encode() + b"\n" for i in range(50))
    )
    (folder / "cut.jsonl.gz").write_bytes(whole[: len(whole) // 2])
    return {
        "malformed_json": 1,
        "invalid_utf8": 1,
        "nul_bytes": 1,
        "empty_text": 1,
        "missing_text": 1,
        "not_text": 1,
        "truncated_file": 1,
    }


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("e2e")
    inputs = work / "sample"
    inputs.mkdir()
    for name in ("udhr.jsonl.zst", "spam.jsonl.zst", "web.jsonl.zst", "cc"):
        src = SAMPLE / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, inputs / name)
    expected = _bad_inputs(work / "bad")
    result = gristmill(
        "run",
        "--input",
        str(inputs),
        str(work / "bad"),
        "--output",
        str(work / "runs"),
        "--run-id",
        "e2e",
        "--set",
        "tokenizer.vocab_size=1024",
        "--workers",
        "2",
        cwd=work,
        env={"PREFECT_HOME": str(work / "prefect")},
    )
    assert "gristmill run e2e" in result.stdout  # the one-screen summary
    run = work / "runs" / "e2e"
    (run / "expected_quarantine.json").write_text(json.dumps(expected))
    return run


def test_run_directory_is_complete(run_dir: Path) -> None:
    for folder in ("signals", "dedup", "tokenizer", "tokens", "report", "quarantine", "documents"):
        assert (run_dir / folder).is_dir(), folder
    record = json.loads((run_dir / "run.json").read_text())
    assert record["run_id"] == "e2e" and record["status"] == "done"
    assert set(record["stages"]) == {"ingest", "signals", "dedup", "tokenizer", "tokenize", "report"}
    assert all(s["status"] == "done" and s["seconds"] >= 0 for s in record["stages"].values())
    assert record["versions"]["pyarrow"] and record["config"]["tokenizer"]["vocab_size"] == 1024
    assert "git_commit" in record


def test_quarantine_counts_every_bad_record(run_dir: Path) -> None:
    expected = json.loads((run_dir / "expected_quarantine.json").read_text())
    rows = [json.loads(line) for p in sorted((run_dir / "quarantine").glob("*.jsonl")) for line in p.open()]
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["reason"]] = counts.get(row["reason"], 0) + 1
    assert counts == expected
    report = json.loads((run_dir / "report" / "report.json").read_text())
    assert report["quarantine"] == counts


def test_good_records_next_to_bad_ones_survive(run_dir: Path) -> None:
    ids = [
        i
        for p in sorted((run_dir / "documents").glob("*.parquet"))
        for i in pq.read_table(p, columns=["id"]).column("id").to_pylist()
    ]
    assert "bad/mixed.jsonl:1" in ids and "bad/mixed.jsonl:7" in ids
    truncated = [i for i in ids if i.startswith("bad/cut.jsonl.gz:")]
    assert 0 < len(truncated) < 50


def test_signals_policy_and_dedup_outputs(run_dir: Path) -> None:
    signals = pq.read_table(run_dir / "signals")
    assert {
        "id",
        "word_count",
        "mean_word_length",
        "symbol_word_ratio",
        "stop_word_count",
        "lang",
        "lang_score",
        "keep",
        "reasons",
    } <= set(signals.column_names)
    keep = signals.column("keep").to_pylist()
    reasons = signals.column("reasons").to_pylist()
    assert any(keep) and not all(keep), "the sample must have real documents to keep and to drop"
    assert all((not r) == k for r, k in zip(reasons, keep, strict=True))
    assert len(set(signals.column("lang").to_pylist())) > 10
    removed = pq.read_table(run_dir / "dedup" / "removed.parquet")
    assert removed.column_names == ["id", "source_id", "duplicate_of", "duplicate_of_source_id", "similarity"]
    assert removed.num_rows >= 1  # the sample holds real duplicate web pages


def test_tokenizer_and_manifest(run_dir: Path) -> None:
    manifest = json.loads((run_dir / "tokens" / "_manifest.json").read_text())
    assert manifest["format"] == "gristmill.tokens" and manifest["dtype"] == "uint16"
    assert manifest["tokenizer"]["sha256"] == file_sha256(run_dir / "tokenizer" / "tokenizer.json")
    assert manifest["tokenizer"]["vocab_size"] == 1024
    total = 0
    for split in ("train", "validation"):
        for shard in manifest["splits"][split]["shards"]:
            path = run_dir / "tokens" / shard["path"]
            assert file_sha256(path) == shard["sha256"] and path.stat().st_size == shard["bytes"]
            table = pq.read_table(path)
            assert str(table.schema.field("input_ids").type) == "list<element: uint16>"
            assert table.num_rows == shard["documents"]
            total += shard["tokens"]
    assert total == manifest["totals"]["tokens"] > 10_000
    kept = sum(pq.read_table(run_dir / "signals", columns=["keep"]).column("keep").to_pylist())
    removed = pq.read_metadata(run_dir / "dedup" / "removed.parquet").num_rows
    assert manifest["totals"]["documents"] == kept - removed


def test_report_files(run_dir: Path) -> None:
    report = json.loads((run_dir / "report" / "report.json").read_text())
    assert [s["stage"] for s in report["funnel"]] == ["ingest", "signals", "dedup", "tokenize"]
    assert report["rules"] and all(r["documents"] >= r["documents_alone"] for r in report["rules"])
    html = (run_dir / "report" / "report.html").read_text()
    assert "<svg" in html and "Rules" in html and "<script" not in html
    assert "## Funnel" in (run_dir / "report" / "report.md").read_text()


def test_train_with_torchrun_then_generate(run_dir: Path) -> None:
    model = run_dir / "model"
    gristmill(
        "train",
        "--data",
        str(run_dir / "tokens" / "_manifest.json"),
        "--nproc",
        "2",
        "--max-steps",
        "4",
        "--output",
        str(model),
        "--set",
        "train.preset=tiny",
        "--set",
        "train.seq_len=64",
        "--set",
        "train.batch_size=8",
        "--set",
        "train.eval_every=2",
        "--set",
        "train.log_every=1",
        cwd=run_dir,
    )
    metrics = [json.loads(line) for line in (model / "metrics.jsonl").open()]
    assert any("loss" in m for m in metrics)
    result = gristmill(
        "generate",
        "--checkpoint",
        str(model),
        "--prompt",
        "The",
        "--max-new-tokens",
        "20",
        "--seed",
        "0",
        cwd=run_dir,
    )
    assert result.stdout.startswith("The") and len(result.stdout.strip()) > len("The")

    from transformers import AutoModelForCausalLM, AutoTokenizer

    gristmill("export", "--checkpoint", str(model), "--output", str(run_dir / "hf"), cwd=run_dir)
    hf = AutoModelForCausalLM.from_pretrained(run_dir / "hf")
    hf_tokenizer = AutoTokenizer.from_pretrained(run_dir / "hf")
    ids = hf_tokenizer("The old house", return_tensors="pt").input_ids
    out = hf.generate(ids, max_new_tokens=5, do_sample=False)
    assert ids.shape[1] < out.shape[1] <= ids.shape[1] + 5


def test_laptop_run_starts_no_prefect_server(run_dir: Path) -> None:
    """Without PREFECT_API_URL the stages run in process: no temporary Prefect server, no Prefect home
    (the flow's artifacts against a real server: test_prefect_server.py)."""
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "done"
    assert not (run_dir.parent.parent / "prefect").exists()
