"""Ctrl-C and SIGTERM, to the process group or to `gristmill run` alone: the workers stop, run.json
records the stage as interrupted, the command exits within 10 s with one line saying how to resume, and
that line's command (no --input) finishes the run with the same bytes as an uninterrupted one.

Runs without PREFECT_API_URL (the laptop case: stages in process). One run directory is interrupted four
times, once per kind of signal and target, each time in a later stage (the shards are slowed so each
stage runs long enough), then resumed to the end.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from run_outputs import run_outputs

REPO = Path(__file__).resolve().parents[2]
GRISTMILL = Path(sys.executable).parent / "gristmill"
SAMPLE = REPO / "data" / "sample"
SETTINGS = ["--workers", "2", "--set", "tokenizer.vocab_size=512"]
SLOW_SHARDS = {
    "SLOW_SHARD_BEFORE": "0.5",
    "GRISTMILL_PROGRESS_SECONDS": "0.2",  # plain progress lines (stderr is no terminal) every 0.2 s
    "PYTHONPATH": os.pathsep.join(
        p for p in (str(REPO / "tests" / "support" / "slow_shards"), os.environ.get("PYTHONPATH")) if p
    ),
}
EXIT_SECONDS = 10


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "SLOW_SHARD"))}
    return {**env, **extra}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One input folder for every run here (run.json and the manifest name it by its absolute path)."""
    folder = tmp_path_factory.mktemp("shared") / "in"
    folder.mkdir()
    for name in ("spam.jsonl.zst", "udhr.jsonl.zst"):
        shutil.copy(SAMPLE / name, folder / name)
    shutil.copytree(SAMPLE / "cc", folder / "cc")
    return folder


def _record(run: Path) -> dict:
    try:
        return json.loads((run / "run.json").read_text())
    except (OSError, ValueError):
        return {}


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory, inputs: Path) -> Path:
    work = tmp_path_factory.mktemp("uninterrupted")
    run = work / "runs" / "r"
    result = subprocess.run(
        [str(GRISTMILL), "run", "--input", str(inputs), "--run", str(run), *SETTINGS],
        env=_env(GRISTMILL_PROGRESS="bar"), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Prefect" not in result.stderr
    # the bar of every stage with shards: k of N, rates; "ingest shards" is ingest's second pass
    for stage in ("ingest shards", "signals", "dedup signatures", "tokenize", "report token counts"):
        assert re.search(rf"{stage}: 100%\|[^\n]*\| (\d+)/\1 shards, [\d,]+ documents, [\d,]+ docs/s",
                         result.stderr), (stage, result.stderr[-3000:])  # fmt: skip
    return run


def _mid_stage(run: Path, stage: str, marker: str) -> bool:
    """`stage` runs and has finished at least one shard (so others are in flight on the workers)."""
    status = _record(run).get("stages", {}).get(stage, {}).get("status")
    return status == "running" and any(run.glob(marker))


def _interrupt(
    command: list[str], run: Path, stage: str, marker: str, signum: int, group: bool, log: Path
) -> tuple[int, float]:
    """Start `command`, send `signum` in the middle of `stage`, return the exit status and the seconds
    it took to exit."""
    with log.open("w") as out:
        proc = subprocess.Popen(command, env=_env(**SLOW_SHARDS), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
        try:
            deadline = time.monotonic() + 240
            while not _mid_stage(run, stage, marker):
                assert proc.poll() is None, f"ended before {stage} ran:\n{log.read_text()[-3000:]}"
                assert time.monotonic() < deadline, f"{stage} never ran"
                time.sleep(0.05)
            sent = time.monotonic()
            (os.killpg if group else os.kill)(proc.pid, signum)
            proc.wait(timeout=60)
            seconds = time.monotonic() - sent
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    _assert_group_gone(proc.pid)
    return proc.returncode, seconds


def _assert_group_gone(group: int) -> None:
    """No worker outlives the command (an orphan may take a moment to be reaped)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    left = subprocess.run(["ps", "-o", "pid,stat,args", "-g", str(group)], capture_output=True, text=True)
    raise AssertionError(f"processes of the command's group are still alive:\n{left.stdout}")


CASES = [  # (stage, its shards' completion markers, signal, to the whole group?)
    ("ingest", "documents/0*.parquet", signal.SIGINT, True),
    ("signals", "signals/0*.parquet", signal.SIGTERM, False),
    ("dedup", "dedup/signatures/0*.parquet", signal.SIGINT, False),
    ("report", "report/_doc_tokens/0*.parquet", signal.SIGTERM, True),
]


def test_interrupted_runs_exit_fast_and_resume_to_identical_outputs(
    baseline: Path, inputs: Path, tmp_path: Path
) -> None:
    run = tmp_path / "runs" / "r"
    command = [str(GRISTMILL), "run", "--input", str(inputs), "--run", str(run), *SETTINGS]
    resume = f"gristmill run --run {run}"
    progress_lines = []
    for attempt, (stage, marker, signum, group) in enumerate(CASES):
        log = tmp_path / f"attempt-{attempt}.log"
        code, seconds = _interrupt(command, run, stage, marker, signum, group, log)
        lines = log.read_text().splitlines()
        progress_lines += [line for line in lines if re.search(r": \d of 4 shards, [\d,]+ documents", line)]
        assert code == 128 + signum, lines[-5:]
        target = "the group" if group else "the main process"
        assert seconds < EXIT_SECONDS, f"{signal.Signals(signum).name} to {target}: {seconds:.1f} s"
        assert lines[-1].startswith(f"gristmill: interrupted in stage {stage}"), lines[-5:]
        assert lines[-1].endswith(f"; resume with: {resume}")
        assert not any("Traceback" in line for line in lines), "\n".join(lines[-30:])
        record = _record(run)
        assert record["status"] == "interrupted" and record["stages"][stage]["status"] == "interrupted"
        # later attempts: the printed command, without --input
        command = [str(GRISTMILL), *resume.split()[1:], *SETTINGS]

    assert progress_lines, "no periodic progress line while the shards ran"

    status = subprocess.run([str(GRISTMILL), "status", str(run)], capture_output=True, text=True, timeout=60)
    assert "report     interrupted" in status.stdout and "ingest     done" in status.stdout, status.stdout

    done = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "resuming run r with its recorded config and inputs" in done.stderr
    assert "of 4 shards already done, resuming" in done.stderr
    record = _record(run)
    assert record["status"] == "done" and record["inputs"] == [str(inputs)]
    assert all(info["status"] == "done" for info in record["stages"].values())
    got, want = run_outputs(run), run_outputs(baseline)
    assert sorted(got) == sorted(want)
    assert [name for name in want if got[name] != want[name]] == []
