"""Training entrypoint: ``python -m training.train`` or ``torchrun --nproc_per_node N -m training.train``.

Under torchrun (``WORLD_SIZE`` set) it joins a process group (nccl with CUDA, gloo on CPU) and wraps
the model in DistributedDataParallel; otherwise it runs as one plain process. Global step ``s`` trains
on the windows that :class:`training.data.WindowSampler` assigns to it, so runs and resumes are exact
for every world size that divides ``--batch-size``.

Layout of ``--output``::

    metrics.jsonl          one JSON object per log line: {"type": "train"|"val", "step": ..., ...}
    latest                 text file naming the newest complete checkpoint directory
    step-000500/           one checkpoint, written as .tmp-step-000500/ and renamed when complete
        model.pt           model state dict (plain module, not DDP-wrapped)
        optimizer.pt       AdamW state dict
        config.json        {"format", "model", "tokenizer": {..., "eot_id"}, "data": {...}, "training": args}
        train_state.json   {"step", "epoch", "windows_consumed", "tokens_seen", ...}
        tokenizer.json     the manifest's tokenizer, so generation needs only this directory

Only the newest ``--keep-last`` checkpoints are kept. ``--resume`` continues from ``latest``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from training.data import (
    DataError,
    Manifest,
    TokenWindows,
    WindowPosition,
    WindowSampler,
    check_tokenizer,
    load_manifest,
    load_split_tokens,
    sha256_hex,
    validation_indices,
)
from training.model import PRESETS, ModelConfig, Transformer

CHECKPOINT_FORMAT = "gristmill.checkpoint"
CHECKPOINT_FORMAT_VERSION = 1
LATEST = "latest"


class TrainingError(RuntimeError):
    """Training cannot continue (bad arguments, incompatible resume, non-finite loss)."""


# ---------------------------------------------------------------- arguments


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" unless the help text already names its default or the flag is required."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.required or "default" in text:
            return text
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training.train",
        description="Train a decoder-only transformer on gristmill token shards (torchrun-compatible).",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--data", required=True, help="path of the shards' manifest.json")
    p.add_argument("--output", required=True, help="directory for checkpoints and metrics.jsonl")
    p.add_argument("--max-steps", type=int, required=True, help="total optimizer steps of the run")
    p.add_argument("--preset", default="small", choices=sorted(PRESETS), help="model size preset")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per training sequence")
    p.add_argument("--batch-size", type=int, default=16, help="global sequences per optimizer step")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per step on each rank")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    p.add_argument(
        "--warmup-steps", type=int, default=None, help="linear warmup steps (default: 10%% of --max-steps)"
    )
    p.add_argument("--min-lr-ratio", type=float, default=0.1, help="cosine decay floor as a fraction of --lr")
    p.add_argument("--weight-decay", type=float, default=0.1, help="AdamW decay (matrices only)")
    p.add_argument("--grad-clip", type=float, default=1.0, help="max global gradient norm")
    p.add_argument("--seed", type=int, default=0, help="seed for weights and data order")
    p.add_argument("--eval-every", type=int, default=100, help="validation every N steps (0: never)")
    p.add_argument("--eval-batches", type=int, default=10, help="global batches of validation windows")
    p.add_argument("--log-every", type=int, default=10, help="log training metrics every N steps")
    p.add_argument("--save-every", type=int, default=500, help="checkpoint every N steps (0: at the end)")
    p.add_argument("--keep-last", type=int, default=3, help="number of newest checkpoints to keep")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="bf16 enables autocast")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from the latest checkpoint in --output (default: off; starts fresh if there is none)",
    )
    return p


def _check_args(args: argparse.Namespace, world_size: int) -> None:
    if args.max_steps < 1 or args.seq_len < 1 or args.grad_accum < 1 or args.keep_last < 1:
        raise TrainingError("--max-steps, --seq-len, --grad-accum and --keep-last must be positive")
    if args.batch_size % (world_size * args.grad_accum):
        raise TrainingError(
            f"--batch-size {args.batch_size} must be divisible by world size {world_size} "
            f"x --grad-accum {args.grad_accum}"
        )
    if args.warmup_steps is None:
        args.warmup_steps = args.max_steps // 10
    if args.log_every < 1:
        raise TrainingError("--log-every must be positive")


# ---------------------------------------------------------------- distributed setup


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def available_cpus() -> int:
    """CPUs this process may use: its affinity set, capped by a cgroup v2 CPU quota if there is one."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cpus = min(cpus, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def setup_distributed() -> DistInfo:
    """Join the torchrun process group when launched by torchrun; pick the device and thread count."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        device = torch.device("cpu")
    torch.set_num_threads(max(1, available_cpus() // local_world_size))
    if "WORLD_SIZE" in os.environ and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank, world_size, local_rank, local_world_size, device)


def _all_reduce(tensor: torch.Tensor, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(tensor, op=op)
    return tensor


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


# ---------------------------------------------------------------- optimisation


def lr_at(step: int, max_steps: int, peak: float, warmup: int, min_ratio: float) -> float:
    """Linear warmup to ``peak`` over ``warmup`` steps, then cosine decay to ``peak * min_ratio``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    floor = peak * min_ratio
    return floor + 0.5 * (1.0 + math.cos(math.pi * progress)) * (peak - floor)


def build_optimizer(
    model: nn.Module, lr: float, weight_decay: float, device: torch.device
) -> torch.optim.AdamW:
    """AdamW with weight decay on weight matrices only (not norms, biases or embeddings)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 and "tok_emb" not in name else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8, fused=device.type == "cuda")


# ---------------------------------------------------------------- checkpoints


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _step_of(path: Path) -> int:
    return int(path.name.removeprefix("step-"))


def _step_dirs(output: Path) -> list[Path]:
    dirs = [p for p in output.glob("step-*") if p.is_dir() and p.name.removeprefix("step-").isdigit()]
    return sorted(dirs, key=_step_of)


def find_latest(output: Path) -> Path | None:
    """The checkpoint ``latest`` names (or the newest complete step dir if the pointer is missing)."""
    pointer = output / LATEST
    if pointer.is_file():
        target = output / pointer.read_text().strip()
        if (target / "train_state.json").is_file():
            return target
        raise TrainingError(f"{pointer} names {target}, which is not a complete checkpoint")
    complete = [p for p in _step_dirs(output) if (p / "train_state.json").is_file()]
    return complete[-1] if complete else None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory itself, or the latest checkpoint of a training output directory."""
    path = Path(path)
    if (path / "model.pt").is_file():
        return path
    latest = find_latest(path) if path.is_dir() else None
    if latest is None:
        raise TrainingError(f"no checkpoint found at {path}")
    return latest


def save_checkpoint(
    output: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    config: dict[str, Any],
    state: dict[str, Any],
    tokenizer_json: bytes,
    keep_last: int,
) -> Path:
    """Write ``step-N`` completely under a temporary name, rename it, then repoint ``latest``."""
    name = f"step-{step:06d}"
    tmp = output / f".tmp-{name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save(model.state_dict(), tmp / "model.pt")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    _write_json(tmp / "config.json", config)
    _write_json(tmp / "train_state.json", state)
    (tmp / "tokenizer.json").write_bytes(tokenizer_json)
    final = output / name
    if final.exists():  # left by an abandoned run past the checkpoint we resumed from
        shutil.rmtree(final)
    os.replace(tmp, final)
    pointer_tmp = output / f".tmp-{LATEST}"
    pointer_tmp.write_text(name + "\n")
    os.replace(pointer_tmp, output / LATEST)
    older = [p for p in _step_dirs(output) if _step_of(p) <= step]
    for stale in older[:-keep_last]:
        shutil.rmtree(stale, ignore_errors=True)
    return final


def _load_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _check_resume(saved_config: dict[str, Any], saved_state: dict[str, Any], args: argparse.Namespace,
                  manifest: Manifest, sampler: WindowSampler) -> None:
    """Refuse to resume when the data position would not mean the same thing any more."""
    for key, flag in (("seq_len", "--seq-len"), ("global_batch_size", "--batch-size"), ("seed", "--seed")):
        now = {"seq_len": args.seq_len, "global_batch_size": args.batch_size, "seed": args.seed}[key]
        if saved_state[key] != now:
            raise TrainingError(f"cannot resume: checkpoint used {flag} {saved_state[key]}, this run {now}")
    if saved_config["data"]["train_fingerprint"] != manifest.fingerprint("train"):
        raise TrainingError("cannot resume: the train split's shards differ from the checkpoint's")
    expected = sampler.position(saved_state["step"])
    saved = WindowPosition(saved_state["epoch"], saved_state["windows_consumed"])
    if expected != saved:
        raise TrainingError(f"cannot resume: checkpoint data position {saved} != expected {expected}")


# ---------------------------------------------------------------- logging and evaluation


class MetricsLog:
    """Rank-0 metrics: a readable line on stdout and a JSON object in metrics.jsonl."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path = path
        self.enabled = enabled

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        parts = [f"{record['type']} step {record['step']}"]
        for key, value in record.items():
            if key not in ("type", "step"):
                parts.append(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}")
        print(" | ".join(parts), flush=True)
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")


def _autocast(device: torch.device, dtype: str) -> contextlib.AbstractContextManager:
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=dtype == "bf16")


@torch.no_grad()
def evaluate(model: nn.Module, windows: TokenWindows, args: argparse.Namespace, info: DistInfo,
             micro_batch: int) -> float:
    """Mean token loss over the fixed validation windows, reduced over all ranks."""
    model.eval()
    n_val = args.eval_batches * args.batch_size
    indices = validation_indices(len(windows), n_val, info.rank, info.world_size)
    totals = torch.zeros(2, dtype=torch.float64, device=info.device)
    for start in range(0, len(indices), micro_batch):
        inputs, targets = windows.gather(indices[start : start + micro_batch])
        with _autocast(info.device, args.dtype):
            _, loss = model(inputs.to(info.device), targets.to(info.device))
        totals[0] += loss.double() * targets.numel()
        totals[1] += targets.numel()
    _all_reduce(totals)
    model.train()
    return (totals[0] / totals[1]).item()


# ---------------------------------------------------------------- one optimizer step


def accumulate_gradients(
    model: nn.Module,
    ddp: DistributedDataParallel | None,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    args: argparse.Namespace,
    info: DistInfo,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward/backward this rank's batch in ``--grad-accum`` micro-batches (gradients all-reduced
    once, on the last), then clip. Returns (loss averaged over all ranks, global grad norm)."""
    micro_batch = inputs.shape[0] // args.grad_accum
    forward = ddp if ddp is not None else model
    loss_sum = torch.zeros((), device=info.device)
    for micro in range(args.grad_accum):
        chunk = slice(micro * micro_batch, (micro + 1) * micro_batch)
        x, y = inputs[chunk].to(info.device), targets[chunk].to(info.device)
        syncing = ddp is None or micro == args.grad_accum - 1
        with contextlib.nullcontext() if syncing else ddp.no_sync():
            with _autocast(info.device, args.dtype):
                _, loss = forward(x, y)
            (loss / args.grad_accum).backward()
        loss_sum += loss.detach()
    step_loss = _all_reduce(loss_sum / args.grad_accum) / info.world_size
    grad_norm = nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
    return step_loss, grad_norm


# ---------------------------------------------------------------- the run


def _model_config(args: argparse.Namespace, manifest: Manifest) -> ModelConfig:
    preset = PRESETS[args.preset]
    max_seq_len = max(preset.max_seq_len, args.seq_len)
    return preset.with_overrides(vocab_size=manifest.vocab_size, max_seq_len=max_seq_len)


def checkpoint_config(args: argparse.Namespace, model_config: ModelConfig, manifest: Manifest,
                      tokenizer_json: bytes, train_windows: int, validation_windows: int) -> dict[str, Any]:
    """The config.json of a checkpoint: model shape, tokenizer facts, data identity, training args."""
    return {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "model": model_config.to_dict(),
        "tokenizer": {
            "file": "tokenizer.json",
            "sha256": sha256_hex(tokenizer_json),
            "vocab_size": manifest.vocab_size,
            "eot_id": manifest.eot_id,
            "special_tokens": manifest.tokenizer.get("special_tokens", {}),
        },
        "data": {
            "manifest": args.data if "://" in args.data else str(Path(args.data).resolve()),
            "train_fingerprint": manifest.fingerprint("train"),
            "train_windows": train_windows,
            "validation_windows": validation_windows,
        },
        "training": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }


def _run(args: argparse.Namespace, info: DistInfo) -> None:
    _check_args(args, info.world_size)
    output = Path(args.output)
    latest = find_latest(output) if output.is_dir() else None
    if latest is not None and not args.resume:
        raise TrainingError(
            f"{output} already holds checkpoints ({latest.name}); pass --resume or use a new --output"
        )

    manifest = load_manifest(args.data)
    tokenizer_json = check_tokenizer(manifest)
    train_windows = TokenWindows(load_split_tokens(manifest, "train"), args.seq_len)
    sampler = WindowSampler(train_windows, args.batch_size, args.seed)
    val_windows = None
    if args.eval_every > 0 and manifest.has_split("validation"):
        val_windows = TokenWindows(load_split_tokens(manifest, "validation"), args.seq_len)
        val_windows = val_windows if len(val_windows) else None
    if args.eval_every > 0 and val_windows is None and info.is_main:
        print("no validation windows in the manifest; validation is skipped", flush=True)

    start_step = 0
    if args.resume and latest is not None:
        saved_config = _load_json(latest / "config.json")
        saved_state = _load_json(latest / "train_state.json")
        _check_resume(saved_config, saved_state, args, manifest, sampler)
        model_config = ModelConfig.from_dict(saved_config["model"])
        start_step = saved_state["step"]
        saved_preset = saved_config["training"].get("preset")
        if info.is_main and saved_preset != args.preset:
            print(f"resuming with the checkpoint's model (preset {saved_preset}); --preset is ignored")
    else:
        if info.is_main and args.resume:
            print(f"no checkpoint in {output}; starting from step 0", flush=True)
        model_config = _model_config(args, manifest)

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    model = Transformer(model_config).to(info.device)
    optimizer = build_optimizer(model, args.lr, args.weight_decay, info.device)
    if start_step:
        assert latest is not None
        def load(name: str) -> dict[str, Any]:
            return torch.load(latest / name, map_location=info.device, weights_only=True)

        model.load_state_dict(load("model.pt"))
        optimizer.load_state_dict(load("optimizer.pt"))
    ddp = DistributedDataParallel(model) if dist.is_initialized() else None

    if info.is_main:
        output.mkdir(parents=True, exist_ok=True)
    metrics = MetricsLog(output / "metrics.jsonl", info.is_main)
    config_record = checkpoint_config(args, model_config, manifest, tokenizer_json, len(train_windows),
                                      len(val_windows) if val_windows is not None else 0)
    micro_batch = args.batch_size // info.world_size // args.grad_accum
    tokens_per_step = args.batch_size * args.seq_len
    if info.is_main:
        print(
            f"model {model.num_parameters():,} parameters | {info.world_size} rank(s) on {info.device} | "
            f"{len(train_windows):,} train windows ({sampler.steps_per_epoch} steps/epoch) | "
            f"start step {start_step} of {args.max_steps}",
            flush=True,
        )

    def save(step: int) -> None:
        pos = sampler.position(step)
        state = {
            "step": step,
            "epoch": pos.epoch,
            "windows_consumed": pos.windows_consumed,
            "total_windows_consumed": step * args.batch_size,
            "tokens_seen": step * tokens_per_step,
            "global_batch_size": args.batch_size,
            "seq_len": args.seq_len,
            "seed": args.seed,
            "world_size": info.world_size,
        }
        if info.is_main:
            path = save_checkpoint(output, step, model, optimizer, config_record, state, tokenizer_json,
                                   args.keep_last)
            print(f"saved checkpoint {path}", flush=True)
        _barrier()

    model.train()
    window_loss, window_steps, window_start = 0.0, 0, time.perf_counter()
    last_saved = start_step
    for step in range(start_step, args.max_steps):
        lr = lr_at(step, args.max_steps, args.lr, args.warmup_steps, args.min_lr_ratio)
        for group in optimizer.param_groups:
            group["lr"] = lr
        inputs, targets = sampler.batch_for_step(step, info.rank, info.world_size)
        step_loss, grad_norm = accumulate_gradients(model, ddp, inputs, targets, args, info)
        done = step + 1
        if not (torch.isfinite(step_loss) and torch.isfinite(grad_norm)):
            kept = find_latest(output) if output.is_dir() else None
            raise TrainingError(
                f"non-finite loss at step {done} (loss={step_loss.item()}, grad_norm={grad_norm.item()}); "
                f"stopping without saving. Last good checkpoint, left untouched: {kept or 'none'}"
            )
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

        window_loss += step_loss.item()
        window_steps += 1
        if done % args.log_every == 0 or done == args.max_steps or done == start_step + 1:
            elapsed = time.perf_counter() - window_start
            pos = sampler.position(step)
            metrics.write({
                "type": "train",
                "step": done,
                "loss": window_loss / window_steps,
                "lr": lr,
                "grad_norm": grad_norm.item(),
                "tokens_per_s": window_steps * tokens_per_step / max(elapsed, 1e-9),
                "tokens_seen": done * tokens_per_step,
                "epoch": pos.epoch,
            })
            window_loss, window_steps, window_start = 0.0, 0, time.perf_counter()
        if val_windows is not None and (done % args.eval_every == 0 or done == args.max_steps):
            val_loss = evaluate(model, val_windows, args, info, micro_batch)
            metrics.write({"type": "val", "step": done, "val_loss": val_loss,
                           "val_ppl": math.exp(min(val_loss, 50.0))})
        if (args.save_every and done % args.save_every == 0) or done == args.max_steps:
            save(done)
            last_saved = done
    if last_saved == start_step and info.is_main:
        print(f"nothing to do: checkpoint is already at step {start_step} of --max-steps {args.max_steps}")


def train(args: argparse.Namespace) -> None:
    """Run training with parsed arguments (inside or outside torchrun)."""
    info = setup_distributed()
    try:
        _run(args, info)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        train(args)
    except (TrainingError, DataError) as exc:
        prefix = f"[rank {os.environ['RANK']}] " if "RANK" in os.environ else ""
        print(f"{prefix}error: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
