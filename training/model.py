"""Llama-style decoder-only transformer in plain PyTorch.

Pre-norm blocks of RMSNorm -> causal self-attention (rotary positions, optional grouped-query
attention) and RMSNorm -> SwiGLU MLP, a final RMSNorm and an LM head tied to the token embedding by
default. Attention runs through ``scaled_dot_product_attention``. A preallocated :class:`KVCache`
serves incremental decoding: ``forward(idx, kv_cache=cache, start_pos=p)`` treats ``idx`` as the
tokens at positions ``p .. p+T-1`` and rotates queries and keys with exactly those positions.

Every projection is a plain ``nn.Linear`` and rotary frequencies come from one function
(:func:`rope_inv_freq`), so quantized linears or rotary scaling can be swapped in at one place.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


@dataclass
class ModelConfig:
    """Shape of the model. ``n_kv_heads`` and ``ffn_hidden`` are resolved in ``__post_init__``."""

    vocab_size: int = 8192
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int | None = None  # None: same as n_heads (plain multi-head attention)
    ffn_hidden: int | None = None  # None: 8/3 * d_model; always rounded up to multiple_of
    multiple_of: int = 64
    max_seq_len: int = 1024
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True

    def __post_init__(self) -> None:
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        hidden = self.ffn_hidden if self.ffn_hidden is not None else int(8 * self.d_model / 3)
        self.ffn_hidden = self.multiple_of * math.ceil(hidden / self.multiple_of)
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads {self.n_heads} is not divisible by n_kv_heads {self.n_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim {self.head_dim} must be even for rotary embeddings")
        if min(self.vocab_size, self.n_layers, self.max_seq_len) < 1:
            raise ValueError("vocab_size, n_layers and max_seq_len must be positive")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown ModelConfig keys: {sorted(unknown)}")
        return cls(**data)

    def with_overrides(self, **changes: Any) -> ModelConfig:
        """A copy with some fields changed. Resolved fields (n_kv_heads, ffn_hidden) keep their
        values unless they are among the changes."""
        return replace(self, **changes)


# vocab_size is a placeholder: training sets it from the tokenizer in the shard manifest.
PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(d_model=128, n_layers=2, n_heads=4, max_seq_len=256),
    "small": ModelConfig(d_model=256, n_layers=4, n_heads=4, max_seq_len=512),
    # ~14-16M parameters with an 8k-16k vocabulary: the CPU benchmark model.
    "15m": ModelConfig(d_model=384, n_layers=6, n_heads=6, ffn_hidden=1152, max_seq_len=512),
    "gpt2-124m": ModelConfig(d_model=768, n_layers=12, n_heads=12, ffn_hidden=2048, max_seq_len=1024),
    "1b": ModelConfig(d_model=2048, n_layers=16, n_heads=16, n_kv_heads=8, ffn_hidden=8192, max_seq_len=2048),
}


class RMSNorm(nn.Module):
    """Root-mean-square layer norm, computed in float32."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return (normed * self.weight.float()).type_as(x)


def rope_inv_freq(config: ModelConfig) -> Tensor:
    """Inverse rotary frequencies per pair of head dimensions (the place to add rotary scaling)."""
    exponents = torch.arange(0, config.head_dim, 2, dtype=torch.float32) / config.head_dim
    return 1.0 / (config.rope_theta**exponents)


class RotaryEmbedding(nn.Module):
    """Precomputed cos/sin tables for positions ``0 .. max_seq_len-1`` (not saved in state dicts)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        positions = torch.arange(config.max_seq_len, dtype=torch.float32)
        angles = torch.outer(positions, rope_inv_freq(config))
        angles = torch.cat([angles, angles], dim=-1)  # rotate-half layout: [T, head_dim]
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, start_pos: int, length: int) -> tuple[Tensor, Tensor]:
        end = start_pos + length
        if end > self.cos.shape[0]:
            raise ValueError(f"positions up to {end} exceed max_seq_len {self.cos.shape[0]}")
        return self.cos[start_pos:end], self.sin[start_pos:end]


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``x`` of shape [B, H, T, head_dim] by the angles of its T positions."""
    xf = x.float()
    half = xf.shape[-1] // 2
    rotated = torch.cat([-xf[..., half:], xf[..., :half]], dim=-1)
    return (xf * cos + rotated * sin).type_as(x)


class KVCache:
    """Preallocated keys and values per layer, shape [B, n_kv_heads, max_len, head_dim]."""

    def __init__(
        self,
        config: ModelConfig,
        batch_size: int,
        max_len: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.max_len = max_len or config.max_seq_len
        shape = (batch_size, config.n_kv_heads, self.max_len, config.head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layers)]

    def update(self, layer: int, start_pos: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store k/v for positions ``start_pos ..`` and return all keys/values up to them."""
        end = start_pos + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions, asked for {end}")
        self.keys[layer][:, :, start_pos:end] = k
        self.values[layer][:, :, start_pos:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]


def _causal_mask(q_len: int, k_len: int, start_pos: int, device: torch.device) -> Tensor | None:
    """Boolean mask letting query i (at position start_pos+i) see keys 0..start_pos+i."""
    if q_len == 1:
        return None  # a single new token sees every cached position
    return torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril(diagonal=start_pos)


class Attention(nn.Module):
    """Causal self-attention with rotary positions and optional grouped-query key/value heads."""

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads = config.n_heads
        self.n_kv_heads = config.n_kv_heads
        self.head_dim = config.head_dim
        self.wq = nn.Linear(config.d_model, config.n_heads * config.head_dim, bias=False)
        self.wk = nn.Linear(config.d_model, config.n_kv_heads * config.head_dim, bias=False)
        self.wv = nn.Linear(config.d_model, config.n_kv_heads * config.head_dim, bias=False)
        self.wo = nn.Linear(config.n_heads * config.head_dim, config.d_model, bias=False)

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, kv_cache: KVCache | None = None, start_pos: int = 0
    ) -> Tensor:
        b, t, _ = x.shape
        q = self.wq(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.wk(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_idx, start_pos, k, v)
        if self.n_kv_heads != self.n_heads:
            repeat = self.n_heads // self.n_kv_heads
            k = k.repeat_interleave(repeat, dim=1)
            v = v.repeat_interleave(repeat, dim=1)
        if k.shape[2] == t:  # no earlier positions: the plain causal fast path
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            mask = _causal_mask(t, k.shape[2], start_pos, x.device)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.wo(y.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim))


class SwiGLU(nn.Module):
    """Gated MLP: w2(silu(w1 x) * w3 x)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.w1 = nn.Linear(config.d_model, config.ffn_hidden, bias=False)
        self.w3 = nn.Linear(config.d_model, config.ffn_hidden, bias=False)
        self.w2 = nn.Linear(config.ffn_hidden, config.d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    """One pre-norm transformer block."""

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.d_model, config.norm_eps)
        self.attn = Attention(config, layer_idx)
        self.mlp_norm = RMSNorm(config.d_model, config.norm_eps)
        self.mlp = SwiGLU(config)

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, kv_cache: KVCache | None = None, start_pos: int = 0
    ) -> Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin, kv_cache, start_pos)
        return x + self.mlp(self.mlp_norm(x))


class Transformer(nn.Module):
    """Decoder-only language model.

    ``activation_checkpointing = True`` recomputes each block's activations in the backward pass
    (non-reentrant ``torch.utils.checkpoint``) instead of storing them.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.activation_checkpointing = False
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.rotary = RotaryEmbedding(config)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.reset_parameters()
        if config.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight

    def reset_parameters(self) -> None:
        """Normal(0, 0.02) weights; residual output projections scaled by 1/sqrt(2 * n_layers)."""
        out_std = 0.02 / math.sqrt(2 * self.config.n_layers)
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)
        for block in self.blocks:
            nn.init.normal_(block.attn.wo.weight, mean=0.0, std=out_std)
            nn.init.normal_(block.mlp.w2.weight, mean=0.0, std=out_std)

    def num_parameters(self) -> int:
        """Distinct parameters (a tied embedding counts once)."""
        return sum(p.numel() for p in self.parameters())

    def new_kv_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        weight = self.tok_emb.weight
        return KVCache(self.config, batch_size, max_len, device=weight.device, dtype=weight.dtype)

    def forward(
        self,
        idx: Tensor,
        targets: Tensor | None = None,
        kv_cache: KVCache | None = None,
        start_pos: int = 0,
    ) -> tuple[Tensor, Tensor | None]:
        """Logits [B, T, vocab] for tokens at positions ``start_pos ..``, and the mean
        cross-entropy against ``targets`` when given."""
        _, t = idx.shape
        cos, sin = self.rotary(start_pos, t)
        x = self.tok_emb(idx)
        recompute = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            if recompute and kv_cache is None:
                x = checkpoint(block, x, cos, sin, use_reentrant=False)
            else:
                x = block(x, cos, sin, kv_cache, start_pos)
        logits = self.lm_head(self.norm(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.reshape(-1))
        return logits, loss
