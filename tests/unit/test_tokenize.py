"""The tokenizer stage (sample, held-out bytes per token, transformers files) and the tokenize stage
(parallel shards, uint16/uint32, row groups, crash and resume byte for byte)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from stage_helpers import run_stages

from pipelines.config import TokenShardsConfig
from pipelines.corpus import FinalCorpus, split_of
from pipelines.run import RunDir
from pipelines.stages.token_shards import write_token_shards
from pipelines.stages.tokenizer_training import Sample
from tokenizer import EOT, PAD, file_sha256, load

REPO = Path(__file__).resolve().parents[2]
SLOW_SHARDS = Path(__file__).resolve().parents[1] / "support" / "slow_shards"
GRISTMILL = Path(sys.executable).parent / "gristmill"
VALIDATION = 0.1
CONFIG = TokenShardsConfig(
    validation_fraction=VALIDATION, shard_target_tokens=150_000, row_group_rows=8, row_group_tokens=20_000
)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory with English books and short messages ingested (two documents/ shards) and an
    8k tokenizer trained on it."""
    work = tmp_path_factory.mktemp("tokenize")
    inputs = work / "in"
    inputs.mkdir()
    for name in ("books.jsonl.zst", "spam.jsonl.zst"):
        shutil.copy(REPO / "data" / "sample" / name, inputs / name)
    run = RunDir(work / "run").create()
    config = {"tokenize": {"validation_fraction": VALIDATION}}
    run.record.start("run", config, [str(inputs)])
    tokenizer = {"vocab_size": 8192, "special_tokens": [EOT, PAD]}
    run_stages(run, "ingest", "tokenizer", inputs=[str(inputs)], tokenizer=tokenizer, workers=2, **config)
    return run.root


def _copy(base: Path, dest: Path) -> RunDir:
    shutil.copytree(base, dest)
    return RunDir(dest)


def _texts(run: RunDir) -> list[tuple[str, str]]:
    """(id, text) of every document of the final corpus."""
    return [
        pair
        for table in FinalCorpus(run).batches()
        for pair in zip(table.column("id").to_pylist(), table.column("text").to_pylist(), strict=True)
    ]


def _heldout_texts(run: RunDir) -> list[str]:
    return [t for i, t in _texts(run) if split_of(i, VALIDATION) == "validation"]


def test_heldout_documents_are_not_in_the_sample(base: Path) -> None:
    run = RunDir(base)
    meta = json.loads((run.tokenizer / "tokenizer.meta.json").read_text())
    ids = [i for i, _ in _texts(run)]
    validation = [i for i in ids if split_of(i, VALIDATION) == "validation"]
    assert validation and meta["sample"]["validation_fraction"] == VALIDATION
    sample = Sample(200_000_000, 0, 10_000_000, VALIDATION, 0)
    sample.plan(run)
    sampled = {i for i in ids if sample.in_sample(i)}
    heldout = {i for i in ids if sample.in_heldout(i)}
    assert heldout == set(validation) and not sampled & heldout
    assert meta["trained_on_documents"] == len(sampled) == len(ids) - len(validation)
    assert meta["heldout"]["documents"] == len(validation)
    # a documents cap and a characters cap shrink the sample, still never touching validation documents
    capped = Sample(200_000_000, 40, 10_000_000, VALIDATION, 0)
    capped.plan(run)
    sampled_capped = {i for i in ids if capped.in_sample(i)}
    assert 20 <= len(sampled_capped) <= 60 and not sampled_capped & set(validation)


def test_bytes_per_token_on_heldout_text(base: Path) -> None:
    run = RunDir(base)
    meta = json.loads((run.tokenizer / "tokenizer.meta.json").read_text())
    texts = _heldout_texts(run)
    tok = load(run.tokenizer / "tokenizer.json", literal_special_tokens=True)
    n_bytes = sum(len(t.encode()) for t in texts)
    n_tokens = sum(len(e.ids) for e in tok.encode_batch(texts, add_special_tokens=False))
    assert meta["heldout"]["bytes"] == n_bytes and meta["heldout"]["tokens"] == n_tokens
    assert meta["bytes_per_token"] == pytest.approx(n_bytes / n_tokens, abs=1e-4)
    assert 2.0 < meta["bytes_per_token"] < 6.0  # English at an 8k vocabulary
    summary = run.record.load()["stages"]["tokenizer"]["summary"]
    assert summary["bytes_per_token"] == meta["bytes_per_token"]
    assert meta["sha256"] == file_sha256(run.tokenizer / "tokenizer.json")


def test_tokenizers_and_transformers_give_the_same_ids(base: Path) -> None:
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    folder = RunDir(base).tokenizer
    texts = _heldout_texts(RunDir(base))[:20]
    raw = Tokenizer.from_file(str(folder / "tokenizer.json"))
    fast = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
    auto = AutoTokenizer.from_pretrained(str(folder))
    expected = [e.ids for e in raw.encode_batch(texts, add_special_tokens=False)]
    assert sum(map(len, expected)) > 1000
    assert fast(texts)["input_ids"] == expected
    assert auto(texts)["input_ids"] == expected
    assert auto.eos_token == EOT and auto.eos_token_id == 0 and auto.pad_token_id == 1
    assert auto.decode(expected[0]) == texts[0]


def _read_shards(tokens: Path, manifest: dict) -> dict[str, list[int]]:
    out = {}
    for split in manifest["splits"].values():
        for shard in split["shards"]:
            table = pq.read_table(tokens / shard["path"])
            out.update(
                zip(table.column("id").to_pylist(), table.column("input_ids").to_pylist(), strict=True)
            )
    return out


def test_tokenize_shards_follow_the_contract(base: Path, tmp_path: Path) -> None:
    from training.manifest import load_manifest, verify_shards
    from training.shards import RowGroupCache, SplitIndex

    run = _copy(base, tmp_path / "run")
    manifest = run_stages(run, "tokenize", tokenize=CONFIG, workers=2)
    data = json.loads((run.manifest).read_text())
    assert manifest["shards"] == sum(len(s["shards"]) for s in data["splits"].values()) >= 4
    assert data["dtype"] == "uint16" and data["tokenizer"]["eot_id"] == 0
    tok = load(run.tokenizer / "tokenizer.json", literal_special_tokens=True)
    docs = dict(_texts(run))
    stored = _read_shards(run.tokens, data)
    assert set(stored) == set(docs)
    for doc_id, ids in stored.items():
        assert ids == tok.encode(docs[doc_id], add_special_tokens=False).ids
    for name, split in data["splits"].items():
        assert all(
            split_of(i, VALIDATION) == name
            for s in split["shards"]
            for i in pq.read_table(run.tokens / s["path"], columns=["id"]).column("id").to_pylist()
        )
        for shard in split["shards"]:
            md = pq.read_metadata(run.tokens / shard["path"])
            for g in range(md.num_row_groups):
                assert md.row_group(g).num_rows <= CONFIG.row_group_rows
        # shards near the target (planned from bytes per token), the last of a split smaller
        assert all(s["tokens"] < 2.5 * CONFIG.shard_target_tokens for s in split["shards"])
    # training's reader accepts it
    loaded = load_manifest(str(run.manifest))
    verify_shards(loaded, "train")
    index = SplitIndex(loaded, "train")
    assert index.n_tokens == data["splits"]["train"]["tokens"] + data["splits"]["train"]["documents"]
    tokens, _ = RowGroupCache(index).read(0, 100)
    first = data["splits"]["train"]["shards"][0]["path"]
    assert tokens[:20].tolist() == pq.read_table(run.tokens / first).column("input_ids")[0].as_py()[:20]


def test_workers_do_not_change_the_bytes(base: Path, tmp_path: Path) -> None:
    one = _copy(base, tmp_path / "one")
    two = _copy(base, tmp_path / "two")
    write_token_shards(one, CONFIG, {"run_id": "t"}, workers=1)
    write_token_shards(two, CONFIG, {"run_id": "t"}, workers=2)
    names = sorted(p.name for p in one.tokens.iterdir())
    assert names == sorted(p.name for p in two.tokens.iterdir())
    for name in names:
        assert (one.tokens / name).read_bytes() == (two.tokens / name).read_bytes(), name


def test_literal_special_token_text_stays_text(base: Path, tmp_path: Path) -> None:
    from pipelines.stages.ingest import DOCUMENT_SCHEMA

    run = _copy(base, tmp_path / "run")
    import pyarrow as pa

    text = f"A page that quotes {EOT} and {PAD} in its text."
    pq.write_table(
        pa.table(
            dict(id=["x:1"], source=["x"], source_id=[None], url=[None], metadata=[None], text=[text]),
            schema=DOCUMENT_SCHEMA,
        ),
        run.documents / "00009.parquet",
    )
    write_token_shards(run, CONFIG.model_copy(update={"validation_fraction": 0.0}), {})
    data = json.loads((run.manifest).read_text())
    ids = _read_shards(run.tokens, data)["x:1"]
    assert 0 not in ids and 1 not in ids
    assert load(run.tokenizer / "tokenizer.json").decode(ids) == text


def test_vocabulary_over_65536_is_stored_as_uint32(base: Path, tmp_path: Path) -> None:
    from training.manifest import load_manifest
    from training.shards import RowGroupCache, SplitIndex

    run = _copy(base, tmp_path / "run")
    tok = load(run.tokenizer / "tokenizer.json")
    tok.add_tokens([f"zqxtok{i}" for i in range(66_000)])
    assert tok.get_vocab_size() > 65_536
    tok.save(str(run.tokenizer / "tokenizer.json"))
    import pyarrow as pa

    from pipelines.stages.ingest import DOCUMENT_SCHEMA

    pq.write_table(
        pa.table(
            {
                "id": ["big:1"],
                "source": ["x"],
                "source_id": [None],
                "url": [None],
                "metadata": [None],
                "text": ["word zqxtok65999 word zqxtok3"],
            },
            schema=DOCUMENT_SCHEMA,
        ),
        run.documents / "00009.parquet",
    )
    write_token_shards(run, CONFIG.model_copy(update={"validation_fraction": 0.0}), {})
    data = json.loads((run.manifest).read_text())
    assert data["dtype"] == "uint32" and data["tokenizer"]["vocab_size"] == tok.get_vocab_size()
    shard = run.tokens / data["splits"]["train"]["shards"][-1]["path"]
    assert str(pq.read_schema(shard).field("input_ids").type) == "list<element: uint32>"
    ids = _read_shards(run.tokens, data)["big:1"]
    assert tok.token_to_id("zqxtok65999") in ids and max(ids) > 65_535
    index = SplitIndex(load_manifest(str(run.manifest)), "train")
    stream, _ = RowGroupCache(index).read(index.n_tokens - len(ids) - 1, index.n_tokens)
    assert stream.tolist() == [*ids, 0]


def _tokenize_cli(run: Path, env: dict[str, str] | None = None, **kwargs) -> subprocess.Popen:
    args = [
        str(GRISTMILL), "tokenize", "--output", str(run), "--workers", kwargs.pop("workers", "1"),
        "--set", f"tokenize.validation_fraction={VALIDATION}",
        "--set", f"tokenize.shard_target_tokens={CONFIG.shard_target_tokens}",
        "--set", f"tokenize.row_group_rows={CONFIG.row_group_rows}",
        "--set", f"tokenize.row_group_tokens={CONFIG.row_group_tokens}",
    ]  # fmt: skip
    return subprocess.Popen(
        args,
        cwd=run.parent,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_killed_tokenize_resumes_to_identical_bytes(base: Path, tmp_path: Path) -> None:
    whole = _copy(base, tmp_path / "whole")
    crashed = _copy(base, tmp_path / "crashed")
    proc = _tokenize_cli(whole.root)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert "tokens/s" in out
    expected = _files(whole.tokens)
    shards = [n for n in expected if n.endswith(".parquet")]
    assert len(shards) >= 4 and "_manifest.json" in expected

    # one worker, a pause after each finished shard: kill the whole process group after the first
    proc = _tokenize_cli(crashed.root, env={"SLOW_SHARD_AFTER": "30", "PYTHONPATH": str(SLOW_SHARDS)})
    deadline = time.time() + 120
    while not list(crashed.tokens.glob("*.parquet")):
        assert proc.poll() is None and time.time() < deadline, "no shard was finished"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    survived = _files(crashed.tokens)
    done = [n for n in survived if n.endswith(".parquet")]
    assert "_manifest.json" not in survived and 1 <= len(done) < len(shards)
    assert crashed.record.stage_status("tokenize") == "running"
    mtimes = {n: (crashed.tokens / n).stat().st_mtime_ns for n in done}

    proc = _tokenize_cli(crashed.root, workers="2")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert "resuming" in err
    assert {n: (crashed.tokens / n).stat().st_mtime_ns for n in done} == mtimes  # not redone
    assert _files(crashed.tokens) == expected  # every shard, the plan and the manifest, byte for byte
