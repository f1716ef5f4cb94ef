"""A user-defined signal from a module outside gristmill, through a real `gristmill run`: its columns in
signals/, a policy rule on it dropping documents, and the report and what-if treating it as a signal."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
import zstandard

from pipelines.quality.policy import load_policy

REPO = Path(__file__).resolve().parents[2]
GRISTMILL = Path(sys.executable).parent / "gristmill"

PLUGIN = '''
"""A team's own signals: the share of upper-case letters, and whether a price is mentioned."""


def shouting(batch):
    texts = batch.column("clean_text").to_pylist()
    letters = [sum(c.isalpha() for c in t) for t in texts]
    upper = [sum(c.isupper() for c in t) for t in texts]
    return {
        "upper_ratio": [u / n if n else None for u, n in zip(upper, letters)],
        "mentions_price": ["$" in t for t in texts],
    }
'''


def _sample_documents(limit: int) -> list[dict]:
    raw = zstandard.ZstdDecompressor().stream_reader((REPO / "data/sample/web.jsonl.zst").open("rb"))
    lines = io.TextIOWrapper(raw, encoding="utf-8")
    return [json.loads(line) for line, _ in zip(lines, range(limit), strict=False)]


@pytest.fixture(scope="module")
def plugin_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    work = tmp_path_factory.mktemp("plugin")
    (work / "plugins").mkdir()
    (work / "plugins" / "team_signals.py").write_text(PLUGIN)
    documents = _sample_documents(40)
    loud = [{**d, "id": f"loud-{i}", "text": d["text"].upper()} for i, d in enumerate(documents[:8])]
    with (work / "pages.jsonl").open("w") as f:
        for doc in documents + loud:
            f.write(json.dumps(doc) + "\n")
    policy = load_policy().model_dump()
    policy["rules"].append({"name": "too_loud", "signal": "upper_ratio", "max": 0.5})
    (work / "policy.yaml").write_text(yaml.safe_dump(policy))
    config = {
        "inputs": [str(work / "pages.jsonl")],
        "signals": {"policy": str(work / "policy.yaml"), "plugins": ["team_signals:shouting"]},
        "tokenizer": {"vocab_size": 512},
        "executor": {"workers": 2},
    }
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(work / "plugins"), os.environ.get("PYTHONPATH")])),
    }
    result = subprocess.run(
        [str(GRISTMILL), "run", str(work / "config.yaml"), "--output", str(work / "runs"), "--run-id", "p"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=work,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return {"work": work, "root": work / "runs" / "p", "env": env, "loud": len(loud)}


def test_plugin_columns_land_in_signals_and_a_rule_on_them_drops_documents(plugin_run: dict) -> None:
    signals = pq.read_table(plugin_run["root"] / "signals").to_pylist()
    assert {"upper_ratio", "mentions_price"} <= set(signals[0])
    documents = {
        d["id"]: d
        for d in pq.read_table(plugin_run["root"] / "documents", columns=["id", "source_id"]).to_pylist()
    }
    loud = [r for r in signals if str(documents[r["id"]]["source_id"]).startswith("loud-")]
    assert len(loud) == plugin_run["loud"]
    for row in signals:
        assert ("too_loud" in row["reasons"]) == (row["upper_ratio"] is not None and row["upper_ratio"] > 0.5)
    assert all(not r["keep"] and "too_loud" in r["reasons"] for r in loud)
    record = json.loads((plugin_run["root"] / "run.json").read_text())
    summary = record["stages"]["signals"]["summary"]
    assert summary["plugins"] == {"team_signals:shouting": ["upper_ratio", "mentions_price"]}
    assert summary["plugin_errors"] == {}


def test_the_report_and_whatif_treat_the_plugin_signal_like_a_builtin(plugin_run: dict) -> None:
    root = plugin_run["root"]
    report = json.loads((root / "report" / "report.json").read_text())
    rule = next(r for r in report["rules"] if r["rule"] == "too_loud")
    assert rule["signal"] == "upper_ratio" and rule["documents"] >= plugin_run["loud"]
    assert report["histograms"]["upper_ratio"]["thresholds"] == [0.5]
    assert "too_loud.max" in report["curves"]
    assert "too_loud" in (root / "report" / "report.html").read_text()
    relaxed = load_policy(plugin_run["work"] / "policy.yaml", ["upper_ratio", "mentions_price"]).model_dump()
    for r in relaxed["rules"]:
        if r["name"] == "too_loud":
            r["max"] = 1.0
    (plugin_run["work"] / "relaxed.yaml").write_text(yaml.safe_dump(relaxed))
    result = subprocess.run(
        [str(GRISTMILL), "report", str(root), "--policy", str(plugin_run["work"] / "relaxed.yaml")],
        capture_output=True,
        text=True,
        timeout=300,
        env=plugin_run["env"],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    whatif = json.loads((root / "report" / "whatif-relaxed.json").read_text())
    assert whatif["changes"] == [{"setting": "rules.too_loud.max", "before": 0.5, "after": 1.0}]
    (row,) = whatif["rules"]
    assert row["rule"] == "too_loud" and row["documents_after"] == 0 < row["documents_before"]
