"""Training entrypoint: ``python -m training.train`` or ``torchrun --nproc_per_node N -m training.train``.

Under torchrun (``WORLD_SIZE`` set) it joins a process group (nccl with CUDA, gloo on CPU) and
replicates the model with DistributedDataParallel or shards it with FSDP2 (``--parallel fsdp``);
otherwise it runs as one plain process. Data streams from token shards on a local path or
``s3://`` (training/data.py); global step ``s`` trains on the windows its schedule assigns to it
whatever the world size, so runs resume exactly on any world size that divides ``--batch-size``.

Output (a local directory or an ``s3://`` prefix)::

    metrics.jsonl        one JSON object per log line: {"type": "train"|"val", "step": ..., ...}
    trace/               per-step data trace of every rank (training/trace.py)
    latest, step-N/      checkpoints (training/checkpoint.py)

For an S3 output, metrics.jsonl and the trace are written to a local staging directory; the
lines added since the last checkpoint are uploaded with every checkpoint, the whole files at exit
(training/logs.py).
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from training import storage
from training.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_FORMAT_VERSION,
    CheckpointError,
    CheckpointStore,
    load_model_weights,
    resolve,
)
from training.config import LAUNCHER_FIELDS, TrainConfig, as_fraction, parse_args
from training.data import (
    Batch,
    BatchStream,
    Schedule,
    Shuffle,
    WindowSource,
    make_schedule,
    validation_windows,
)
from training.logs import ProfilerWindow, RunLogs, cuda_memory
from training.loop import (
    PendingSteps,
    TrainingError,
    all_reduce,
    autocast,
    build_optimizer,
    cli_error,
    restore,
    run_distributed,
    save_checkpoint,
)
from training.manifest import (
    DataError,
    IntegrityError,
    Manifest,
    check_tokenizer,
    load_manifest,
    sha256_hex,
    verify_shard,
)
from training.mfu import flops_per_token, peak_flops
from training.model import PRESETS, ModelConfig, Transformer, build_model, with_rope_scaling
from training.parallel import (
    DistInfo,
    Parallel,
    ParallelError,
    clip_grad_norm,
    parallelize,
)
from training.schedule import build_scheduler

__all__ = ["TrainingError", "main", "train"]


# ---------------------------------------------------------------- arguments


def _resolved(cfg: TrainConfig, world_size: int) -> TrainConfig:
    """``cfg`` checked against the world size, with warmup_steps and stop_at filled in."""
    if not cfg.data or cfg.output is None:
        raise TrainingError("--data and --output are required")
    if cfg.batch_size % (world_size * cfg.grad_accum):
        raise TrainingError(
            f"--batch-size {cfg.batch_size} must be divisible by the data-parallel ranks {world_size} "
            f"x --grad-accum {cfg.grad_accum}"
        )
    warmup = cfg.max_steps // 10 if cfg.warmup_steps is None else cfg.warmup_steps
    return dataclasses.replace(
        cfg, warmup_steps=warmup, stop_at=min(cfg.stop_at or cfg.max_steps, cfg.max_steps)
    )


# ---------------------------------------------------------------- distributed setup


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


# ---------------------------------------------------------------- model, parallelism, optimizer


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """A plain tensor from a replicated DTensor (FSDP2's grad norm), else the tensor itself."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def train_step(
    par: Parallel,
    batch: Batch,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    cfg: TrainConfig,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step over this rank's batch in ``--grad-accum`` micro-batches (gradients reduced
    on the last), clipped. Returns (this rank's mean loss, global grad norm) without syncing."""
    tokens = batch.tokens.to(device, non_blocking=True)  # one copy; inputs and targets are views
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    micro = inputs.shape[0] // cfg.grad_accum
    loss_sum = torch.zeros((), device=device)
    for m in range(cfg.grad_accum):
        with par.sync(m == cfg.grad_accum - 1):
            with autocast(device, par.autocast):
                _, loss = par.forward(
                    inputs[m * micro : (m + 1) * micro], targets[m * micro : (m + 1) * micro]
                )
            (loss / cfg.grad_accum).backward()
        loss_sum += loss.detach().float()
    if cfg.tp > 1:  # DTensors of two meshes and plain tensors: clipped by our own norm
        grad_norm = clip_grad_norm(par.model.parameters(), cfg.grad_clip)
    else:
        grad_norm = _local(nn.utils.clip_grad_norm_(par.model.parameters(), cfg.grad_clip))
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum / cfg.grad_accum, grad_norm.detach()


@torch.no_grad()
def evaluate(
    par: Parallel, sources: list[WindowSource], cfg: TrainConfig, info: DistInfo, micro_batch: int
) -> list[float]:
    """Mean token loss over each source's fixed validation windows, reduced over all ranks."""
    par.model.eval()
    totals = torch.zeros(len(sources), 2, dtype=torch.float64, device=info.device)
    for k, source in enumerate(sources):
        indices = validation_windows(
            len(source), cfg.eval_batches * cfg.batch_size, cfg.batch_size, info.dp_rank, info.dp_size
        )
        for start in range(0, len(indices), micro_batch):
            inputs, targets = source.gather(indices[start : start + micro_batch])
            with autocast(info.device, par.autocast):
                _, loss = par.model(inputs.to(info.device), targets.to(info.device))
            totals[k, 0] += loss.double() * targets.numel()
            totals[k, 1] += targets.numel()
    all_reduce(totals)
    par.model.train()
    return (totals[:, 0] / totals[:, 1].clamp(min=1)).tolist()


# ---------------------------------------------------------------- run identity and resume checks


def _model_config(cfg: TrainConfig, manifest: Manifest) -> ModelConfig:
    preset = PRESETS[cfg.preset]
    return preset.with_overrides(
        vocab_size=manifest.vocab_size, max_seq_len=max(preset.max_seq_len, cfg.seq_len)
    )


@dataclass
class InitialWeights:
    """The checkpoint ``--resume-from`` names and the model config the new run trains."""

    store: CheckpointStore
    name: str
    config: ModelConfig

    def load(self, model: Transformer) -> None:
        """Copy the checkpoint's weights into ``model`` (every rank, before parallelizing)."""
        local = self.store.local_copy(self.name, parts=("model",))
        try:
            load_model_weights(model, local)
        finally:
            if self.store.remote:
                shutil.rmtree(local, ignore_errors=True)


def initial_weights(cfg: TrainConfig, manifest: Manifest) -> InitialWeights:
    """``--resume-from``: its model, with ``--rope-scaling`` over the context it was trained on (by
    ``--rope-factor``, default ``--seq-len`` / that context) and room for ``--seq-len``."""
    assert cfg.resume_from is not None
    store, name = resolve(cfg.resume_from)
    saved = store.read_json(name, "config.json")
    if saved["tokenizer"]["sha256"] != manifest.tokenizer["sha256"]:
        raise TrainingError(f"--resume-from {cfg.resume_from} used another tokenizer than {manifest.uri}")
    config = ModelConfig.from_dict(saved["model"])
    trained = int((config.rope_scaling or {}).get("original_max_seq_len") or saved["data"]["seq_len"])
    if cfg.rope_scaling is not None:
        factor = cfg.rope_factor or max(1.0, cfg.seq_len / trained)
        config = with_rope_scaling(config, cfg.rope_scaling, factor, trained)
    return InitialWeights(
        store, name, config.with_overrides(max_seq_len=max(config.max_seq_len, cfg.seq_len))
    )


def checkpoint_config(
    cfg: TrainConfig,
    model_config: ModelConfig,
    manifests: list[Manifest],
    tokenizer_json: bytes,
    sources: list[WindowSource],
    weights: list[Fraction],
    val_windows: list[int],
) -> dict[str, Any]:
    """config.json of a checkpoint: model shape, tokenizer facts, data identity, training settings."""
    manifest = manifests[0]
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
            "seq_len": cfg.seq_len,
            "sources": [
                {
                    "manifest": m.uri,
                    "train_fingerprint": m.fingerprint("train"),
                    "train_windows": len(s),
                    "validation_windows": v,
                    "weight": str(w),
                }
                for m, s, w, v in zip(manifests, sources, weights, val_windows, strict=True)
            ],
        },
        "training": {k: v for k, v in dataclasses.asdict(cfg).items() if k not in LAUNCHER_FIELDS},
    }


def _check_resume(
    saved_config: dict[str, Any],
    saved_state: dict[str, Any],
    cfg: TrainConfig,
    config: dict[str, Any],
    schedule: Schedule,
) -> None:
    """Refuse to resume when the data position would not mean the same thing any more."""
    if saved_config.get("format_version") != CHECKPOINT_FORMAT_VERSION:
        raise TrainingError(
            f"cannot resume: the checkpoint has format version {saved_config.get('format_version')}, this "
            f"version resumes {CHECKPOINT_FORMAT_VERSION} (another data order); generate and export still "
            "load it"
        )
    now = {
        "seq_len": cfg.seq_len,
        "global_batch_size": cfg.batch_size,
        "seed": cfg.seed,
        "order": schedule.shuffle.to_json(),
    }
    flags = {
        "seq_len": "--seq-len",
        "global_batch_size": "--batch-size",
        "seed": "--seed",
        "order": "--data-lanes/--shuffle-chunk-tokens/--shuffle-buffer-chunks giving",
    }
    for key, value in now.items():
        if saved_state.get(key) != value:
            raise TrainingError(
                f"cannot resume: checkpoint used {flags[key]} {saved_state[key]}, this run {value}"
            )
    saved = [(s["train_fingerprint"], s["weight"]) for s in saved_config["data"]["sources"]]
    current = [(s["train_fingerprint"], s["weight"]) for s in config["data"]["sources"]]
    if saved != current:
        raise TrainingError(
            "cannot resume: the training data (shards of each --data manifest, or their --data-weights) "
            "differ from the checkpoint's"
        )
    expected = schedule.position(saved_state["step"])
    if saved_state["position"] != expected:
        raise TrainingError(
            f"cannot resume: checkpoint data position {saved_state['position']} != {expected}"
        )


def _verify_shards(manifests: list[Manifest], info: DistInfo) -> None:
    """Hash every shard of every split against its manifest, shard ``i`` on rank ``i % W``; every
    rank raises if any rank found a mismatch."""
    shards = [(m, shard) for m in manifests for part in m.data["splits"].values() for shard in part["shards"]]
    errors = []
    for manifest, shard in shards[info.rank :: info.world_size]:
        try:
            verify_shard(manifest, shard)
        except IntegrityError as exc:
            errors.append(str(exc))
    if dist.is_initialized():
        gathered: list[list[str] | None] = [None] * info.world_size
        dist.all_gather_object(gathered, errors)
        errors = [e for rank_errors in gathered for e in rank_errors or []]
    if errors:
        raise IntegrityError("; ".join(errors))


def _warn_about_reads(
    shuffle: Shuffle, sources: list[WindowSource], cfg: TrainConfig, world_size: int
) -> None:
    """Say when this run will read row groups more than once: ranks sharing lanes, or shuffle
    buffers larger than the cache."""
    if shuffle.lanes % world_size:
        lanes = math.lcm(shuffle.lanes, world_size)
        print(
            f"note: world size {world_size} does not divide the {shuffle.lanes} data lanes, so ranks share "
            f"lanes and read their row groups more than once; --data-lanes {lanes} avoids it (another "
            "data order)",
            flush=True,
        )
    lanes_per_rank = max(1, shuffle.lanes // world_size)
    itemsize = sources[0].index.dtype.itemsize
    buffers = lanes_per_rank * shuffle.group_windows * (cfg.seq_len + 1) * itemsize  # per source
    if buffers > cfg.data_cache_mb << 20:
        print(
            f"note: the shuffle buffers of a rank take about {buffers / 2**20:,.0f} MB per source, more "
            f"than --data-cache-mb {cfg.data_cache_mb}: row groups will be read more than once per epoch",
            flush=True,
        )


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ---------------------------------------------------------------- the run


def _run(cfg: TrainConfig, resume: bool, info: DistInfo) -> None:
    cfg = _resolved(cfg, info.dp_size)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    store = CheckpointStore(cfg.output, info.rank, info.local_rank, cfg.staging_dir and Path(cfg.staging_dir))
    latest = store.latest()
    if latest is not None and not resume:
        raise TrainingError(
            f"{store.output} already holds checkpoints ({latest}); pass --resume or use a new --output"
        )

    manifests = [load_manifest(uri) for uri in cfg.data]
    tokenizer_json = check_tokenizer(manifests[0])
    for other in manifests[1:]:
        check_tokenizer(other)
        if other.tokenizer["sha256"] != manifests[0].tokenizer["sha256"]:
            raise DataError(f"{other.uri} was tokenized with another tokenizer than {manifests[0].uri}")
    if cfg.verify_shards:
        _verify_shards(manifests, info)
    cache = cfg.data_cache_mb << 20
    sources = [WindowSource(m, "train", cfg.seq_len, cache, cfg.loader_workers) for m in manifests]
    weights = (
        [as_fraction(w) for w in cfg.data_weights]
        if cfg.data_weights
        else [Fraction(int(m.split("train")["tokens"])) for m in manifests]
    )
    shuffle = Shuffle.for_tokens(
        cfg.data_lanes, cfg.shuffle_chunk_tokens, cfg.shuffle_buffer_chunks, cfg.seq_len, cfg.batch_size
    )
    schedule = make_schedule([len(s) for s in sources], weights, cfg.batch_size, cfg.seed, shuffle)
    if info.is_main:
        _warn_about_reads(shuffle, sources, cfg, info.dp_size)
    val_sources = [
        WindowSource(m, "validation", cfg.seq_len, cache, cfg.loader_workers)
        if m.has_split("validation")
        else None
        for m in manifests
    ]
    val_counts = [len(v) if v is not None else 0 for v in val_sources]
    val_live = (
        [v for v in val_sources if v is not None and len(v) >= info.dp_size] if cfg.eval_every > 0 else []
    )
    if cfg.eval_every > 0 and not val_live and info.is_main:
        print("no validation windows in the manifest(s); validation is skipped", flush=True)

    start_step = 0
    saved_state: dict[str, Any] | None = None
    model_config = _model_config(cfg, manifests[0])
    if resume and latest is not None:
        saved_config = store.read_json(latest, "config.json")
        saved_state = store.read_json(latest, "train_state.json")
        model_config = ModelConfig.from_dict(saved_config["model"])
        config = checkpoint_config(cfg, model_config, manifests, tokenizer_json, sources, weights, val_counts)
        _check_resume(saved_config, saved_state, cfg, config, schedule)
        start_step = saved_state["step"]
        if info.is_main and saved_config["training"].get("preset") != cfg.preset:
            print(
                f"resuming with the checkpoint's model (preset {saved_config['training'].get('preset')}); "
                "--preset is ignored",
                flush=True,
            )
    elif info.is_main and resume:
        print(f"no checkpoint in {store.output}; starting from step 0", flush=True)
    init = initial_weights(cfg, manifests[0]) if cfg.resume_from and saved_state is None else None
    if init is not None:
        model_config = init.config
    config = checkpoint_config(cfg, model_config, manifests, tokenizer_json, sources, weights, val_counts)

    _seed_everything(cfg.seed)
    model = build_model(model_config, info.device, torch.Generator(info.device).manual_seed(cfg.seed))
    if init is not None:
        init.load(model)
    n_params = model.num_parameters()
    par = parallelize(
        model,
        info,
        cfg.parallel,
        cfg.dtype,
        cfg.compile,
        cfg.activation_checkpointing,
        cfg.sequence_parallel,
    )
    optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay, info.device)
    scheduler = build_scheduler(optimizer, cfg.max_steps, cfg.warmup_steps, cfg.min_lr_ratio)
    if saved_state is not None and latest is not None:
        restore(store, latest, model, optimizer, scheduler, saved_state, info.device)
        peak = scheduler.base_lrs[0]
        if info.is_main and not math.isclose(peak, cfg.lr):
            print(
                f"resuming the checkpoint's LR schedule (peak {peak:g}); --lr {cfg.lr:g} is ignored",
                flush=True,
            )

    # the ranks of one tensor-parallel group read the same windows: the first one traces them
    logs = RunLogs(store, info.rank, info.world_size, start_step, cfg.trace and info.rank % info.tp == 0)
    profiler = ProfilerWindow(cfg.profile_start, cfg.profile_steps, info.device, logs.root, info.rank)
    micro_batch = cfg.batch_size // info.dp_size // cfg.grad_accum
    tokens_per_step = cfg.batch_size * cfg.seq_len
    flops_token = flops_per_token(model_config, cfg.seq_len)
    peak, peak_source = peak_flops(info.device, cfg.dtype, cfg.peak_flops)
    if info.is_main:
        print(
            f"model {n_params:,} parameters | {info.world_size} rank(s) on {info.device} ({cfg.parallel}"
            f"{f', tp {info.tp}' if info.tp > 1 else ''}, {cfg.dtype}"
            f"{', compiled' if cfg.compile else ''}) | "
            f"{' + '.join(f'{len(s):,}' for s in sources)} train windows | start step {start_step} of "
            f"{cfg.max_steps} | peak {peak / 1e12 if peak else float('nan'):.3g} TFLOP/s ({peak_source})",
            flush=True,
        )

    def save(step: int) -> None:
        state = {
            "tokens_seen": step * tokens_per_step,
            "global_batch_size": cfg.batch_size,
            "seq_len": cfg.seq_len,
            "seed": cfg.seed,
            "world_size": info.world_size,
            "tp": info.tp,
            "parallel": cfg.parallel,
            "order": schedule.shuffle.to_json(),
            "position": schedule.position(step),
        }
        save_checkpoint(
            store, logs, info, step, model, optimizer, scheduler, config, state, tokenizer_json, cfg.keep_last
        )

    # each rank's mean loss, summed over the ranks (tensor-parallel ranks hold the same loss)
    pending = PendingSteps(store, divisor=info.world_size)

    stream = BatchStream(
        sources,
        schedule,
        info.dp_rank,
        info.dp_size,
        start_step,
        cfg.stop_at,
        cfg.prefetch_steps,
        pin_memory=info.device.type == "cuda",
    )
    model.train()
    window_start, data_wait = time.perf_counter(), 0.0
    window_losses: list[float] = []
    last_saved = start_step
    batches = iter(stream)
    try:
        for step in range(start_step, cfg.stop_at):
            wait_start = time.perf_counter()
            batch = next(batches)
            data_wait += time.perf_counter() - wait_start
            lr = optimizer.param_groups[0]["lr"]
            profiler.before_step(step)
            loss, grad_norm = train_step(par, batch, optimizer, scheduler, cfg, info.device)
            done = step + 1
            profiled = time.perf_counter()
            profile = profiler.after_step(done)
            if profile is not None:  # writing the profile does not count towards tokens/s
                logs.upload(profile)
                window_start += time.perf_counter() - profiled
            logs.trace.write(done, batch.windows, batch.sources)
            pending.add(done, loss, grad_norm)
            last = done == cfg.stop_at
            log_now = done % cfg.log_every == 0 or last or done == start_step + 1
            eval_now = bool(val_live) and (done % cfg.eval_every == 0 or done == cfg.max_steps)
            save_now = (cfg.save_every and done % cfg.save_every == 0) or last
            if not (log_now or eval_now or save_now):
                continue
            losses, norms = pending.settle()
            window_losses += losses
            if log_now:
                elapsed = time.perf_counter() - window_start
                tokens_per_s = len(window_losses) * tokens_per_step / max(elapsed, 1e-9)
                utilisation = tokens_per_s / info.world_size * flops_token / peak if peak else None
                logs.metric(
                    {
                        "type": "train",
                        "step": done,
                        "loss": sum(window_losses) / len(window_losses),
                        "lr": lr,
                        "grad_norm": norms[-1],
                        "tokens_per_s": tokens_per_s,
                        "mfu": utilisation,
                        "data_wait_s": data_wait,
                        "tokens_seen": done * tokens_per_step,
                        "position": schedule.position(done),
                        **cuda_memory(info.device),
                    }
                )
                window_losses, data_wait, window_start = [], 0.0, time.perf_counter()
            pause_start = time.perf_counter()  # evaluation and saving do not count towards tokens/s
            if eval_now:
                val = evaluate(par, val_live, cfg, info, micro_batch)
                weights_val = [len(v) for v in val_live]
                val_loss = sum(v * w for v, w in zip(val, weights_val, strict=True)) / sum(weights_val)
                record = {
                    "type": "val",
                    "step": done,
                    "val_loss": val_loss,
                    "val_ppl": math.exp(min(val_loss, 50.0)),
                }
                if len(val_live) > 1:
                    record["val_loss_by_source"] = val
                logs.metric(record)
            if save_now:
                save(done)
                last_saved = done
            window_start += time.perf_counter() - pause_start
    finally:
        if hasattr(batches, "close"):
            batches.close()
        profile = profiler.close(cfg.stop_at)
        if profile is not None:
            logs.upload(profile)
        logs.close()
        for source in sources + [v for v in val_sources if v is not None]:
            source.close()
    if last_saved == start_step and info.is_main:
        print(f"nothing to do: checkpoint is already at step {start_step} (--stop-at {cfg.stop_at})")


def train(cfg: TrainConfig, resume: bool = False) -> None:
    """Run training (inside or outside torchrun); ``resume`` continues from the latest checkpoint in
    ``cfg.output``."""
    run_distributed(_run, cfg, resume, cfg.dist_timeout_s, cfg.tp)


def main(argv: list[str] | None = None) -> int:
    cfg, resume = parse_args(argv)
    try:
        train(cfg, resume)
    except (TrainingError, ParallelError, DataError, CheckpointError, storage.StorageError) as exc:
        return cli_error(exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
