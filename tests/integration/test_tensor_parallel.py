"""Tensor parallelism under real torchrun on CPU (gloo): 2 ranks at --tp 2 train like 1 rank, a
checkpoint saved at TP 2 (with sequence parallelism) resumes at TP 1, and a 2-D mesh (FSDP2 over 2
data-parallel groups x TP 2, on 4 ranks) resumes a 1-rank checkpoint and continues the same run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from token_shards import TEXT, build_token_run

REPO = Path(__file__).resolve().parents[2]
STEPS = 5


def _args(manifest: Path, output: Path, *extra: str) -> list[str]:
    return [
        "--data", str(manifest), "--output", str(output), "--preset", "tiny", "--seq-len", "32",
        "--batch-size", "8", "--max-steps", str(STEPS), "--lr", "3e-3", "--warmup-steps", "1",
        "--eval-every", "0", "--log-every", "1", "--save-every", "3", "--no-trace", "--deterministic",
        "--seed", "0", *extra,
    ]  # fmt: skip


def _train(nproc: int, args: list[str]) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env["PYTHONPATH"] = str(REPO)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    command = (
        [*launcher, "-m", "training.train", *args]
        if nproc > 1
        else [sys.executable, "-m", "training.train", *args]
    )
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-6000:]}"


def _steps(output: Path) -> dict[int, tuple[float, float]]:
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: (r["loss"], r["grad_norm"]) for r in records if r["type"] == "train"}


def _same(ours: dict[int, tuple[float, float]], reference: dict[int, tuple[float, float]]) -> None:
    assert ours.keys() and ours.keys() <= reference.keys()
    for step, (loss, norm) in ours.items():
        assert loss == pytest.approx(reference[step][0], rel=1e-4), step
        assert norm == pytest.approx(reference[step][1], rel=1e-3), step


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(manifest, output of the 1-rank reference run with checkpoints at steps 3 and 5)."""
    if not TEXT.is_file():
        pytest.skip(f"{TEXT} is not available")
    root = tmp_path_factory.mktemp("tp")
    build_token_run(root / "run", TEXT.read_text(encoding="utf-8")[:300_000], vocab_size=512)
    manifest = root / "run" / "tokens" / "manifest.json"
    _train(1, _args(manifest, root / "one"))
    return manifest, root / "one"


def test_two_ranks_at_tp2_train_like_one_rank(runs: tuple[Path, Path], tmp_path: Path) -> None:
    manifest, reference = runs
    _train(2, _args(manifest, tmp_path / "tp2", "--tp", "2"))
    ours = _steps(tmp_path / "tp2")
    assert sorted(ours) == list(range(1, STEPS + 1))
    _same(ours, _steps(reference))
    state = json.loads((tmp_path / "tp2" / "step-000005" / "train_state.json").read_text())
    assert state["tp"] == 2 and state["world_size"] == 2


def test_checkpoint_saved_at_tp2_with_sequence_parallel_resumes_at_tp1(
    runs: tuple[Path, Path], tmp_path: Path
) -> None:
    manifest, reference = runs
    output = tmp_path / "sp"
    _train(2, _args(manifest, output, "--tp", "2", "--sequence-parallel", "--stop-at", "3"))
    assert (output / "latest").read_text().strip() == "step-000003"
    _train(1, [*_args(manifest, output), "--resume"])
    ours = _steps(output)
    assert sorted(ours) == list(range(1, STEPS + 1))
    _same(ours, _steps(reference))


def test_fsdp_and_tp_on_a_2d_mesh_resume_a_one_rank_checkpoint(
    runs: tuple[Path, Path], tmp_path: Path
) -> None:
    manifest, reference = runs
    output = tmp_path / "2d"
    output.mkdir()
    shutil.copytree(reference / "step-000003", output / "step-000003")
    (output / "latest").write_text("step-000003\n")
    _train(4, [*_args(manifest, output, "--parallel", "fsdp", "--tp", "2"), "--resume"])
    ours = _steps(output)
    assert sorted(ours) == [4, 5]
    _same(ours, _steps(reference))
