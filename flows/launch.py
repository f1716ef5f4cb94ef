"""The torchrun command line of the training stage, for `gristmill train` and `gristmill ablate`."""

from __future__ import annotations

import sys

from training.config import TrainConfig, to_argv


def train_command(cfg: TrainConfig, resume: bool = False) -> list[str]:
    """The torchrun command line for a `train:` config: the launcher fields for torchrun, the rest
    as `python -m training.train` options."""
    if not cfg.data:
        raise SystemExit("error: no training data: give --data MANIFEST (or `train.data` in the config)")
    if cfg.output is None:
        raise SystemExit("error: no output: give --output DIR (or `train.output` in the config)")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={cfg.nproc}"]
    return [*cmd, "-m", "training.train", *to_argv(cfg), *(["--resume"] if resume else [])]
