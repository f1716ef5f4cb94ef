"""Weight-only quantization for inference with torchao: int8 per output channel, int4 group-wise.

Every ``nn.Linear`` (attention, MLP, LM head) and the token embedding get quantized weights;
activations and norms stay in the model's float dtype. A tied embedding and LM head stay one
quantized tensor, which serves both the row lookup and the matmul.

- ``int8``: torchao ``Int8WeightOnlyConfig`` (symmetric, one scale per output channel, i.e. per
  vocabulary row for the embedding) for every linear and the embedding, on CPU and GPU.
- ``int4``: groups of ``group_size`` input channels with a scale and a zero point each. The
  linears: torchao's tinygemm layouts, two values per byte (``Int4WeightOnlyConfig`` with the
  ``tile_packed_to_4d`` layout on CUDA, bfloat16; the prototype ``Int4OpaqueTensor`` on CPU). A
  tied embedding and LM head: :class:`PackedInt4Embedding`, the same 4-bit groups packed two per
  byte in plain row order (torchao has no int4 layout that serves row lookups), whose head
  dequantizes a block of vocabulary rows at a time; an untied embedding: torchao's
  ``IntxWeightOnlyConfig(int4, PerGroup)`` (int4 values, one per byte).

torchao is imported only here (``pip install gristmill[quantize]``).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

__all__ = [
    "QUANTIZE_MODES",
    "PackedInt4Embedding",
    "TiedHead",
    "quantize_model",
    "serializable_config",
    "weight_bytes",
]

QUANTIZE_MODES = ("int8", "int4")
INT4_GROUP_SIZE = 64

logging.getLogger("torchao").setLevel(logging.ERROR)  # it logs missing optional GPU kernels at import


def _configs(mode: str, group_size: int, device: torch.device) -> tuple[Any, Any]:
    """torchao configs for (block linears, embedding and LM head)."""
    from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig, IntxWeightOnlyConfig
    from torchao.quantization.granularity import PerGroup

    if mode == "int8":
        return Int8WeightOnlyConfig(), Int8WeightOnlyConfig()
    embedding = IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(group_size))
    if device.type == "cuda":
        linear = Int4WeightOnlyConfig(
            group_size=group_size, int4_packing_format="tile_packed_to_4d", set_inductor_config=False
        )
    else:
        from torchao.prototype.quantization.int4.inference_workflow import PrototypeInt4WeightOnlyConfig

        linear = PrototypeInt4WeightOnlyConfig(group_size=group_size, set_inductor_config=False)
    return linear, embedding


class PackedInt4Embedding(nn.Module):
    """A token embedding in 4-bit groups: ``codes`` [V, D/2] (two per byte), per group a bfloat16
    ``scale`` and ``low`` [V, D/group_size] (weight = code * scale + low). ``forward`` looks rows up;
    :meth:`logits` is the tied LM head (``hidden @ weight.T``), dequantizing ``block_rows`` rows at
    a time so no full-precision copy of the matrix is ever held."""

    def __init__(
        self, weight: torch.Tensor, group_size: int = INT4_GROUP_SIZE, block_rows: int = 4096
    ) -> None:
        super().__init__()
        rows, dim = weight.shape
        self.dim, self.group_size, self.block_rows, self.dtype = dim, group_size, block_rows, weight.dtype
        groups = weight.detach().float().reshape(rows, dim // group_size, group_size)
        low, high = groups.amin(dim=-1, keepdim=True), groups.amax(dim=-1, keepdim=True)
        scale = ((high - low) / 15).clamp(min=1e-8).to(torch.bfloat16)
        low = low.to(torch.bfloat16)
        codes = (
            ((groups - low.float()) / scale.float()).round().clamp(0, 15).to(torch.uint8).reshape(rows, dim)
        )
        packed = codes[:, 0::2] | (codes[:, 1::2] << 4)
        self.codes = nn.Parameter(packed, requires_grad=False)
        self.scale = nn.Parameter(scale.squeeze(-1), requires_grad=False)
        self.low = nn.Parameter(low.squeeze(-1), requires_grad=False)

    def _rows(self, packed: torch.Tensor, scale: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        codes = torch.stack([packed & 15, packed >> 4], dim=-1).reshape(*packed.shape[:-1], self.dim)
        groups = codes.reshape(*codes.shape[:-1], -1, self.group_size).float()
        weight = groups * scale.float().unsqueeze(-1) + low.float().unsqueeze(-1)
        return weight.reshape(*codes.shape).to(self.dtype)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self._rows(self.codes[idx], self.scale[idx], self.low[idx])

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        blocks = []
        for start in range(0, self.codes.shape[0], self.block_rows):
            end = start + self.block_rows
            weight = self._rows(self.codes[start:end], self.scale[start:end], self.low[start:end])
            blocks.append(hidden @ weight.t())
        return torch.cat(blocks, dim=-1)


class TiedHead(nn.Module):
    """The LM head of a :class:`PackedInt4Embedding`."""

    def __init__(self, embedding: PackedInt4Embedding) -> None:
        super().__init__()
        self.embedding = [embedding]  # a plain list: not a submodule, so its weights count once

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.embedding[0].logits(hidden)


def serializable_config(mode: str, device: torch.device, group_size: int = INT4_GROUP_SIZE) -> Any:
    """The torchao config of an exported checkpoint's linears: one whose tensors safetensors can
    store (torchao cannot serialize the packed CPU int4 layout, so int4 on CPU keeps int4 values
    one per byte there)."""
    from torchao.quantization import Int8WeightOnlyConfig, IntxWeightOnlyConfig
    from torchao.quantization.granularity import PerGroup

    if mode == "int8":
        return Int8WeightOnlyConfig()
    if device.type == "cuda":
        return _configs(mode, group_size, device)[0]
    return IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(group_size))


def quantize_model(model: nn.Module, mode: str, group_size: int = INT4_GROUP_SIZE) -> nn.Module:
    """Quantize ``model``'s linear and embedding weights in place (``mode``: int8 or int4) on the
    device they are on, for inference only. int4 runs in bfloat16 (the model is cast; rotary
    tables stay float32): torchao's int4 kernels take bfloat16, and so do its scales."""
    from torchao.quantization import quantize_

    if mode not in QUANTIZE_MODES:
        raise ValueError(f"quantize mode {mode!r} is not one of {', '.join(QUANTIZE_MODES)}")
    device = next(model.parameters()).device
    if mode == "int4":
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear | nn.Embedding) and module.weight.shape[-1] % group_size:
                raise ValueError(f"int4: {name} has {module.weight.shape[-1]} input channels, not a "
                                 f"multiple of the group size {group_size}")  # fmt: skip
        model.to(torch.bfloat16)
        rotary = getattr(model, "rotary", None)
        if rotary is not None:
            model.rotary = type(rotary)(model.config).to(device)
    lm_head, tok_emb = getattr(model, "lm_head", None), getattr(model, "tok_emb", None)
    tied = lm_head is not None and tok_emb is not None and lm_head.weight is tok_emb.weight
    model.requires_grad_(False)
    linear, embedding = _configs(mode, group_size, device)

    lookup = lm_head if tied else tok_emb  # the one weight that serves row lookups

    quantize_(model, linear, filter_fn=lambda m, _: isinstance(m, nn.Linear) and m is not lookup)
    if tied and mode == "int4":
        model.tok_emb = PackedInt4Embedding(tok_emb.weight, group_size)  # type: ignore[union-attr]
        model.lm_head = TiedHead(model.tok_emb)
    else:
        quantize_(model, embedding, filter_fn=lambda m, _: m is lookup)
        if tied:
            tok_emb.weight = lm_head.weight  # type: ignore[union-attr]
    model.quantization = {"mode": mode, "group_size": group_size if mode == "int4" else None}
    return model.eval()


def _tensor_bytes(tensor: torch.Tensor) -> int:
    """Bytes a tensor holds, the inner tensors of a torchao subclass included."""
    flatten = getattr(tensor, "__tensor_flatten__", None)
    if flatten is None or type(tensor) in (torch.Tensor, nn.Parameter):
        return tensor.numel() * tensor.element_size()
    names, _ = flatten()
    return sum(_tensor_bytes(getattr(tensor, name)) for name in names)


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the model's distinct parameters (a tied weight counts once), quantized or not."""
    seen: set[int] = set()
    total = 0
    for param in model.parameters():
        if id(param) not in seen:
            seen.add(id(param))
            total += _tensor_bytes(param)
    return total
