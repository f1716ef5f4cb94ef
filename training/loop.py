"""What pretraining (training/train.py) and instruction tuning (training/sft.py) share around their step:
the optimizer, the process-group lifetime, resuming and saving a checkpoint, settling the per-step
losses without a host sync per step, and the command-line error line."""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from training.checkpoint import CheckpointStore, rng_state, set_rng_state
from training.logs import RunLogs
from training.parallel import DistInfo, setup_distributed
from training.schedule import scheduler_state

__all__ = [
    "PendingSteps",
    "TrainingError",
    "all_reduce",
    "autocast",
    "build_optimizer",
    "cli_error",
    "restore",
    "run_distributed",
    "save_checkpoint",
]

Settings = TypeVar("Settings")


class TrainingError(RuntimeError):
    """Training cannot continue (bad arguments, incompatible resume, non-finite loss)."""


def all_reduce(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over the ranks (in place); itself outside a process group."""
    if dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on ``device`` when ``enabled`` (the parallel wrapper decides)."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def build_optimizer(
    model: nn.Module, lr: float, weight_decay: float, device: torch.device
) -> torch.optim.AdamW:
    """AdamW with weight decay on weight matrices only (not norms, biases or embeddings); fused on CUDA."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 and "tok_emb" not in name else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8, fused=device.type == "cuda")


def run_distributed(
    run: Callable[[Settings, bool, DistInfo], None],
    cfg: Settings,
    resume: bool,
    dist_timeout_s: float,
    tp: int,
) -> None:
    """``run(cfg, resume, info)`` inside a process group (under torchrun) or as one plain process. The
    group is destroyed and process-wide torch settings (threads, deterministic algorithms) restored
    afterwards, for callers that train in-process."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    info = setup_distributed(dist_timeout_s, tp)
    try:
        run(cfg, resume, info)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        torch.set_num_threads(threads)
        if torch.are_deterministic_algorithms_enabled() != deterministic:
            torch.use_deterministic_algorithms(deterministic)


def restore(
    store: CheckpointStore,
    name: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    saved_state: dict[str, Any],
    device: torch.device,
) -> None:
    """Load checkpoint ``name``'s model, optimizer, LR schedule and RNG state into this run."""
    rng = store.load(name, model, optimizer, device)
    schedule = {**saved_state["scheduler"], "lr_lambdas": [None] * len(optimizer.param_groups)}
    scheduler.load_state_dict(schedule)
    if rng is not None:
        set_rng_state(rng, device)


def save_checkpoint(
    store: CheckpointStore,
    logs: RunLogs,
    info: DistInfo,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    config: dict[str, Any],
    state: dict[str, Any],
    tokenizer_json: bytes,
    keep_last: int,
) -> None:
    """Checkpoint ``step``: model, optimizer, RNG, config.json, train_state.json (``state`` plus the LR
    schedule) and tokenizer.json; then the logs written so far."""
    state = {**state, "step": step, "scheduler": scheduler_state(scheduler)}
    files = {
        "config.json": (json.dumps(config, indent=2, sort_keys=True) + "\n").encode(),
        "train_state.json": (json.dumps(state, indent=2, sort_keys=True) + "\n").encode(),
        "tokenizer.json": tokenizer_json,
    }
    uri = store.save(step, model, optimizer, files, rng_state(info.device), keep_last)
    logs.sync()
    if info.is_main:
        print(f"saved checkpoint {uri}", flush=True)


class PendingSteps:
    """The losses and gradient norms of the steps since the last log line, kept on the device: the
    host waits for them only when a step logs, evaluates or saves (``settle``)."""

    def __init__(self, store: CheckpointStore, divisor: int) -> None:
        self.store, self.divisor = store, divisor
        self.steps: list[int] = []
        self.losses: list[torch.Tensor] = []
        self.norms: list[torch.Tensor] = []

    def add(self, step: int, loss: torch.Tensor, norm: torch.Tensor) -> None:
        self.steps.append(step)
        self.losses.append(loss)
        self.norms.append(norm)

    def settle(self) -> tuple[list[float], list[float]]:
        """(losses summed over the ranks / divisor, grad norms) of the pending steps, in step order;
        stops on a non-finite loss or gradient norm without saving."""
        if not self.steps:
            return [], []
        losses = (all_reduce(torch.stack(self.losses)) / self.divisor).tolist()
        norms = torch.stack(self.norms).tolist()
        steps = self.steps
        self.steps, self.losses, self.norms = [], [], []
        for step, loss, norm in zip(steps, losses, norms, strict=True):
            if not (math.isfinite(loss) and math.isfinite(norm)):
                raise TrainingError(
                    f"non-finite loss at step {step} (loss={loss}, grad_norm={norm}); stopping without "
                    f"saving. Last good checkpoint, left untouched: {self.store.latest() or 'none'}"
                )
        return losses, norms


def cli_error(exc: BaseException) -> int:
    """Print ``exc`` as one ``error:`` line on stderr (with the rank under torchrun); exit status 1."""
    prefix = f"[rank {os.environ['RANK']}] " if "RANK" in os.environ else ""
    print(f"{prefix}error: {exc}", file=sys.stderr, flush=True)
    return 1
