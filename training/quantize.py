"""Weight-only quantization for inference with torchao: int8 per output channel, int4 group-wise.

Every ``nn.Linear`` (attention, MLP, LM head) and the token embedding get quantized weights;
activations and norms stay in the model's float dtype. A tied embedding and LM head stay one
quantized tensor, which serves both the row lookup and the matmul.

- ``int8``: torchao ``Int8WeightOnlyConfig`` (symmetric, one scale per output channel, i.e. per
  vocabulary row for the embedding) for every linear and the embedding, on CPU and GPU.
- ``int4``: groups of ``group_size`` input channels with a scale and a zero point each. The block
  linears: torchao's tinygemm layouts, two values per byte (``Int4WeightOnlyConfig`` with the
  ``tile_packed_to_4d`` layout on CUDA, bfloat16; the prototype ``Int4OpaqueTensor`` on CPU). The
  embedding and LM head: ``IntxWeightOnlyConfig(int4, PerGroup)``, int4 values held one per byte,
  since torchao has no packed int4 layout that also serves row lookups; so int4 saves about half as
  much on the embedding as on the block linears.

torchao is imported only here (``pip install gristmill[quantize]``).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

__all__ = ["QUANTIZE_MODES", "quantize_model", "serializable_config", "weight_bytes"]

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
    device they are on, for inference only. int4 on CUDA runs in bfloat16 (the model is cast)."""
    from torchao.quantization import quantize_

    if mode not in QUANTIZE_MODES:
        raise ValueError(f"quantize mode {mode!r} is not one of {', '.join(QUANTIZE_MODES)}")
    device = next(model.parameters()).device
    if mode == "int4":
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear | nn.Embedding) and module.weight.shape[-1] % group_size:
                raise ValueError(f"int4: {name} has {module.weight.shape[-1]} input channels, not a "
                                 f"multiple of the group size {group_size}")  # fmt: skip
        if device.type == "cuda":
            model.to(torch.bfloat16)
    lm_head, tok_emb = getattr(model, "lm_head", None), getattr(model, "tok_emb", None)
    tied = lm_head is not None and tok_emb is not None and lm_head.weight is tok_emb.weight
    model.requires_grad_(False)
    linear, embedding = _configs(mode, group_size, device)

    lookup = lm_head if tied else tok_emb  # the one weight that serves row lookups

    quantize_(model, linear, filter_fn=lambda m, _: isinstance(m, nn.Linear) and m is not lookup)
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
