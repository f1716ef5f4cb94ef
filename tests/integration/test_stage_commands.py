"""Stage commands write the same run-directory folders as `gristmill run`, and a re-run resumes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from gristmill_cli import gristmill

REPO = Path(__file__).resolve().parents[2]
SETTINGS = ["--set", "tokenizer.vocab_size=512", "--workers", "2"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, str]:
    work = tmp_path_factory.mktemp("stages")
    inputs = work / "in"
    inputs.mkdir()
    for name in ("books.jsonl.zst", "spam.jsonl.zst"):
        shutil.copy(REPO / "data" / "sample" / name, inputs / name)
    flow = gristmill(
        "run", "--input", str(inputs), "--output", str(work / "runs"), "--run-id", "flow", *SETTINGS, cwd=work
    )
    staged = work / "staged"
    gristmill("filter", "--input", str(inputs), "--output", str(staged), *SETTINGS, cwd=work)
    gristmill("dedup", "--output", str(staged), *SETTINGS, cwd=work)
    gristmill("tokenizer", "train", "--output", str(staged), *SETTINGS, cwd=work)
    gristmill("tokenize", "--output", str(staged), *SETTINGS, cwd=work)
    gristmill("report", str(staged), cwd=work)
    return work, work / "runs" / "flow", staged, flow.stdout


def _table(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def test_stage_commands_match_the_flow(runs: tuple) -> None:
    _, flow, staged, _ = runs
    for name in sorted(p.name for p in (flow / "signals").glob("*.parquet")):
        assert _table(flow / "signals" / name) == _table(staged / "signals" / name)
    assert _table(flow / "dedup" / "removed.parquet") == _table(staged / "dedup" / "removed.parquet")
    assert (flow / "tokenizer" / "tokenizer.json").read_bytes() == (
        staged / "tokenizer" / "tokenizer.json"
    ).read_bytes()
    flow_manifest = json.loads((flow / "tokens" / "_manifest.json").read_text())
    staged_manifest = json.loads((staged / "tokens" / "_manifest.json").read_text())
    assert flow_manifest["splits"] == staged_manifest["splits"]  # same shards, byte for byte (sha256)
    for folder in ("report/report.html", "report/report.json", "report/report.md", "run.json"):
        assert (staged / folder).exists()


def test_rerun_with_same_run_id_skips_done_stages(runs: tuple) -> None:
    work, flow, _, _ = runs
    before = (flow / "tokens" / "_manifest.json").read_bytes()
    second = gristmill(
        "run",
        "--input",
        str(work / "in"),
        "--output",
        str(work / "runs"),
        "--run-id",
        "flow",
        *SETTINGS,
        cwd=work,
        check=False,
    )
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stderr.count("already done in an earlier attempt") == 5
    assert (flow / "tokens" / "_manifest.json").read_bytes() == before


def test_rerun_with_other_inputs_is_refused(runs: tuple) -> None:
    work, _, _, _ = runs
    result = gristmill(
        "run",
        "--input",
        str(REPO / "data" / "sample" / "cc"),
        "--output",
        str(work / "runs"),
        "--run-id",
        "flow",
        cwd=work,
        check=False,
    )
    assert result.returncode != 0
    assert "other inputs" in result.stdout + result.stderr


def test_run_prints_a_summary(runs: tuple) -> None:
    *_, stdout = runs
    assert "gristmill run flow" in stdout and "removed by the policy" in stdout and "report:" in stdout
