"""Training logs (training/logs.py): metrics and trace of an S3 output uploaded as parts, the resume
that drops an abandoned run's records, the profiler window, and shard verification spread over
ranks. S3 is the loopback server of tests/conftest.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from s3_server import aws_env, create_bucket
from token_shards import TEXT, build_token_run

from training import storage
from training.checkpoint import CheckpointStore
from training.logs import JsonlLog, RunLogs, load_metrics, read_jsonl
from training.train import main as train_main

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def s3(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    for key, value in aws_env(s3_server).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(storage, "_client", None)
    create_bucket(s3_server, "logs")
    return s3_server


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not TEXT.is_file():
        pytest.skip(f"{TEXT} is not available")
    text = TEXT.read_text(encoding="utf-8")[:200_000]
    return build_token_run(tmp_path_factory.mktemp("logs"), text, lines_per_doc=40)


def test_a_log_uploads_only_its_new_lines(s3: str, tmp_path: Path) -> None:
    path, uri = tmp_path / "m.jsonl", "s3://logs/run/metrics.jsonl"
    log = JsonlLog(path, uri)
    lines = [json.dumps({"step": i, "x": "y" * 100}) + "\n" for i in range(6)]
    for batch in (lines[:2], lines[2:5], [], lines[5:]):
        with path.open("a") as fh:
            fh.writelines(batch)
        log.sync()
    parts = storage.list_files(f"{uri}.parts")
    assert parts == ["000001.jsonl", "000002.jsonl", "000003.jsonl"]  # nothing new, no part
    sizes = [storage.size(f"{uri}.parts/{p}") for p in parts]
    assert sizes == [len("".join(b).encode()) for b in (lines[:2], lines[2:5], lines[5:])]
    assert [r["step"] for r in read_jsonl(uri)] == list(range(6))
    log.finish()
    assert storage.list_files(f"{uri}.parts") == [] and storage.read_bytes(uri) == path.read_bytes()
    storage.write_bytes(f"{uri}.parts/000009.jsonl", lines[5].encode())  # left by a crash after finish
    assert [r["step"] for r in read_jsonl(uri)] == list(range(6))  # each record once


def test_resume_drops_the_records_of_an_abandoned_s3_run(s3: str, tmp_path: Path) -> None:
    store = CheckpointStore("s3://logs/out", staging=tmp_path / "staging")
    logs = RunLogs(store, 0, 1, 0, trace=True)
    for step in range(1, 6):
        logs.metric({"type": "train", "step": step, "loss": 1.0 / step})
        logs.trace.write(step, [[0, step]], [[["train-00000.parquet", 0, 0, 0]]])
        if step % 2 == 0:
            logs.sync()  # checkpoints at steps 2 and 4; the process dies after step 5
    assert [r["step"] for r in load_metrics("s3://logs/out")] == [1, 2, 3, 4]
    shutil.rmtree(tmp_path / "staging")  # another machine resumes from step 4
    resumed = RunLogs(store, 0, 1, 4, trace=True)
    resumed.metric({"type": "train", "step": 5, "loss": 0.5})
    resumed.close()
    assert [(r["step"], r["loss"]) for r in load_metrics("s3://logs/out")][-2:] == [(4, 0.25), (5, 0.5)]
    files = storage.list_files("s3://logs/out")
    assert "metrics.jsonl" in files and not [f for f in files if "metrics.jsonl.parts" in f]
    assert "trace/from-000000/rank-00000.jsonl.parts/000002.jsonl" in files  # the first run's trace parts


def test_profiler_window_writes_a_chrome_trace(shards: Path, tmp_path: Path) -> None:
    output = tmp_path / "out"
    args = ["--data", str(shards), "--output", str(output), "--preset", "tiny", "--seq-len", "32",
            "--batch-size", "4", "--max-steps", "4", "--eval-every", "0", "--save-every", "0",
            "--profile-start", "1", "--profile-steps", "2"]  # fmt: skip
    assert train_main(args) == 0
    (trace,) = (output / "profile").iterdir()
    assert trace.name == "steps-000002-000003-rank-00000.json"
    events = json.loads(trace.read_text())["traceEvents"]
    assert any("_LinearCrossEntropy" in e.get("name", "") for e in events)
    assert [r["step"] for r in load_metrics(str(output)) if r["type"] == "train"] == [1, 4]


def test_shard_verification_is_spread_over_ranks_and_fails_on_all(shards: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(shards.parent.parent, run)
    shard = run / "tokens" / "train-00001.parquet"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other bytes: only hashing notices
    shard.write_bytes(bytes(data))
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env["PYTHONPATH"] = str(REPO)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "training.train", "--data", str(run / "tokens" / "manifest.json"),
               "--output", str(tmp_path / "out"), "--preset", "tiny", "--seq-len", "32", "--batch-size", "4",
               "--max-steps", "2", "--verify-shards", "--dist-timeout-s", "60"]  # fmt: skip
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode != 0
    for rank in (0, 1):  # rank 1 hashed the corrupt shard; both ranks stop with its name
        assert f"[rank {rank}] error: shard {shard} has sha256" in proc.stderr, proc.stderr[-3000:]
    assert not (tmp_path / "out" / "latest").exists()
