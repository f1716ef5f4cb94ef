"""Learning-rate schedule: linear warmup, then cosine decay to a floor."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR


def lr_at(step: int, max_steps: int, peak: float, warmup: int, min_ratio: float) -> float:
    """LR of the 0-based ``step``: linear warmup to ``peak`` over ``warmup`` steps, then cosine
    decay to ``peak * min_ratio`` at ``max_steps``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    floor = peak * min_ratio
    return floor + 0.5 * (1.0 + math.cos(math.pi * progress)) * (peak - floor)


def build_scheduler(
    optimizer: torch.optim.Optimizer, max_steps: int, warmup: int, min_ratio: float
) -> LambdaLR:
    """A LambdaLR scaling each group's initial LR by :func:`lr_at`; its state_dict is JSON-safe."""

    def factor(step: int) -> float:
        return lr_at(step, max_steps, 1.0, warmup, min_ratio)

    return LambdaLR(optimizer, factor)


def scheduler_state(scheduler: LambdaLR) -> dict[str, Any]:
    """The scheduler's state_dict without its (function) lambdas, for train_state.json."""
    return {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
