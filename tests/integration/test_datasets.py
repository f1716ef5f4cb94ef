"""Dataset conventions: every data folder of a real run reads with pyarrow.dataset and with
datasets.load_dataset, and `gristmill export-text` writes the final corpus as a dataset with a card."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[2]
GRISTMILL = Path(sys.executable).parent / "gristmill"
SAMPLE = REPO / "data" / "sample"
DATA_FOLDERS = (
    "documents",
    "clean",
    "signals",
    "dedup/signatures",
    "dedup/bands",
    "tokens",
    "report/_doc_tokens",
)


@pytest.fixture(scope="module")
def run_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("datasets")
    command = [
        str(GRISTMILL),
        "run",
        "--input",
        str(SAMPLE / "web.jsonl.zst"),
        str(SAMPLE / "spam.jsonl.zst"),
        "--output",
        str(work),
        "--run-id",
        "r",
        "--workers",
        "2",
        "--set",
        "tokenizer.vocab_size=512",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=work)
    assert result.returncode == 0, result.stderr[-4000:]
    return work / "r"


@pytest.fixture
def hf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """`datasets`, offline, with its cache in tmp_path."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import datasets

    return datasets


def _rows(folder: Path) -> int:
    return sum(pq.read_metadata(p).num_rows for p in folder.glob("[!_]*.parquet"))


def test_every_data_folder_reads_with_pyarrow_and_datasets(run_root: Path, hf: Any, tmp_path: Path) -> None:
    for name in DATA_FOLDERS:
        folder = run_root / name
        expected = _rows(folder)
        assert expected > 0, name
        assert ds.dataset(folder).count_rows() == expected, name
        loaded = hf.load_dataset("parquet", data_dir=str(folder), cache_dir=str(tmp_path / "cache"))
        assert sum(split.num_rows for split in loaded.values()) == expected, name
    manifest = json.loads((run_root / "tokens" / "_manifest.json").read_text())
    tokens = hf.load_dataset("parquet", data_dir=str(run_root / "tokens"), cache_dir=str(tmp_path / "cache"))
    assert {s: d.num_rows for s, d in tokens.items()} == {
        s: v["documents"] for s, v in manifest["splits"].items()
    }
    # the run's own metadata lives at its root, not in a data folder
    assert all((run_root / f).is_file() for f in ("_inputs.json", "_policy.yaml", "run.json"))
    for table in ("removed", "clusters"):
        assert ds.dataset(run_root / "dedup" / f"{table}.parquet").count_rows() == _rows_of(run_root, table)


def _rows_of(run_root: Path, table: str) -> int:
    return pq.read_metadata(run_root / "dedup" / f"{table}.parquet").num_rows


def _final_corpus(run_root: Path) -> dict[str, dict[str, str]]:
    """{split: {id: cleaned text}} of the token shards' documents (what export-text must write)."""
    texts = {r["id"]: r["text"] for r in ds.dataset(run_root / "clean").to_table().to_pylist()}
    out: dict[str, dict[str, str]] = {}
    for path in sorted((run_root / "tokens").glob("[!_]*.parquet")):
        split = path.name.split("-")[0]
        for doc_id in pq.read_table(path, columns=["id"]).column("id").to_pylist():
            out.setdefault(split, {})[doc_id] = texts[doc_id]
    return out


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_export_text_writes_the_final_corpus_as_a_dataset(
    run_root: Path, hf: Any, tmp_path: Path, fmt: str
) -> None:
    out = tmp_path / "corpus"
    command = [str(GRISTMILL), "export-text", str(run_root), "--output", str(out), "--format", fmt]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    expected = _final_corpus(run_root)
    loaded = hf.load_dataset(str(out), cache_dir=str(tmp_path / "cache"))  # the card names the splits
    assert set(loaded) == set(expected)
    signals = {r["id"]: r for r in ds.dataset(run_root / "signals").to_table().to_pylist()}
    for split, documents in expected.items():
        rows = loaded[split].to_list()
        assert [r["id"] for r in rows] == list(documents)  # input order, exactly the final corpus
        assert all(r["text"] == documents[r["id"]] for r in rows)
        assert all(r["lang"] == signals[r["id"]]["lang"] for r in rows)
        assert all(r["quality_score"] == signals[r["id"]]["quality_score"] for r in rows)
        assert {"id", "source", "url", "text", "lang", "quality_score"} <= set(rows[0])
    builder = "parquet" if fmt == "parquet" else "json"
    again = hf.load_dataset(builder, data_dir=str(out), cache_dir=str(tmp_path / "cache2"))
    assert {s: d.num_rows for s, d in again.items()} == {s: len(d) for s, d in expected.items()}
    card = (out / "README.md").read_text()
    assert "configs:" in card and f"{len(expected['train']):,} train" in card and "## Columns" in card
    if fmt == "parquet":
        assert ds.dataset(out / "data").count_rows() == sum(len(d) for d in expected.values())
    again = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "not empty" in again.stderr


def test_export_text_names_what_is_missing(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(GRISTMILL), "export-text", str(tmp_path), "--output", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "not a run directory" in result.stderr
