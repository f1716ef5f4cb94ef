"""S3 runs whose shards run on other machines (a multi-node Ray cluster), against moto's S3 server.

A second node is played by processes with another `GRISTMILL_NODE_ID` and their own, empty
`GRISTMILL_CACHE_DIR`: they share no file with the driver, only the bucket. Each builds the same corpus
as a local run of the same S3 inputs and must give the same bytes:

- shards split between the driver's node (in-process) and a second-node process, stage by stage;
- every shard on a real `ray start --head` cluster whose workers are another node.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ray_cluster import ray_head
from run_outputs import run_outputs
from s3_server import aws_env, client, create_bucket, upload_dir
from stage_helpers import build, run_stages

from pipelines.exec import runner
from pipelines.io import s3 as storage
from pipelines.run import RunDir
from pipelines.run.mirror import NODE_ID_ENV, RemoteRun

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data" / "sample"
BUCKET = "gristmill-ray"
INPUTS = f"s3://{BUCKET}/inputs/sample/"
KEEP_ALL = "language: {allow: null, min_confidence: 0.0}\nrules: []\n"
SETTINGS = {"tokenizer.vocab_size": 512, "tokenize.shard_target_tokens": 20000, "tokenize.row_group_rows": 64}
# A process playing another node: runs the pickled (wrapped) task's shards named on its command line.
OTHER_NODE = (
    "import pickle, sys\ntask = pickle.load(sys.stdin.buffer)\nfor i in sys.argv[1:]:\n    task(int(i))\n"
)


@pytest.fixture(scope="module")
def bucket(s3_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The inputs on S3; yields the environment of a process on the driver's node (its own cache)."""
    work = tmp_path_factory.mktemp("s3ray")
    inputs = work / "sample"
    inputs.mkdir()
    shutil.copy(SAMPLE / "spam.jsonl.zst", inputs)
    shutil.copytree(SAMPLE / "cc", inputs / "cc")
    create_bucket(s3_server, BUCKET)
    upload_dir(s3_server, inputs, BUCKET, "inputs/sample")
    policy = work / "keepall.yaml"  # everything kept: several token shards and real dedup work
    policy.write_text(KEEP_ALL)
    yield {**aws_env(s3_server), "policy": str(policy), "work": str(work)}


@contextlib.contextmanager
def _driver(bucket: dict[str, str], cache: Path) -> Iterator[None]:
    """This process as the driver: boto3 at moto, its own cache, the host name as node id."""
    saved = dict(os.environ)
    os.environ.update({k: v for k, v in bucket.items() if k.startswith("AWS_")})
    os.environ["GRISTMILL_CACHE_DIR"] = str(cache)
    os.environ.pop(NODE_ID_ENV, None)
    storage.reset_client()
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
        storage.reset_client()


def _build(root: str, policy: str, workers: int = 1) -> RunDir:
    """A whole corpus build through the stage functions (what `gristmill run` calls)."""
    from flows.config import load_config

    overrides = {**SETTINGS, "inputs": [INPUTS], "signals.policy": policy, "executor.workers": workers}
    cfg = load_config(None, overrides)
    run = RunDir(root).pull().create()
    run.start("r", cfg.model_dump(mode="json"), cfg.inputs)
    build(run, cfg)
    return run


@pytest.fixture(scope="module")
def local(bucket: dict[str, str]) -> Path:
    """The same S3 inputs built into a local folder with the local executor."""
    work = Path(bucket["work"])
    with _driver(bucket, work / "local-cache"):
        return _build(str(work / "local-run"), bucket["policy"]).root


def _outputs(root: Path) -> dict[str, bytes]:
    found = run_outputs(root, ("report/_doc_tokens/*.parquet",))
    assert sum(name.startswith("documents/0") for name in found) == 3
    assert sum(name.startswith("tokens/") for name in found) >= 3  # at least 2 shards and the manifest
    return found


def _assert_same_build(endpoint: str, prefix: str, mirror: Path, local: Path) -> None:
    """The S3 run equals the local run byte for byte, and the driver's mirror holds only copies of its
    objects (what the driver read or wrote; not every shard the other node wrote)."""
    want = _outputs(local)
    s3 = client(endpoint)
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    objects = {o["Key"][len(prefix) :] for page in pages for o in page.get("Contents", [])}
    assert set(want) <= objects
    mirrored = {p.relative_to(mirror).as_posix() for p in storage.iter_files(mirror)}
    assert mirrored <= objects and "tokens/_manifest.json" in mirrored
    for rel in mirrored & set(want):
        assert (mirror / rel).read_bytes() == want[rel], rel
    for rel, data in want.items():
        assert s3.get_object(Bucket=BUCKET, Key=prefix + rel)["Body"].read() == data, rel
    record = json.loads(s3.get_object(Bucket=BUCKET, Key=prefix + "run.json")["Body"].read())
    assert {s: v["status"] for s, v in record["stages"].items()} == dict.fromkeys(
        ("ingest", "signals", "dedup", "tokenizer", "tokenize", "report"), "done"
    )


# ------------------------------------------------------------------------------- a second-node process


def test_shards_on_another_node_pull_their_inputs(
    bucket: dict[str, str], local: Path, s3_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every stage sends the first, third, ... shard to a process playing node B (empty cache of its
    own) and runs the others here; node B pulls what they read, runs them and uploads the outputs, and
    the driver pulls those before the stage goes on."""
    work = Path(bucket["work"])
    node_b_cache = work / "node-b-cache"
    node_b = {**os.environ, **{k: v for k, v in bucket.items() if k.startswith("AWS_")}}
    node_b.update({NODE_ID_ENV: "node-b", "GRISTMILL_CACHE_DIR": str(node_b_cache)})
    sent: dict[str, list[int]] = {}

    def two_nodes(name: str, task: Any, pending: list[int], workers: int, tracker: Any) -> dict[int, str]:
        there, here = pending[::2], pending[1::2]
        sent[name] = there
        for i in here:
            runner._call(task, i)
        if not there:
            return {}
        result = subprocess.run(
            [sys.executable, "-c", OTHER_NODE, *map(str, there)],
            input=pickle.dumps(task),
            env=node_b,
            capture_output=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr.decode()[-4000:]
        return {}

    def no_pull_on_the_driver(*args: Any) -> int:
        raise AssertionError("the driver's node pulled for a shard")

    monkeypatch.setattr(runner, "_run_local", two_nodes)
    monkeypatch.setattr(RemoteRun, "pull_once", no_pull_on_the_driver)
    with _driver(bucket, work / "driver-cache"):
        run = _build(f"s3://{BUCKET}/runs/two-nodes", bucket["policy"])
    assert sent == {
        "ingest splits": [0, 2],
        "ingest shards": [0, 2],
        "signals": [0, 2],
        "dedup signatures": [0, 2],
        "tokenize": sent["tokenize"],
        "report token counts": [0, 2],
    }
    assert len(sent["tokenize"]) >= 1
    _assert_same_build(s3_server, "runs/two-nodes/", run.root, local)

    # node B's mirror: what its shards read and wrote, nothing else: documents/00001 was written and read
    # on the driver only (ingest and signals shard 1), the report's token counts of shard 1 likewise
    mirror_b = node_b_cache / "s3" / BUCKET / "runs" / "two-nodes"
    assert mirror_b != run.root
    assert sorted(p.name for p in (mirror_b / "documents").glob("0*.parquet")) == [
        "00000.parquet",
        "00002.parquet",
    ]
    for folder in ("signals", "clean", "dedup/signatures"):
        assert {"00000.parquet", "00002.parquet"} <= {p.name for p in (mirror_b / folder).glob("0*.parquet")}
    assert not (mirror_b / "dedup" / "signatures" / "00001.parquet").exists()
    assert (mirror_b / "tokenizer" / "tokenizer.json").exists()
    assert (mirror_b / "tokens" / "_plan.json").exists()
    doc_tokens = sorted(p.name for p in (mirror_b / "report" / "_doc_tokens").glob("0*"))
    assert doc_tokens == ["00000.parquet", "00002.parquet"]
    assert not (mirror_b / "report" / "report.json").exists()


def test_another_node_with_the_same_cache_path_pulls_what_it_lacks(
    bucket: dict[str, str], tmp_path: Path
) -> None:
    """Node B with the mirror at the driver's path (`GRISTMILL_CACHE_DIR` the same on every node) but
    stale: an input missing, another changed on S3 since. Its shard pulls both, runs and uploads."""
    from pipelines.config import SignalsConfig
    from pipelines.stages.signals import SignalsStep

    with _driver(bucket, tmp_path / "cache"):
        run = RunDir(f"s3://{BUCKET}/runs/same-path").create()
        run.start("r", {}, [INPUTS])
        run_stages(run, "ingest", inputs=[INPUTS], workers=1)
        shutil.copy(bucket["policy"], run.policy)
        task = run.synced(SignalsStep(str(run.root), SignalsConfig(policy=bucket["policy"])))
        remote = run.remote
        assert remote is not None
        kept = (run.documents / "00000.parquet").read_bytes()
        (run.documents / "00000.parquet").unlink()  # this node never had it
        (run.documents / "00002.parquet").write_bytes(b"stale")  # an old copy, recorded as synced
        remote._record("documents/00002.parquet", run.documents / "00002.parquet", {"ETag": "old"})
        env = {**os.environ, NODE_ID_ENV: "node-b"}
        for index in (0, 2):
            result = subprocess.run(
                [sys.executable, "-c", OTHER_NODE, str(index)],
                input=pickle.dumps(task),
                env=env,
                capture_output=True,
                timeout=120,
            )
            assert result.returncode == 0, result.stderr.decode()[-4000:]
        assert (run.documents / "00000.parquet").read_bytes() == kept
        assert (run.documents / "00002.parquet").read_bytes() != b"stale"
        assert len(run.shards()) == 3 and (run.signals / "00002.parquet").exists()
        objects = {o.key[len(remote.uri.prefix) :] for o in storage.list_objects(remote.uri)}
        assert {"signals/00000.parquet", "signals/00002.parquet", "clean/00002.parquet"} <= objects
        assert "signals/00001.parquet" not in objects


def test_a_pull_keeps_a_file_uploaded_after_its_listing(
    bucket: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Worker processes of one node share its mirror: a pull that listed the run just before another
    process uploaded (and recorded) a file must not take that file for one deleted remotely."""
    with _driver(bucket, tmp_path / "cache"):
        remote = RemoteRun(f"s3://{BUCKET}/runs/race")
        path = remote.root / "signals" / "00000.parquet"
        path.parent.mkdir(parents=True)
        path.write_bytes(b"shard")
        real_list = storage.list_objects

        def listed_before_the_upload(uri: storage.S3Uri) -> list[storage.ObjectInfo]:
            objects = real_list(uri)
            remote.push_files([path])  # another process uploads and records the file now
            return objects

        monkeypatch.setattr(storage, "list_objects", listed_before_the_upload)
        assert remote.pull() == 0
        assert path.read_bytes() == b"shard" and remote._state("signals/00000.parquet") is not None
        monkeypatch.setattr(storage, "list_objects", real_list)
        storage.delete(remote.uri.join("signals/00000.parquet"))  # really gone now: the pull deletes it
        remote.pull()
        assert not path.exists() and remote._state("signals/00000.parquet") is None


# ------------------------------------------------------------------------------- Ray


@pytest.fixture(scope="module")
def ray_other_node(
    bucket: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """A real one-node Ray cluster (`ray start --head`) whose workers are another node: their own
    `GRISTMILL_NODE_ID` and an empty `GRISTMILL_CACHE_DIR`."""
    pytest.importorskip("ray")
    cache = tmp_path_factory.mktemp("ray-node-cache")
    env = {k: v for k, v in bucket.items() if k.startswith("AWS_")}
    env.update({NODE_ID_ENV: "ray-node", "GRISTMILL_CACHE_DIR": str(cache)})
    with ray_head(env) as address:
        yield {"address": address, "cache": str(cache)}


def test_ray_workers_on_another_node_build_the_same_corpus(
    bucket: dict[str, str], local: Path, s3_server: str, ray_other_node: dict[str, str]
) -> None:
    import ray

    work = Path(bucket["work"])
    previous = runner.configure("ray", ray_other_node["address"])
    try:
        with _driver(bucket, work / "ray-driver-cache"):
            run = _build(f"s3://{BUCKET}/runs/ray", bucket["policy"], workers=2)
    finally:
        runner.configure(previous.kind, previous.address)
        ray.shutdown()
    _assert_same_build(s3_server, "runs/ray/", run.root, local)
    mirror = Path(ray_other_node["cache"]) / "s3" / BUCKET / "runs" / "ray"
    assert mirror != run.root
    assert len(list((mirror / "documents").glob("0*.parquet"))) == 3  # pulled for signals
    assert len(list((mirror / "signals").glob("0*.parquet"))) == 3  # written there
    assert (mirror / "tokenizer" / "tokenizer.json").exists()  # pulled for tokenize
