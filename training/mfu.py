"""Model FLOPs utilisation: FLOPs per token of the model and peak FLOP/s per device.

FLOPs per trained token follow the PaLM convention: ``6 * N`` for the matmul parameters ``N``
(every linear layer and the LM head, not the embedding lookup) plus ``12 * n_layers * d_model *
seq_len`` for attention scores and values (forward + backward, causal mask not discounted).
MFU = achieved tokens/s per device x FLOPs per token / the device's dense peak for the compute
dtype. Peaks come from the vendors' data sheets (dense, no sparsity); CPUs get an estimate from the
vector width and clock. ``--peak-flops`` or ``GRISTMILL_PEAK_FLOPS`` (FLOP/s per device) overrides.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from training.model import ModelConfig

# (substring of torch.cuda.get_device_name(), peak dense FLOP/s for bf16, for fp32 via TF32).
# Checked in order: the first match wins.
GPU_PEAKS: list[tuple[str, float, float]] = [
    ("H100 PCIe", 756e12, 378e12),
    ("H100", 989.4e12, 494.7e12),  # SXM5 (HBM3)
    ("H200", 989.4e12, 494.7e12),
    ("GH200", 989.4e12, 494.7e12),
    ("A100", 312e12, 156e12),
    ("L40S", 362e12, 183e12),
    ("L4", 121e12, 60e12),
    ("A10", 125e12, 62.5e12),
]


def matmul_params(config: ModelConfig) -> int:
    """Parameters that take part in matmuls: every linear layer, LM head included."""
    d, hd = config.d_model, config.head_dim
    assert config.n_kv_heads is not None and config.ffn_hidden is not None
    attn = 2 * d * config.n_heads * hd + 2 * d * config.n_kv_heads * hd
    mlp = 3 * d * config.ffn_hidden
    return config.n_layers * (attn + mlp) + d * config.vocab_size


def flops_per_token(config: ModelConfig, seq_len: int) -> float:
    """Training FLOPs (forward + backward) per token at sequence length ``seq_len``."""
    return 6.0 * matmul_params(config) + 12.0 * config.n_layers * config.d_model * seq_len


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _cpu_ghz() -> float:
    try:
        return int(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text()) / 1e6
    except (OSError, ValueError):
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return float(line.split(":", 1)[1]) / 1e3
    except (OSError, ValueError):
        pass
    return 2.5


def cpu_peak_flops(threads: int, dtype: str) -> float:
    """Rough peak of ``threads`` cores: clock x FLOPs/cycle (two FMA units of the widest vectors)."""
    flags = _cpu_flags()
    if "avx512f" in flags:
        per_cycle = 64.0
    elif "avx2" in flags and "fma" in flags:
        per_cycle = 32.0
    else:
        per_cycle = 8.0
    if dtype == "bf16" and "amx_bf16" in flags:
        per_cycle = 1024.0
    elif dtype == "bf16" and "avx512_bf16" in flags:
        per_cycle *= 2
    return threads * _cpu_ghz() * 1e9 * per_cycle


def peak_flops(device: torch.device, dtype: str, override: float | None = None) -> tuple[float | None, str]:
    """(peak FLOP/s of one device for ``dtype``, where the number came from); None if unknown."""
    if override is None and os.environ.get("GRISTMILL_PEAK_FLOPS"):
        override = float(os.environ["GRISTMILL_PEAK_FLOPS"])
    if override:
        return override, "override"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, bf16, fp32 in GPU_PEAKS:
            if key in name:
                return (bf16 if dtype == "bf16" else fp32), f"table: {key}"
        return None, f"unknown GPU {name!r}: pass --peak-flops"
    if device.type == "cpu":
        return cpu_peak_flops(torch.get_num_threads(), dtype), "cpu estimate"
    return None, f"no peak for device type {device.type}"


def mfu(
    tokens_per_s_per_device: float, config: ModelConfig, seq_len: int, peak: float | None
) -> float | None:
    """Achieved model FLOP/s over peak, or None without a peak."""
    if not peak:
        return None
    return tokens_per_s_per_device * flops_per_token(config, seq_len) / peak
