"""`gristmill ablate` on a real run of the bundled sample: a tiny model, a few steps per variant and seed
through the real torchrun launcher; the files, the report section, equal training tokens for every
variant, and evaluation text in no variant's training data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from gristmill_cli import gristmill
from stage_helpers import run_stages

from pipelines.run import RunDir
from pipelines.stages.token_shards import MANIFEST_NAME

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data" / "sample"
STEPS, BATCH, SEQ_LEN = 6, 8, 32
VARIANTS = ("raw", "policy+dedup")


def _ids(folder: Path, split: str) -> set[str]:
    return {
        i
        for path in sorted(folder.glob(f"{split}-*.parquet"))
        for i in pq.read_table(path).column("id").to_pylist()
    }


@pytest.fixture(scope="module")
def ablated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("ablation")
    run = RunDir(work / "run").create()
    inputs = [str(SAMPLE / "web.jsonl.zst"), str(SAMPLE / "spam.jsonl.zst")]
    run.record.start("run", {"tokenize": {"validation_fraction": 0.1}}, inputs)
    run_stages(run, "ingest", "signals", "dedup", "tokenizer", "tokenize", "report", inputs=inputs, workers=2,
               tokenizer={"vocab_size": 512, "sample_chars": 2_000_000},
               tokenize={"validation_fraction": 0.1})  # fmt: skip
    # an evaluation file with two clean paragraphs and a copy of a spam message of the corpus
    spam = pq.read_table(run.documents / "00001.parquet").to_pylist()[0]
    eval_file = work / "clean.jsonl"
    lines = [
        {"text": "The river rose slowly through the night, and by morning the fields were under water."},
        {"text": "She wrote the letter twice before she was satisfied that it said what she meant."},
        {"text": "  " + "\n".join(spam["text"].split()) + " "},  # the same words, other whitespace
    ]
    eval_file.write_text("".join(json.dumps(line) + "\n" for line in lines))
    args = [
        "ablate", str(run.root), "--variants", ",".join(VARIANTS), "--tokens", str(STEPS * BATCH * SEQ_LEN),
        "--seeds", "0,1", "--preset", "tiny", "--seq-len", str(SEQ_LEN), "--batch-size", str(BATCH),
        "--eval", str(eval_file), "--heldout-bytes", "30000", "--curve-points", "2", "--workers", "2",
    ]  # fmt: skip
    first = gristmill(*args, timeout=600)
    again = gristmill(*args, timeout=600)
    results = json.loads(run.ablation_results.read_text())
    return {"run": run, "results": results, "first": first, "again": again, "spam_id": spam["id"]}


def test_every_variant_and_seed_trains_on_exactly_the_same_number_of_tokens(ablated: dict[str, Any]) -> None:
    run, results = ablated["run"], ablated["results"]
    tokens = STEPS * BATCH * SEQ_LEN
    assert results["settings"]["training_tokens"] == tokens and results["equal_training_tokens"]
    assert [v["name"] for v in results["variants"]] == list(VARIANTS) and not results["failed"]
    for v in results["variants"]:
        assert [r["seed"] for r in v["runs"]] == [0, 1]
        for r in v["runs"]:
            assert r["tokens_seen"] == tokens
            metrics = run.ablation / "metrics" / f"{v['slug']}.seed-{r['seed']}.jsonl"
            records = [json.loads(line) for line in metrics.read_text().splitlines()]
            train = [x for x in records if x["type"] == "train"]
            assert train[-1]["step"] == STEPS and train[-1]["tokens_seen"] == tokens
            assert [x["step"] for x in records if x["type"] == "val"] == [3, 6]  # the curve
        # the epochs: windows trained on over the windows of the variant's stream
        assert v["epochs"] == pytest.approx(STEPS * BATCH / v["train_windows"])
        assert v["repeated"] == (v["epochs"] > 1)
        manifest = json.loads((run.ablation / "variants" / v["slug"] / MANIFEST_NAME).read_text())
        assert manifest["splits"]["train"]["tokens"] == v["train_tokens"]
        assert (
            run.ablation / "variants" / v["slug"] / manifest["tokenizer"]["path"]
        ).resolve() == run.tokenizer_json


def test_evaluation_text_is_in_no_variant_and_the_same_held_out_split_in_each(
    ablated: dict[str, Any],
) -> None:
    run, results = ablated["run"], ablated["results"]
    heldout = set(pq.read_table(run.ablation / "eval" / "heldout.parquet").column("id").to_pylist())
    assert heldout and results["excluded"]["heldout"] == len(heldout)
    assert results["excluded"]["same_text_as_eval"] >= 1
    final = _ids(run.tokens, "train") | _ids(run.tokens, "validation")
    documents = {
        i for p in sorted(run.documents.glob("*.parquet")) for i in pq.read_table(p).column("id").to_pylist()
    }
    assert heldout <= final
    folders = {v: run.ablation / "variants" / ("no-" + v[1:] if v.startswith("-") else v) for v in VARIANTS}
    train = {v: _ids(folder, "train") for v, folder in folders.items()}
    for v, folder in folders.items():
        assert _ids(folder, "validation") == heldout
        assert not train[v] & heldout and ablated["spam_id"] not in train[v]
    excluded = sum(results["excluded"].values())
    assert len(train["raw"]) == len(documents) - excluded
    assert train["policy+dedup"] <= final and len(train["policy+dedup"]) >= len(final) - excluded
    names = [s["name"] for s in results["eval_sets"]]
    assert names == ["heldout", "clean"]
    for v in results["variants"]:
        for name in names:
            e = v["eval"][name]
            assert e["bits_per_byte"] > 0 and e["bits_per_byte_spread"] >= 0
            per_seed = [r["eval"][name]["bits_per_byte"] for r in v["runs"]]
            assert e["bits_per_byte"] == pytest.approx(sum(per_seed) / 2)
            assert e["bits_per_byte_spread"] == pytest.approx(max(per_seed) - min(per_seed))


def test_results_reach_the_report_and_the_console(ablated: dict[str, Any]) -> None:
    run = ablated["run"]
    md = (run.report / "report.md").read_text()
    section = md[md.index("## Data-quality ablation") :]
    assert "| policy+dedup |" in section and "heldout bits/byte" in section and "clean bits/byte" in section
    html = (run.report / "report.html").read_text()
    start = html.index('id="data-quality-ablation"')
    assert "policy+dedup" in html[start:] and "<polyline" in html[start:]
    assert json.loads((run.report / "report.json").read_text())["ablation"]["run_id"] == "run"
    out = ablated["first"].stdout
    assert "heldout bits/byte" in out and "policy+dedup" in out
    assert not (run.ablation / "models").exists()  # checkpoints are dropped unless --keep-models


def test_a_second_run_with_the_same_settings_reuses_every_pair(ablated: dict[str, Any]) -> None:
    log = ablated["again"].stderr
    assert log.count("reusing the finished result") == len(VARIANTS) * 2
    assert "training" not in log.replace("training tokens", "")
