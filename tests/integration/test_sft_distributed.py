"""Instruction tuning under real torchrun (gloo on CPU): 2 DDP ranks log the losses of 1 rank (the
loss is the mean over the global batch's scored tokens, whatever the split), and an FSDP2 run
stopped on 2 ranks resumes on 1 rank and continues the same run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from dialogue import records
from pretrained import shared_pretrained
from token_shards import TEXT

REPO = Path(__file__).resolve().parents[2]


def _args(checkpoint: Path, data: Path, output: Path, *extra: str) -> list[str]:
    return [
        "--checkpoint", str(checkpoint), "--data", str(data), "--output", str(output), "--seq-len", "128",
        "--batch-size", "4", "--max-steps", "4", "--lr", "1e-3", "--warmup-steps", "1", "--eval-every", "2",
        "--eval-windows", "4", "--log-every", "1", "--save-every", "2", "--deterministic", *extra,
    ]  # fmt: skip


def _sft(nproc: int, args: list[str]) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env["PYTHONPATH"] = str(REPO)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    command = [*launcher, "-m", "training.sft"] if nproc > 1 else [sys.executable, "-m", "training.sft"]
    proc = subprocess.run([*command, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-6000:]}"


def _losses(output: Path) -> dict[tuple[str, int], float]:
    lines = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    return {(r["type"], r["step"]): r.get("loss", r.get("val_loss")) for r in lines}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[tuple[str, int], float]]:
    """(pretrained checkpoint, SFT data, losses of the 1-rank reference run)."""
    if not TEXT.is_file():
        pytest.skip(f"{TEXT} is not available")
    checkpoint = shared_pretrained(tmp_path_factory.getbasetemp())
    root = tmp_path_factory.mktemp("sft-dist")
    data = root / "dialogue.jsonl"
    lines = [json.dumps(r) for r in records(TEXT.read_text(encoding="utf-8"), limit=160, max_chars=200)]
    data.write_text("\n".join(lines) + "\n")
    _sft(1, _args(checkpoint, data, root / "one"))
    return checkpoint, data, _losses(root / "one")


def _same(ours: dict[tuple[str, int], float], reference: dict[tuple[str, int], float]) -> None:
    assert ours.keys() == reference.keys()
    for key, value in ours.items():
        assert value == pytest.approx(reference[key], rel=1e-4), key


def test_two_ddp_ranks_log_the_losses_of_one(setup: tuple, tmp_path: Path) -> None:
    checkpoint, data, reference = setup
    _sft(2, _args(checkpoint, data, tmp_path / "ddp"))
    _same(_losses(tmp_path / "ddp"), reference)


def test_fsdp_run_stopped_on_two_ranks_resumes_on_one(setup: tuple, tmp_path: Path) -> None:
    checkpoint, data, reference = setup
    output = tmp_path / "fsdp"
    _sft(2, _args(checkpoint, data, output, "--parallel", "fsdp", "--stop-at", "2"))
    assert (output / "latest").read_text().strip() == "step-000002"
    _sft(1, [*_args(checkpoint, data, output), "--resume"])
    _same(_losses(output), reference)
