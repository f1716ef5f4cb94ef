"""Runs on S3, against a real S3 server (moto's, on loopback) and through a fault-injecting proxy.

- storage: multipart upload, download and checksum verification, transfers under injected faults, a
  corrupted upload detected; a crash mid-stage keeps finished shards and resumes on another machine;
- `gristmill run --input s3://... --output s3://...`, what-if and `gristmill tokenize` on the S3 run,
  all while the proxy injects 500s, 503 SlowDowns, dropped connections and cut responses: every output
  on S3, the manifest's shards present and checksum-valid, no stray objects, and documents, signals and
  token shards equal to a local run of the same files;
- no credential in run.json, the report or the logs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from faulty_proxy import FaultyProxy
from gristmill_cli import gristmill
from s3_server import aws_env, client, create_bucket, upload_dir
from stage_helpers import build, run_stages

from pipelines.io import s3 as storage

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data" / "sample"
BUCKET = "gristmill-test"
SECRET = "gristmill-test-SECRET-wJalrXUtnFEMIK7MDENGbPxRfiCY"  # distinctive: must never be written out
E2E_FILES = ("spam.jsonl.zst", "udhr.jsonl.zst", "cc")
KEEP_ALL = "language: {allow: null, min_confidence: 0.0}\nrules: []\n"  # a policy that keeps everything
RUN_ARGS = (
    "--set",
    "tokenizer.vocab_size=1024",
    "--set",
    "tokenize.shard_target_tokens=20000",
    "--set",
    "tokenize.row_group_rows=64",
    "--workers",
    "2",
)


def _env(endpoint: str, cache: Path, **extra: str) -> dict[str, str]:
    return {
        **aws_env(endpoint),
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "GRISTMILL_CACHE_DIR": str(cache),
        **extra,
    }


@pytest.fixture
def s3_env(s3_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """This process's boto3 pointed at moto, with a fresh cache; yields the endpoint."""
    create_bucket(s3_server, BUCKET)
    for key, value in _env(s3_server, tmp_path / "cache", GRISTMILL_S3_MULTIPART_MB="5").items():
        monkeypatch.setenv(key, value)
    storage.reset_client()
    yield s3_server
    storage.reset_client()


def _objects(endpoint: str, prefix: str) -> dict[str, int]:
    pages = client(endpoint).get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return {o["Key"][len(prefix) :]: o["Size"] for page in pages for o in page.get("Contents", [])}


def _get(endpoint: str, key: str) -> bytes:
    return client(endpoint).get_object(Bucket=BUCKET, Key=key)["Body"].read()


# ------------------------------------------------------------------------------------------ storage


def test_multipart_upload_download_and_checksums(s3_env: str, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(11 * 1024 * 1024 + 123))  # 5 MiB parts: 3 parts
    uri = storage.S3Uri.parse(f"s3://{BUCKET}/unit/big.bin")
    info = storage.upload(big, uri, {"gristmill-retention": "intermediate"})
    assert info["ETag"].strip('"').endswith("-3"), info["ETag"]  # really a multipart upload
    assert info["Metadata"][storage.SHA256_METADATA] == storage.file_sha256(big)
    assert info["ChecksumSHA256"].split("-")[0] == storage.expected_checksum(big, big.stat().st_size)
    tags = client(s3_env).get_object_tagging(Bucket=BUCKET, Key="unit/big.bin")["TagSet"]
    assert tags == [{"Key": "gristmill-retention", "Value": "intermediate"}]
    back = tmp_path / "back.bin"
    storage.download(uri, back)
    assert back.read_bytes() == big.read_bytes()

    small = tmp_path / "small.txt"
    small.write_text("hello")
    info = storage.upload(small, storage.S3Uri(BUCKET, "unit/small.txt"))
    assert "-" not in info["ETag"].strip('"')  # one PUT
    assert storage.head(storage.S3Uri(BUCKET, "unit/missing")) is None
    assert [o.key for o in storage.list_objects(storage.S3Uri(BUCKET, "unit/"))] == [
        "unit/big.bin",
        "unit/small.txt",
    ]


def test_transfers_survive_injected_faults(
    s3_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data.bin"
    data.write_bytes(os.urandom(11 * 1024 * 1024))
    with FaultyProxy(s3_env, rate=0.25, seed=7) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        storage.reset_client()
        for i in range(3):
            uri = storage.S3Uri(BUCKET, f"faults/data-{i}.bin")
            storage.upload(data, uri)
            storage.download(uri, tmp_path / "back.bin")
            assert (tmp_path / "back.bin").read_bytes() == data.read_bytes()
    assert all(proxy.counts[kind] > 0 for kind in ("503", "500", "drop", "cut")), proxy.counts
    assert sorted(_objects(s3_env, "faults/")) == [f"data-{i}.bin" for i in range(3)]


@pytest.mark.parametrize("size", [1000, 11 * 1024 * 1024], ids=["single-put", "multipart"])
def test_corrupted_upload_is_detected(
    s3_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    """The proxy flips a byte of an uploaded body and fixes up its checksum header, so the server stores
    other bytes under a consistent checksum; the check against the local file must catch it."""
    path = tmp_path / "file.bin"
    path.write_bytes(os.urandom(size))
    key = f"corrupt/{size}.bin"
    with FaultyProxy(s3_env, rate=0.0, corrupt_puts=1) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        storage.reset_client()
        storage.upload(path, storage.S3Uri(BUCKET, key))  # detected, uploaded again
    assert proxy.counts["corrupted"] == 1
    assert _get(s3_env, key) == path.read_bytes()
    with FaultyProxy(s3_env, rate=0.0, corrupt_puts=10**6) as proxy:  # every upload corrupted
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        storage.reset_client()
        with pytest.raises(storage.ChecksumMismatch, match="after a re-upload"):
            storage.upload(path, storage.S3Uri(BUCKET, key + ".2"))


def test_s3_inputs_are_named_like_local_folders(s3_env: str, tmp_path: Path) -> None:
    from pipelines.io.inputs import list_inputs

    folder = tmp_path / "crawl"
    for rel in ("b.jsonl", "a/z.jsonl", "a/y.txt", "README.md", "LICENSE", ".hidden/x.jsonl", "a/.x.jsonl"):
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text('{"text": "x"}\n')
    upload_dir(s3_env, folder, BUCKET, "inputs/listing/crawl")
    client(s3_env).put_object(Bucket=BUCKET, Key="inputs/listing/crawl/a/", Body=b"")  # a console "folder"
    local = [source for _, source in list_inputs([str(folder)])]
    remote = list_inputs([f"s3://{BUCKET}/inputs/listing/crawl"])
    assert [source for _, source in remote] == local == ["crawl/a/y.txt", "crawl/a/z.jsonl", "crawl/b.jsonl"]
    assert remote[0][0] == f"s3://{BUCKET}/inputs/listing/crawl/a/y.txt"
    assert list_inputs([f"s3://{BUCKET}/inputs/listing/crawl/b.jsonl"]) == [
        (f"s3://{BUCKET}/inputs/listing/crawl/b.jsonl", "crawl/b.jsonl")
    ]
    with pytest.raises(ValueError, match="does not exist"):
        list_inputs([f"s3://{BUCKET}/inputs/listing/nothing/"])


def test_credentials_are_scrubbed_from_run_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines.run import RunDir

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    run = RunDir(tmp_path / "run").create()
    run.start("r", {"output": f"s3://{BUCKET}/runs", "note": "aws_secret_access_key=abc123"}, [])
    with pytest.raises(RuntimeError), run.stage("ingest"):
        raise RuntimeError(f"boom with {SECRET} and http://user:pa55word@example.com/x")
    text = run.run_json.read_text()
    assert SECRET not in text and "abc123" not in text and "pa55word" not in text
    assert "http://***@example.com/x" in text


def test_crash_mid_stage_keeps_finished_shards_and_resumes_elsewhere(
    s3_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shard that fails does not lose the others: they are on S3 as soon as they finish, and a new
    machine (an empty cache) resumes the stage running only the missing shard."""
    from pipelines.run import RunDir
    from pipelines.stages import ingest

    folder = tmp_path / "crash"
    folder.mkdir()
    for name in "abc":
        (folder / f"{name}.jsonl").write_text(json.dumps({"text": f"document {name} " * 30}) + "\n")
    upload_dir(s3_env, folder, BUCKET, "inputs/crash")
    inputs = [f"s3://{BUCKET}/inputs/crash/"]
    real_input = ingest.local_input

    def failing(path: str) -> str:
        if path.endswith("b.jsonl"):
            raise ConnectionError("the machine went away")
        return real_input(path)

    monkeypatch.setattr(ingest, "local_input", failing)
    run = RunDir(f"s3://{BUCKET}/runs/crash").create()
    run.start("crash", {}, inputs)
    with pytest.raises(RuntimeError, match="1 of 3 shards failed"):
        run_stages(run, "ingest", inputs=inputs, workers=1)
    remote = _objects(s3_env, "runs/crash/")  # the splits read so far: their parts, each marker last
    parts = [f"documents/_parts/{stem}.{ext}" for stem in ("00000", "00002") for ext in ("json", "parquet")]
    assert set(parts) <= set(remote) and "documents/_parts/00001.json" not in remote
    assert json.loads(_get(s3_env, "runs/crash/run.json"))["stages"]["ingest"]["status"] == "failed"

    monkeypatch.setattr(ingest, "local_input", real_input)
    monkeypatch.setenv("GRISTMILL_CACHE_DIR", str(tmp_path / "other-machine"))
    ran: list[int] = []
    real_process = ingest.SplitStep.process
    monkeypatch.setattr(ingest.SplitStep, "process", lambda self, i: ran.append(i) or real_process(self, i))
    again = RunDir(f"s3://{BUCKET}/runs/crash").pull()
    assert again.root != run.root and again.record.stage_status("ingest") == "failed"
    summary = run_stages(again, "ingest", inputs=inputs, workers=1)
    assert ran == [1] and summary["documents"] == 3
    assert json.loads(_get(s3_env, "runs/crash/run.json"))["stages"]["ingest"]["status"] == "done"
    remote = _objects(s3_env, "runs/crash/")
    assert {f"documents/0000{i}.parquet" for i in range(3)} <= set(remote)
    assert not any(rel.startswith("documents/_parts/") for rel in remote)  # deleted once the shards exist


# ------------------------------------------------------------------------------------------ corpus build


@pytest.fixture(scope="module")
def e2e(s3_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """`gristmill run` from s3:// inputs to an s3:// run, then `gristmill report --policy` (what-if) and
    `gristmill tokenize` again on it, all through a proxy injecting 500s, 503 SlowDowns, dropped
    connections and cut responses; and the same build locally (stage functions)."""
    work = tmp_path_factory.mktemp("s3e2e")
    inputs = work / "sample"
    inputs.mkdir()
    for name in E2E_FILES:
        src = SAMPLE / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, inputs / name)
    create_bucket(s3_server, BUCKET)
    upload_dir(s3_server, inputs, BUCKET, "inputs/sample")
    policy = work / "keepall.yaml"  # every document kept: real work for dedup and several token shards
    policy.write_text(KEEP_ALL)
    run_uri = f"s3://{BUCKET}/runs/e2e"
    with FaultyProxy(s3_server, rate=0.08, seed=1234) as proxy:
        env = _env(
            proxy.url, work / "cache", PREFECT_HOME=str(work / "prefect"), GRISTMILL_S3_MULTIPART_MB="5"
        )
        run = gristmill(
            "run",
            "--input",
            f"s3://{BUCKET}/inputs/sample/",
            "--output",
            f"s3://{BUCKET}/runs",
            "--run-id",
            "e2e",
            "--policy",
            str(policy),
            *RUN_ARGS,
            env=env,
            cwd=work,
        )
        first_manifest = _get(s3_server, "runs/e2e/tokens/_manifest.json")
        default_policy = REPO / "pipelines" / "resources" / "policy.yaml"
        whatif = gristmill("report", run_uri, "--policy", str(default_policy), env=env, cwd=work)
        tokenize = gristmill("tokenize", "--output", run_uri, *RUN_ARGS, env=env, cwd=work)
    local = _local_build(inputs, policy, work / "local")
    yield {
        "work": work,
        "env": env,
        "local": local,
        "faults": proxy.counts,
        "first_manifest": first_manifest,
        "logs": [r.stdout for r in (run, whatif, tokenize)] + [r.stderr for r in (run, whatif, tokenize)],
    }


def _local_build(inputs: Path, policy: Path, root: Path) -> Path:
    """The same corpus build on a local folder, through the stage functions `gristmill run` calls."""
    from flows.config import load_config
    from pipelines.run import RunDir

    overrides = dict(a.split("=", 1) for a in RUN_ARGS[1:-2:2])
    cfg = load_config(
        None,
        {k: int(v) for k, v in overrides.items()}
        | {"inputs": [str(inputs)], "signals.policy": str(policy), "executor.workers": 2},
    )
    run = RunDir(root).create()
    run.start("e2e", cfg.model_dump(mode="json"), cfg.inputs)
    build(run, cfg, "ingest", "signals", "dedup", "tokenizer", "tokenize")
    return root


def test_s3_run_writes_every_output_to_s3(e2e: dict[str, Any], s3_server: str) -> None:
    objects = _objects(s3_server, "runs/e2e/")
    for rel in (
        "run.json",
        "report/report.html",
        "report/report.json",
        "report/report.md",
        "tokens/_manifest.json",
    ):
        assert rel in objects, rel
    assert "report/whatif-policy.html" in objects  # what-if on an S3 run
    assert not [
        k for k in objects if any(part.startswith(".") for part in k.split("/"))
    ]  # no temp/state files
    record = json.loads(_get(s3_server, "runs/e2e/run.json"))
    assert record["status"] == "done" and all(s["status"] == "done" for s in record["stages"].values())
    assert record["storage"]["uri"] == f"s3://{BUCKET}/runs/e2e"
    # intermediate data is tagged for the lifecycle rule, the corpus is not
    s3 = client(s3_server)
    tags = s3.get_object_tagging(Bucket=BUCKET, Key="runs/e2e/documents/00000.parquet")["TagSet"]
    assert tags == [{"Key": "gristmill-retention", "Value": "intermediate"}]
    assert s3.get_object_tagging(Bucket=BUCKET, Key="runs/e2e/tokens/_manifest.json")["TagSet"] == []
    assert s3.get_object_tagging(Bucket=BUCKET, Key="runs/e2e/signals/00000.parquet")["TagSet"] == []


def test_manifest_shards_exist_with_their_checksums(e2e: dict[str, Any], s3_server: str) -> None:
    _assert_manifest_complete(s3_server, "runs/e2e/")


def _assert_manifest_complete(endpoint: str, prefix: str) -> dict[str, Any]:
    manifest = json.loads(_get(endpoint, f"{prefix}tokens/_manifest.json"))
    listed = {shard["path"]: shard for split in manifest["splits"].values() for shard in split["shards"]}
    assert len(listed) >= 2
    for name, shard in listed.items():
        data = _get(endpoint, f"{prefix}tokens/{name}")
        assert len(data) == shard["bytes"] and hashlib.sha256(data).hexdigest() == shard["sha256"], name
    on_s3 = {name for name in _objects(endpoint, f"{prefix}tokens/") if not name.startswith("_")}
    assert on_s3 == set(listed)  # no partial or unlisted shard (`_*`: stage metadata and the manifest)
    return manifest


def test_s3_run_equals_local_run(e2e: dict[str, Any], s3_server: str) -> None:
    local: Path = e2e["local"]
    prefix = "runs/e2e/"
    objects = _objects(s3_server, prefix)
    for folder, columns in (("documents", None), ("signals", None), ("clean", None)):
        names = sorted(p.name for p in (local / folder).glob("[0-9]*.parquet"))
        assert names and names == sorted(k.split("/")[-1] for k in objects if k.startswith(f"{folder}/0"))
        for name in names:
            remote = e2e["work"] / "remote.parquet"
            remote.write_bytes(_get(s3_server, f"{prefix}{folder}/{name}"))
            assert pq.read_table(remote, columns=columns).equals(pq.read_table(local / folder / name)), name
    remote_manifest = json.loads(_get(s3_server, f"{prefix}tokens/_manifest.json"))
    local_manifest = json.loads((local / "tokens" / "_manifest.json").read_text())
    assert remote_manifest["lineage"]["run_id"] == local_manifest["lineage"]["run_id"] == "e2e"
    for manifest in (remote_manifest, local_manifest):
        manifest.pop("lineage")  # the inputs' URIs differ (s3:// vs a folder), and the config hash with them
    assert remote_manifest == local_manifest  # same shards, sizes and sha256s: byte-identical token shards
    for split in local_manifest["splits"].values():
        for shard in split["shards"]:
            assert (
                _get(s3_server, f"{prefix}tokens/{shard['path']}")
                == (local / "tokens" / shard["path"]).read_bytes()
            )


def test_s3_run_resumes_on_a_new_machine(e2e: dict[str, Any], s3_env: str, tmp_path: Path) -> None:
    """Opening the run with an empty cache reads run.json; pulling it all brings every file."""
    from pipelines.run import RunDir

    run = RunDir(f"s3://{BUCKET}/runs/e2e").pull()
    assert {p.relative_to(run.root).as_posix() for p in storage.iter_files(run.root)} == {"run.json"}
    run.pull_all()
    assert run.root.is_relative_to(tmp_path / "cache")
    assert run.record.load()["status"] == "done"
    local = {p.relative_to(run.root).as_posix() for p in storage.iter_files(run.root)}
    assert local == set(_objects(s3_env, "runs/e2e/"))
    assert (run.manifest).read_bytes() == _get(s3_env, "runs/e2e/tokens/_manifest.json")


def test_no_credentials_in_outputs_or_logs(e2e: dict[str, Any], s3_server: str) -> None:
    texts = list(e2e["logs"])
    texts += [
        _get(s3_server, f"runs/e2e/{rel}").decode()
        for rel in _objects(s3_server, "runs/e2e/")
        if rel == "run.json" or rel.startswith("report/report.") or rel.endswith(".json")
    ]
    mirror = Path(e2e["env"]["GRISTMILL_CACHE_DIR"])
    texts += [p.read_text(errors="replace") for p in mirror.rglob("*.json")]
    texts += [p.read_text(errors="replace") for p in mirror.rglob("*.md")]
    assert len(texts) > 10
    assert not [t[:200] for t in texts if SECRET in t]


# ------------------------------------------------------------------------------------------ faults


def test_faults_were_injected_and_the_run_still_completed(e2e: dict[str, Any], s3_server: str) -> None:
    faults = e2e["faults"]
    assert all(faults[kind] > 0 for kind in ("503", "500", "drop", "cut")), faults
    record = json.loads(_get(s3_server, "runs/e2e/run.json"))
    assert {s: v["status"] for s, v in record["stages"].items()} == dict.fromkeys(
        ("ingest", "signals", "dedup", "tokenizer", "tokenize", "report"), "done"
    )


def test_tokenize_again_on_s3_republishes_the_same_manifest(e2e: dict[str, Any], s3_server: str) -> None:
    """`gristmill tokenize` on the S3 run deletes the remote manifest, rewrites the shards and publishes
    the manifest again after them: the same bytes, every shard listed and valid."""
    assert _get(s3_server, "runs/e2e/tokens/_manifest.json") == e2e["first_manifest"]
    _assert_manifest_complete(s3_server, "runs/e2e/")
