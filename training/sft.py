"""Instruction tuning: ``python -m training.sft`` (under torchrun like pretraining) or ``gristmill sft``.

Starts from a pretrained checkpoint: its tokenizer gets the chat template's special tokens
(training/chat.py), its embedding (and an untied LM head) grows by their rows, each initialised to
the mean of the existing rows, and the model trains on conversations (training/sft_data.py) with
the loss on the assistant's tokens only. The loss of a step is the mean over every scored token of
the global batch (micro-batches and ranks weighted by their scored tokens), so it does not depend
on the world size. Parallelism (DDP, FSDP2, tensor parallel), checkpoints, exact resume on any
world size, metrics.jsonl and the validation loss on the held-out split work as in pretraining.

Output: ``latest``, ``step-N/`` (model, optimizer, RNG, config.json with the chat template,
train_state.json, tokenizer.json with the chat tokens), ``metrics.jsonl`` and ``quarantine.jsonl``
(the records set aside, with their reason). ``gristmill generate --chat`` and ``gristmill export``
read the checkpoint like any other.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer
from torch import nn

from training import loop, storage
from training.chat import CHAT_TEMPLATE, CHAT_TOKENS, add_chat_tokens
from training.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_FORMAT_VERSION,
    CheckpointError,
    CheckpointStore,
    load_model_weights,
    resolve,
)
from training.config import HelpFormatter, SFTConfig, add_arguments
from training.logs import RunLogs
from training.loop import TrainingError
from training.manifest import DataError, sha256_hex
from training.model import ModelConfig, Transformer
from training.parallel import DistInfo, ParallelError, clip_grad_norm, parallelize
from training.schedule import build_scheduler
from training.sft_data import Windows, global_batch, pack, read_examples

__all__ = ["grow_vocabulary", "main", "sft"]


def grow_vocabulary(model: Transformer, vocab_size: int) -> Transformer:
    """A copy of ``model`` with ``vocab_size`` token rows: the existing rows kept, each new row of the
    embedding (and of an untied LM head) the mean of the existing ones."""
    old = model.config.vocab_size
    if vocab_size == old:
        return model
    grown = Transformer(model.config.with_overrides(vocab_size=vocab_size))
    state = grown.state_dict()
    for name, value in model.state_dict().items():
        if name in ("tok_emb.weight", "lm_head.weight"):
            rows = value[:old]
            state[name][:old] = rows
            state[name][old:vocab_size] = rows.mean(dim=0)
        else:
            state[name] = value
    grown.load_state_dict(state)
    return grown


def _start(
    cfg: SFTConfig, store: CheckpointStore, resume_from: str | None
) -> tuple[Transformer, dict, Tokenizer]:
    """(model on the host, base config.json, tokenizer with chat tokens) of the checkpoint to start
    from: the output's latest when resuming, else ``--checkpoint`` (vocabulary grown)."""
    base_store, name = (store, resume_from) if resume_from else resolve(cfg.checkpoint or "")
    local = base_store.local_copy(name, parts=("model", "config.json", "tokenizer.json"))
    try:
        config = json.loads((local / "config.json").read_text())
        tokenizer_bytes = (local / config["tokenizer"]["file"]).read_bytes()
        if sha256_hex(tokenizer_bytes) != config["tokenizer"]["sha256"]:
            raise TrainingError(f"{base_store.uri(name)}: tokenizer.json does not match config.json")
        model = Transformer(ModelConfig.from_dict(config["model"]))
        if not resume_from:
            load_model_weights(model, local)
    finally:
        if base_store.remote:
            shutil.rmtree(local, ignore_errors=True)
    tokenizer = Tokenizer.from_str(tokenizer_bytes.decode("utf-8"))
    add_chat_tokens(tokenizer)
    return grow_vocabulary(model, tokenizer.get_vocab_size()), config, tokenizer


def _resolved(cfg: SFTConfig, info: DistInfo, seq_len: int) -> SFTConfig:
    if cfg.batch_size % (info.dp_size * cfg.grad_accum):
        raise TrainingError(
            f"--batch-size {cfg.batch_size} must be divisible by the data-parallel ranks {info.dp_size} "
            f"x --grad-accum {cfg.grad_accum}"
        )
    warmup = cfg.max_steps // 20 if cfg.warmup_steps is None else cfg.warmup_steps
    stop = min(cfg.stop_at or cfg.max_steps, cfg.max_steps)
    return dataclasses.replace(cfg, seq_len=seq_len, warmup_steps=warmup, stop_at=stop)


def _run(cfg: SFTConfig, resume: bool, info: DistInfo) -> None:
    if not cfg.data or cfg.output is None or cfg.checkpoint is None:
        raise TrainingError("--checkpoint, --data and --output are required")
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    store = CheckpointStore(cfg.output, info.rank, info.local_rank, cfg.staging_dir and Path(cfg.staging_dir))
    latest = store.latest()
    if latest is not None and not resume:
        raise TrainingError(
            f"{store.output} already holds checkpoints ({latest}); pass --resume or a new --output"
        )
    resuming = resume and latest is not None
    host_model, base_config, tokenizer = _start(cfg, store, latest if resuming else None)
    eot_id = int(base_config["tokenizer"]["eot_id"])
    cfg = _resolved(cfg, info, cfg.seq_len or int(base_config["data"]["seq_len"]))
    seq_len = int(cfg.seq_len or 0)
    if seq_len > host_model.config.max_seq_len:
        host_model.config = host_model.config.with_overrides(max_seq_len=seq_len)
        host_model.rotary = type(host_model.rotary)(host_model.config)
    examples = read_examples(cfg.data, tokenizer, eot_id, seq_len, cfg.validation_fraction)
    if not examples.train:
        raise DataError(f"no training examples in {cfg.data} (set aside: {dict(examples.counts)})")
    pad_id = tokenizer.token_to_id("<|pad|>")
    pad_id = eot_id if pad_id is None else pad_id
    train_windows = pack(examples.train, seq_len, pad_id, cfg.packing)
    val_windows = pack(examples.validation, seq_len, pad_id, cfg.packing)
    tokenizer_json = tokenizer.to_str().encode()
    data = {
        "seq_len": seq_len,
        "sources": [storage.normalize(u) for u in cfg.data],
        "train_examples": len(examples.train),
        "validation_examples": len(examples.validation),
        "train_windows": len(train_windows),
        "validation_windows": len(val_windows),
        "train_fingerprint": train_windows.fingerprint(),
        "set_aside": dict(examples.counts),
        "truncated": examples.truncated,
        "packing": cfg.packing,
    }
    config = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "model": host_model.config.to_dict(),
        "tokenizer": {
            "file": "tokenizer.json",
            "sha256": sha256_hex(tokenizer_json),
            "vocab_size": tokenizer.get_vocab_size(),
            "eot_id": eot_id,
            "special_tokens": {t.content: i for i, t in sorted(tokenizer.get_added_tokens_decoder().items())},
        },
        "chat": {"template": CHAT_TEMPLATE, "tokens": list(CHAT_TOKENS)},
        "base_checkpoint": base_config.get("base_checkpoint") or storage.normalize(cfg.checkpoint),
        "data": data,
        "sft": {k: v for k, v in dataclasses.asdict(cfg).items() if k != "nproc"},
    }
    saved_state = store.read_json(latest, "train_state.json") if resuming and latest else None
    if saved_state is not None:
        for key, now in (("train_fingerprint", data["train_fingerprint"]), ("seed", cfg.seed),
                         ("global_batch_size", cfg.batch_size)):  # fmt: skip
            if saved_state[key] != now:
                raise TrainingError(f"cannot resume: the checkpoint's {key} differs from this run's")

    torch.manual_seed(cfg.seed)
    model = host_model.to(info.device)
    par = parallelize(
        model,
        info,
        cfg.parallel,
        cfg.dtype,
        cfg.compile,
        cfg.activation_checkpointing,
        sequence_parallel=False,
    )
    optimizer = loop.build_optimizer(model, cfg.lr, cfg.weight_decay, info.device)
    scheduler = build_scheduler(optimizer, cfg.max_steps, int(cfg.warmup_steps or 0), cfg.min_lr_ratio)
    start_step = 0
    if saved_state is not None and latest is not None:
        loop.restore(store, latest, model, optimizer, scheduler, saved_state, info.device)
        start_step = int(saved_state["step"])
    logs = RunLogs(store, info.rank, info.world_size, start_step, trace=False)
    if info.is_main:
        _write_quarantine(store, logs, examples.quarantined)
        print(
            f"sft: {model.num_parameters():,} parameters | {len(examples.train):,} train / "
            f"{len(examples.validation):,} validation examples in {len(train_windows):,} / "
            f"{len(val_windows):,} windows of {seq_len} | set aside {dict(examples.counts) or 'none'}, "
            f"{examples.truncated:,} cut to the window | "
            f"{info.world_size} rank(s) ({cfg.parallel}{f', tp {info.tp}' if info.tp > 1 else ''}) | "
            f"start step {start_step} of {cfg.max_steps}",
            flush=True,
        )

    def save(step: int) -> None:
        state = {
            "seed": cfg.seed,
            "global_batch_size": cfg.batch_size,
            "seq_len": seq_len,
            "train_fingerprint": data["train_fingerprint"],
            "world_size": info.world_size,
            "tp": info.tp,
            "parallel": cfg.parallel,
            "position": {"windows_consumed": step * cfg.batch_size},
        }
        loop.save_checkpoint(
            store, logs, info, step, model, optimizer, scheduler, config, state, tokenizer_json, cfg.keep_last
        )

    # each data-parallel rank's share of the global mean loss (tensor-parallel ranks hold the same share)
    pending = loop.PendingSteps(store, divisor=info.tp)
    window_start = time.perf_counter()
    model.train()
    try:
        for step in range(start_step, cfg.stop_at or cfg.max_steps):
            rows = global_batch(len(train_windows), cfg.batch_size, cfg.seed, step)
            lr = optimizer.param_groups[0]["lr"]
            loss, norm = _step(par, train_windows, rows, optimizer, scheduler, cfg, info)
            done = step + 1
            pending.add(done, loss, norm)
            last = done == cfg.stop_at
            log_now = done % cfg.log_every == 0 or last or done == start_step + 1
            eval_now = cfg.eval_every > 0 and len(val_windows) > 0 and (done % cfg.eval_every == 0 or last)
            save_now = (cfg.save_every and done % cfg.save_every == 0) or last
            if not (log_now or eval_now or save_now):
                continue
            losses, norms = pending.settle()
            if log_now:
                elapsed = time.perf_counter() - window_start
                rate = len(losses) / max(elapsed, 1e-9)
                record = {"type": "train", "step": done, "loss": losses[-1], "lr": lr, "grad_norm": norms[-1]}
                logs.metric({**record, "steps_per_s": rate})
                window_start = time.perf_counter()
            if eval_now:
                val_loss = _evaluate(par, val_windows, cfg, info)
                logs.metric(
                    {
                        "type": "val",
                        "step": done,
                        "val_loss": val_loss,
                        "val_ppl": math.exp(min(val_loss, 50)),
                    }
                )
            if save_now:
                save(done)
    finally:
        logs.sync()
        logs.close()


def _write_quarantine(store: CheckpointStore, logs: RunLogs, records: list[dict[str, Any]]) -> None:
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    if store.remote:
        storage.write_bytes(store.uri("quarantine.jsonl"), lines.encode())
    else:
        (Path(store.output) / "quarantine.jsonl").write_text(lines, encoding="utf-8")


def _on(tensor: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    """A host tensor on ``device``: pinned, then copied without blocking (CUDA)."""
    if tensor is None or device.type != "cuda":
        return tensor if tensor is None else tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def _step(
    par: Any,
    windows: Windows,
    rows: np.ndarray,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    cfg: SFTConfig,
    info: DistInfo,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step over this rank's share of ``rows``; returns (this rank's share of the
    global mean loss, grad norm) on the device, without syncing."""
    total = max(1, windows.scored_targets(rows))
    mine = np.array_split(rows, info.dp_size)[info.dp_rank]
    micro = np.array_split(mine, cfg.grad_accum)
    loss_sum = torch.zeros((), device=info.device)
    for m, part in enumerate(micro):
        inputs, targets, doc_ids = (_on(t, info.device) for t in windows.batch(part, cfg.packing))
        weight = windows.scored_targets(part) / total  # this micro-batch's share of the global mean
        with par.sync(m == len(micro) - 1):
            with loop.autocast(info.device, par.autocast):
                _, loss = par.forward(inputs, targets, doc_ids=doc_ids)
            (loss * weight * info.dp_size).backward()  # DDP and FSDP average over the dp ranks
        loss_sum += loss.detach().float() * weight
    if info.tp > 1:
        norm = clip_grad_norm(par.model.parameters(), cfg.grad_clip)
    else:
        norm = nn.utils.clip_grad_norm_(par.model.parameters(), cfg.grad_clip)
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum, norm.detach()


@torch.no_grad()
def _evaluate(par: Any, windows: Windows, cfg: SFTConfig, info: DistInfo) -> float:
    """Mean loss over the scored tokens of the first ``eval_windows`` validation windows."""
    par.model.eval()
    rows = np.array_split(np.arange(min(len(windows), cfg.eval_windows)), info.dp_size)[info.dp_rank]
    totals = torch.zeros(2, dtype=torch.float64, device=info.device)
    micro = max(1, cfg.batch_size // info.dp_size // cfg.grad_accum)
    for start in range(0, len(rows), micro):
        part = rows[start : start + micro]
        count = windows.scored_targets(part)
        if not count:
            continue
        inputs, targets, doc_ids = windows.batch(part, cfg.packing)
        with loop.autocast(info.device, par.autocast):
            _, loss = par.model(
                inputs.to(info.device),
                targets.to(info.device),
                doc_ids=None if doc_ids is None else doc_ids.to(info.device),
            )
        totals[0] += loss.double() * count
        totals[1] += count
    loop.all_reduce(totals)
    par.model.train()
    return float(totals[0] / totals[1].clamp(min=1))


def sft(cfg: SFTConfig, resume: bool = False) -> None:
    """Run instruction tuning (inside or outside torchrun); ``resume`` continues from the latest
    checkpoint in ``cfg.output``."""
    loop.run_distributed(_run, cfg, resume, cfg.dist_timeout_s, cfg.tp)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.sft",
        description="Instruction-tune a gristmill checkpoint on JSONL conversations (torchrun-compatible).",
        formatter_class=HelpFormatter,
    )
    add_arguments(parser, settings=SFTConfig)
    parser.add_argument(
        "--resume", action="store_true", help="continue from the latest checkpoint in --output"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    options = vars(parser.parse_args(argv))
    resume = options.pop("resume")
    try:
        cfg = SFTConfig(**options)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        sft(cfg, resume)
    except (
        TrainingError,
        ParallelError,
        DataError,
        CheckpointError,
        storage.StorageError,
        FileNotFoundError,
    ) as exc:
        return loop.cli_error(exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
