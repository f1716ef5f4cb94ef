"""Process group, device mesh and the parallel wrappers of a training run.

Ranks form a 2-D mesh ``(dp, tp)``: ``tp`` consecutive ranks hold one model replica split by
tensor parallelism, and the ``dp = world_size / tp`` replicas train on different data (rank
``r`` is data-parallel rank ``r // tp``). Inside a replica, each block's linears are split
Megatron-style with ``torch.distributed.tensor.parallel``: q/k/v and w1/w3 by output column (each
rank holds ``n_heads / tp`` heads and ``ffn_hidden / tp`` hidden units), wo and w2 by input row,
whose partial outputs are summed by one all-reduce per sublayer. With ``sequence_parallel`` the
norms and the residual stream are split along the sequence instead of replicated (the all-reduce
becomes a reduce-scatter, and an all-gather feeds each sublayer). Embedding and LM head stay
replicated over ``tp``. Across replicas the model is replicated by DDP or sharded by FSDP2
(``fully_shard`` on the ``dp`` mesh: with ``tp > 1``, 2-D sharded parameters).

Gradient clipping works on plain tensors and on DTensors of any mesh (:func:`clip_grad_norm`),
and DCP checkpoints of a TP/FSDP model load on any other layout.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

__all__ = [
    "DistInfo",
    "Parallel",
    "ParallelError",
    "apply_tensor_parallel",
    "available_cpus",
    "clip_grad_norm",
    "parallelize",
    "setup_distributed",
]


class ParallelError(RuntimeError):
    """A parallel layout that cannot run (world size, tp and model shape do not fit)."""


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    device: torch.device
    tp: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def dp_rank(self) -> int:
        """This rank's data-parallel rank: ranks of one tensor-parallel group read the same data."""
        return self.rank // self.tp

    @property
    def dp_size(self) -> int:
        return self.world_size // self.tp


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


def setup_distributed(timeout_s: float = 1800, tp: int = 1) -> DistInfo:
    """Join the torchrun process group when launched by torchrun (collectives wait at most
    ``timeout_s``); pick the device and thread count. ``tp`` must divide the world size."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
    if world_size % tp:
        raise ParallelError(f"--tp {tp} does not divide the world size {world_size}")
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        torch.set_float32_matmul_precision("high")  # TF32 matmuls for fp32 runs
    else:
        device = torch.device("cpu")
    torch.set_num_threads(max(1, available_cpus() // local_world_size))
    if "WORLD_SIZE" in os.environ and not dist.is_initialized():
        timeout = timedelta(seconds=timeout_s)
        if device.type == "cuda":
            dist.init_process_group(backend="nccl", device_id=device, timeout=timeout)
        else:
            dist.init_process_group(backend="gloo", timeout=timeout)
    return DistInfo(rank, world_size, local_rank, local_world_size, device, tp)


# ---------------------------------------------------------------- tensor parallel


def _check_tp(model: nn.Module, tp: int) -> None:
    config = model.config
    for name, size in (("n_heads", config.n_heads), ("n_kv_heads", config.n_kv_heads),
                       ("ffn_hidden", config.ffn_hidden)):  # fmt: skip
        if size % tp:
            raise ParallelError(f"--tp {tp} does not divide the model's {name} ({size})")


def apply_tensor_parallel(model: nn.Module, tp_mesh: Any, sequence_parallel: bool = False) -> None:
    """Split every block's linears over ``tp_mesh`` (column-wise q/k/v, w1/w3; row-wise wo, w2);
    with ``sequence_parallel`` also the norms and residual stream along the sequence."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        PrepareModuleInput,
        PrepareModuleOutput,
        RowwiseParallel,
        SequenceParallel,
        parallelize_module,
    )

    _check_tp(model, tp_mesh.size())
    columns, rows = (
        ColwiseParallel(),
        RowwiseParallel(output_layouts=Shard(1) if sequence_parallel else Replicate()),
    )
    for block in model.blocks:
        plan: dict[str, Any] = {
            "attn.wq": columns, "attn.wk": columns, "attn.wv": columns, "attn.wo": rows,
            "mlp.w1": columns, "mlp.w3": columns, "mlp.w2": rows,
        }  # fmt: skip
        if sequence_parallel:  # attention takes (x, cos, sin, kv_cache, start_pos, attn_mask)
            gather = Replicate()
            plan |= {
                "attn_norm": SequenceParallel(),
                "mlp_norm": SequenceParallel(),
                "attn": PrepareModuleInput(input_layouts=(Shard(1), None, None, None, None, None),
                                           desired_input_layouts=(gather, None, None, None, None, None)),
                "mlp": PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(gather,)),
            }  # fmt: skip
        parallelize_module(block, tp_mesh, plan)
    if sequence_parallel:  # the residual stream is split after the embedding, gathered at the end
        parallelize_module(model.norm, tp_mesh, SequenceParallel())
        parallelize_module(model, tp_mesh, {
            "tok_emb": PrepareModuleOutput(output_layouts=Replicate(), desired_output_layouts=Shard(1)),
            "norm": PrepareModuleOutput(output_layouts=Shard(1), desired_output_layouts=Replicate()),
        })  # fmt: skip


# ---------------------------------------------------------------- the wrapped model


@dataclass
class Parallel:
    """The model as trained: ``forward`` runs a training micro-batch, ``sync(last)`` says whether
    gradients are reduced after this micro-batch's backward."""

    model: nn.Module  # parameters, state dicts, evaluation
    forward: Callable[..., Any]
    sync: Callable[[bool], contextlib.AbstractContextManager[Any]]
    autocast: bool


def parallelize(
    model: nn.Module,
    info: DistInfo,
    parallel: str = "ddp",
    dtype: str = "fp32",
    compile: bool = False,
    activation_checkpointing: bool = False,
    sequence_parallel: bool = False,
) -> Parallel:
    """Apply activation checkpointing, tensor parallelism (``info.tp > 1``), FSDP2 or DDP over the
    data-parallel ranks, and torch.compile as asked."""
    model.activation_checkpointing = activation_checkpointing
    bf16 = dtype == "bf16"
    mesh = None
    if info.tp > 1 or parallel == "fsdp":
        if not dist.is_initialized():
            raise ParallelError("--parallel fsdp and --tp need a process group: launch with torchrun")
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh(info.device.type, (info.dp_size, info.tp), mesh_dim_names=("dp", "tp"))
    if info.tp > 1:
        apply_tensor_parallel(model, mesh["tp"], sequence_parallel)  # type: ignore[index]
    elif sequence_parallel:
        raise ParallelError("--sequence-parallel needs --tp > 1")
    if parallel == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        policy = (
            MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
            if bf16
            else MixedPrecisionPolicy()
        )
        dp_mesh = mesh["dp"]  # type: ignore[index]
        for block in model.blocks:
            if compile:
                block.compile()
            fully_shard(block, mesh=dp_mesh, mp_policy=policy)
        fully_shard(model, mesh=dp_mesh, mp_policy=policy)

        @contextlib.contextmanager
        def fsdp_sync(last: bool) -> Any:
            model.set_requires_gradient_sync(last)  # type: ignore[operator]
            yield

        return Parallel(model, model, fsdp_sync, autocast=False)
    if info.dp_size > 1:
        if info.tp > 1:
            raise ParallelError("--tp with several data-parallel groups needs --parallel fsdp")
        ddp = DistributedDataParallel(  # buffers (rotary tables) are the same on every rank
            model,
            device_ids=[info.local_rank] if info.device.type == "cuda" else None,
            broadcast_buffers=False,
        )
        forward = torch.compile(ddp) if compile else ddp
        return Parallel(
            model, forward, lambda last: contextlib.nullcontext() if last else ddp.no_sync(), bf16
        )
    forward = torch.compile(model) if compile else model
    return Parallel(model, forward, lambda last: contextlib.nullcontext(), bf16)


# ---------------------------------------------------------------- gradient clipping


def clip_grad_norm(parameters: Iterable[Tensor], max_norm: float) -> Tensor:
    """Clip gradients to a global L2 norm of ``max_norm`` and return the norm before clipping.

    Works for plain tensors and DTensors on any meshes at once (a TP model has both: split linears
    and replicated norms): each gradient's local squared norm is summed over the mesh dimensions it
    is sharded on, never over those it is replicated on. No host sync.
    """
    from torch.distributed.tensor import DTensor

    groups: dict[tuple[Any, tuple[int, ...]], list[Tensor]] = {}  # (mesh, sharded dims) -> local grads
    for param in parameters:
        grad = param.grad
        if grad is None:
            continue
        if isinstance(grad, DTensor):
            sharded = tuple(i for i, p in enumerate(grad.placements) if not p.is_replicate())
            groups.setdefault((grad.device_mesh, sharded), []).append(grad.to_local())
        else:
            groups.setdefault((None, ()), []).append(grad)
    if not groups:
        return torch.zeros(())
    device = next(iter(groups.values()))[0].device
    total = torch.zeros((), dtype=torch.float32, device=device)
    for (mesh, sharded), grads in groups.items():
        squares = torch.stack(torch._foreach_norm(grads)).float().pow(2).sum()
        for dim in sharded:
            dist.all_reduce(squares, group=mesh.get_group(dim))
        total += squares
    norm = total.sqrt()
    scale = (max_norm / (norm + 1e-6)).clamp(max=1.0)
    for grads in groups.values():
        torch._foreach_mul_(grads, scale.to(grads[0].dtype))
    return norm
