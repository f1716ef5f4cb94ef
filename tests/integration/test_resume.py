"""The same corpus, byte for byte, however the build went: SIGKILLed mid-stage and resumed, or on Ray.

Every run here builds the same input folder (run.json and the manifest name inputs by absolute path) with
the same flags, each in its own working directory with a relative `runs/` (so the configs, and the
manifests' lineage hashes, are the same), and compares its outputs with one uninterrupted local run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect_server import prefect_server
from ray_cluster import ray_head
from run_outputs import run_outputs

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
GRISTMILL = BIN / "gristmill"
SAMPLE = REPO / "data" / "sample"
RUN = ["run", "--output", "runs", "--run-id", "r", "--workers", "2"]
SETTINGS = ["--set", "tokenizer.vocab_size=512"]
SLOW_SHARDS = {
    "SLOW_SHARD_BEFORE": "1.0",
    "PYTHONPATH": os.pathsep.join(
        p for p in (str(REPO / "tests" / "support" / "slow_shards"), os.environ.get("PYTHONPATH")) if p
    ),
}
N_SHARDS = 4  # spam, udhr, and the WARC and WET files of cc/


def _workdir(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    return root


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """`--input` of every build here: one folder of the sample's files."""
    folder = tmp_path_factory.mktemp("shared") / "in"
    folder.mkdir()
    for name in ("spam.jsonl.zst", "udhr.jsonl.zst"):
        shutil.copy(SAMPLE / name, folder / name)
    shutil.copytree(SAMPLE / "cc", folder / "cc")
    return ["--input", str(folder)]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """One Prefect server for every run here (instead of an ephemeral API started by each run)."""
    with prefect_server(tmp_path_factory.mktemp("prefect-home")) as (_, env):
        yield env


def _gristmill(
    work: Path, env: dict[str, str], inputs: list[str], *args: str
) -> subprocess.CompletedProcess[str]:
    try:
        result = subprocess.run(
            [str(GRISTMILL), *RUN, *inputs, *SETTINGS, *args],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"gristmill run timed out:\n{exc.stdout}\n{str(exc.stderr)[-8000:]}") from exc
    assert result.returncode == 0, f"gristmill run failed:\n{result.stdout}\n{result.stderr[-5000:]}"
    return result


def _outputs(run: Path) -> dict[str, bytes]:
    found = run_outputs(run)
    assert sum(name.startswith("tokens/train-") for name in found) >= 1
    assert sum(name.startswith("signals/0") for name in found) == N_SHARDS
    return found


def _assert_identical(run: Path, baseline: Path) -> None:
    got, want = _outputs(run), _outputs(baseline)
    assert sorted(got) == sorted(want)
    different = [name for name in want if got[name] != want[name]]
    assert not different, f"differ from the uninterrupted run: {different}"


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory, server: dict[str, str], inputs: list[str]) -> Path:
    """One uninterrupted local run."""
    work = _workdir(tmp_path_factory.mktemp("baseline"))
    _gristmill(work, server, inputs)
    return work / "runs" / "r"


def _stage_status(run: Path, stage: str) -> str | None:
    try:
        return json.loads((run / "run.json").read_text())["stages"][stage]["status"]
    except (OSError, KeyError, ValueError):
        return None


def _kill_mid_stage(
    work: Path, env: dict[str, str], inputs: list[str], stage: str, marker: str, log: Path
) -> int:
    """Start `gristmill run`, SIGKILL its whole process group once `stage` is running with some but not
    all shards done; return how many were done."""
    run = work / "runs" / "r"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(GRISTMILL), *RUN, *inputs, *SETTINGS],
            cwd=work,
            env={**env, **SLOW_SHARDS},  # each shard waits 1 s before it starts
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the CLI and its pool workers
        )
        try:
            deadline = time.monotonic() + 240
            while True:
                assert proc.poll() is None, (
                    f"the run ended before {stage} could be interrupted:\n" + (log.read_text()[-3000:])
                )
                assert time.monotonic() < deadline, "timed out waiting for the stage"
                done = len(list(run.glob(marker)))
                if _stage_status(run, stage) == "running" and 1 <= done < N_SHARDS:
                    break
                time.sleep(0.05)
            os.killpg(proc.pid, signal.SIGKILL)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    # count again now that nothing runs: a shard may have finished between the check and the kill
    done = len(list(run.glob(marker)))
    assert 1 <= done < N_SHARDS, f"{stage} was not interrupted mid-way ({done} of {N_SHARDS} shards done)"
    return done


def test_killed_run_resumes_to_identical_outputs(
    baseline: Path, server: dict[str, str], inputs: list[str], tmp_path: Path
) -> None:
    work = _workdir(tmp_path / "killed")
    run = work / "runs" / "r"

    # 1: killed in signals, some shards written
    done = _kill_mid_stage(work, server, inputs, "signals", "signals/0*.parquet", tmp_path / "first.log")
    assert _stage_status(run, "ingest") == "done" and _stage_status(run, "signals") == "running"
    # what a kill in the middle of writing a shard leaves behind: a partial temp file
    pending = sorted(set(range(N_SHARDS)) - {int(p.stem) for p in run.glob("signals/0*.parquet")})
    (run / "signals" / f".{pending[0]:05d}.parquet.tmp").write_bytes(b"PAR1 partial")

    # 2: resumes signals from its finished shards, then killed in dedup
    _kill_mid_stage(work, server, inputs, "dedup", "dedup/signatures/*.parquet", tmp_path / "second.log")
    second = (tmp_path / "second.log").read_text()
    assert "ingest: already done in an earlier attempt, skipping" in second
    assert f"signals: {done} of {N_SHARDS} shards already done, resuming" in second
    assert _stage_status(run, "signals") == "done" and _stage_status(run, "dedup") == "running"

    # 3: runs to the end
    third = _gristmill(work, server, inputs)
    assert "of 4 shards already done, resuming" in third.stderr
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "done"
    assert all(stage["status"] == "done" for stage in record["stages"].values())
    _assert_identical(run, baseline)


# ---------------------------------------------------------------------------------------------- Ray


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """A real one-node Ray cluster (`ray start --head`) in its own processes, on a temp dir."""
    pytest.importorskip("ray")
    with ray_head() as address:
        yield address


def test_ray_executor_gives_identical_outputs(
    baseline: Path, server: dict[str, str], inputs: list[str], ray_cluster: str, tmp_path: Path
) -> None:
    work = _workdir(tmp_path / "ray")
    ray = ["--set", "executor.kind=ray", "--set", f"executor.address={ray_cluster}"]
    result = _gristmill(work, server, inputs, *ray)
    assert f"Ray: connected to {ray_cluster}" in result.stderr
    assert "signals: 4 shards on Ray" in result.stderr
    _assert_identical(work / "runs" / "r", baseline)
