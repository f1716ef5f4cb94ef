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

# Dense peak FLOP/s (bf16, fp32 through TF32 matmuls) by the exact name torch.cuda.get_device_name
# reports, vendor prefix ("NVIDIA ", "AMD ") left out. Sources: the vendors' data sheets (dense,
# i.e. half the "with sparsity" figures).
_SXM_HOPPER = (989.4e12, 494.7e12)
_NVL_HOPPER = (835.5e12, 417.5e12)
_PCIE_HOPPER = (756e12, 378e12)
GPU_PEAKS: dict[str, tuple[float, float]] = {
    "H100 80GB HBM3": _SXM_HOPPER,  # H100 SXM5
    "H100 PCIe": _PCIE_HOPPER,
    "H100 NVL": _NVL_HOPPER,
    "H200": _SXM_HOPPER,
    "H200 NVL": _NVL_HOPPER,
    "GH200 480GB": _SXM_HOPPER,
    "H800": _SXM_HOPPER,
    "H800 PCIe": _PCIE_HOPPER,
    "B200": (2250e12, 1125e12),
    "A100-SXM4-40GB": (312e12, 156e12),
    "A100-SXM4-80GB": (312e12, 156e12),
    "A100-PCIE-40GB": (312e12, 156e12),
    "A100 80GB PCIe": (312e12, 156e12),
    "L40S": (362.05e12, 183e12),
    "L40": (181.05e12, 90.5e12),
    "L4": (121e12, 60e12),
    "A10": (125e12, 62.5e12),
    "Instinct MI300X": (1307.4e12, 653.7e12),
    "Instinct MI300X VF": (1307.4e12, 653.7e12),  # the virtual function of cloud VMs
}


def gpu_peak(name: str, dtype: str) -> float | None:
    """Peak FLOP/s of the GPU called ``name`` for ``dtype``; None for a name not in the table."""
    key = " ".join(name.split())
    for vendor in ("NVIDIA ", "AMD "):
        key = key.removeprefix(vendor)
    peaks = GPU_PEAKS.get(key)
    return None if peaks is None else peaks[0] if dtype == "bf16" else peaks[1]


def matmul_params(config: ModelConfig) -> int:
    """Parameters that take part in matmuls: every linear layer, LM head (padded rows) included."""
    d, hd = config.d_model, config.head_dim
    assert config.n_kv_heads is not None and config.ffn_hidden is not None
    attn = 2 * d * config.n_heads * hd + 2 * d * config.n_kv_heads * hd
    mlp = 3 * d * config.ffn_hidden
    return config.n_layers * (attn + mlp) + d * config.padded_vocab_size


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
        peak = gpu_peak(name, dtype)
        if peak is not None:
            return peak, f"table: {name}"
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
