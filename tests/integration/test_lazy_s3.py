"""Lazy S3 runs: opening a run reads run.json and listings only, each stage's driver pulls what it plans
with, each shard task what it reads. Every request goes through the loopback proxy in front of the real
S3 server (moto), which records them.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from faulty_proxy import FaultyProxy
from s3_server import aws_env, create_bucket, upload_dir

from pipelines.config import RunConfig
from pipelines.io import s3 as storage
from pipelines.run import RunDir
from pipelines.stages import STAGES, run_stage

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data" / "sample"
BUCKET = "gristmill-lazy"
SETTINGS = {"tokenizer": {"vocab_size": 512}, "tokenize": {"shard_target_tokens": 20_000}}


@pytest.fixture
def s3_env(s3_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    create_bucket(s3_server, BUCKET)
    for key, value in aws_env(s3_server).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("GRISTMILL_CACHE_DIR", str(tmp_path / "cache-a"))
    storage.reset_client()
    yield s3_server
    storage.reset_client()


def _config(inputs: str) -> RunConfig:
    return RunConfig.model_validate({**SETTINGS, "inputs": [inputs], "executor": {"workers": 2}})


def _gets(proxy: FaultyProxy, folder: str, run: str = "resumed") -> list[str]:
    """Object GETs (not listings) under a folder of a run."""
    prefix = f"/{BUCKET}/runs/{run}/{folder}"
    return [path for method, path in proxy.seen if method == "GET" and path.startswith(prefix)]


def test_a_resumed_run_fetches_only_what_tokenize_and_the_report_read(
    s3_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("spam.jsonl.zst", "udhr.jsonl.zst"):
        shutil.copy(SAMPLE / name, inputs / name)
    upload_dir(s3_env, inputs, BUCKET, "inputs")
    config = _config(f"s3://{BUCKET}/inputs/")
    run = RunDir(f"s3://{BUCKET}/runs/resumed").pull().create()
    run.start("resumed", config.model_dump(mode="json"), config.inputs)
    for stage in ("ingest", "signals", "dedup", "tokenizer"):
        run_stage(run, stage, config)

    # another machine (an empty cache) resumes the run through the proxy, as the flow does
    monkeypatch.setenv("GRISTMILL_CACHE_DIR", str(tmp_path / "cache-b"))
    with FaultyProxy(s3_env, rate=0.0) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        storage.reset_client()
        again = RunDir(f"s3://{BUCKET}/runs/resumed").pull().create()
        opening = list(proxy.seen)
        assert [p for m, p in opening if m == "GET" and "list-type" not in p] == [
            f"/{BUCKET}/runs/resumed/run.json"
        ]
        assert again.root != run.root and not any(again.documents.glob("*.parquet"))
        for stage in STAGES:
            run_stage(again, stage.name, config, skip_done=True)
    storage.reset_client()
    assert again.record.stage_status("tokenize") == "done" and again.record.stage_status("report") == "done"
    assert _gets(proxy, "documents/") == []
    assert _gets(proxy, "quarantine/") and _gets(proxy, "clean/") and _gets(proxy, "tokenizer/")
    assert _gets(proxy, "dedup/signatures/") == [] and _gets(proxy, "dedup/bands/") == []
    assert not any(again.documents.glob("0*.parquet"))
    manifest = again.manifest.read_text()
    assert '"documents"' in manifest and (again.report / "report.html").exists()


def test_a_stage_on_a_fresh_machine_fetches_its_shards_inputs_only(
    s3_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The signals stage of a run ingested elsewhere: each shard task GETs its documents/ shard, the
    driver none of them."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("spam.jsonl.zst", "udhr.jsonl.zst", "web.jsonl.zst"):
        shutil.copy(SAMPLE / name, inputs / name)
    config = _config(str(inputs))
    run = RunDir(f"s3://{BUCKET}/runs/fresh").pull().create()
    run.start("fresh", config.model_dump(mode="json"), config.inputs)
    run_stage(run, "ingest", config)
    monkeypatch.setenv("GRISTMILL_CACHE_DIR", str(tmp_path / "cache-b"))
    with FaultyProxy(s3_env, rate=0.0) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        storage.reset_client()
        again = RunDir(f"s3://{BUCKET}/runs/fresh").pull().create()
        run_stage(again, "signals", config)
    storage.reset_client()
    expected = [f"documents/{i:05d}.parquet" for i in range(3)]
    assert sorted(_gets(proxy, "documents/", "fresh")) == sorted(
        f"/{BUCKET}/runs/fresh/{rel}" for rel in expected
    )
    assert _gets(proxy, "quarantine/", "fresh") == [] and _gets(proxy, "clean/", "fresh") == []
    rows = sum(pq.read_metadata(again.documents / f"{i:05d}.parquet").num_rows for i in range(3))
    assert pq.read_table(again.signals, columns=["keep"]).num_rows == rows
    assert again.policy.exists()
