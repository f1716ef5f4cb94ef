"""Llama-style decoder-only transformer in plain PyTorch.

Pre-norm blocks of RMSNorm -> causal self-attention (rotary positions, optional grouped-query
attention) and RMSNorm -> SwiGLU MLP, a final RMSNorm and an LM head tied to the token embedding by
default. Attention runs through ``scaled_dot_product_attention`` (grouped-query heads with
``enable_gqa``, no copies of keys and values). A preallocated :class:`KVCache` serves incremental
decoding: ``forward(idx, kv_cache=cache, start_pos=p)`` treats ``idx`` as the tokens at positions
``p .. p+T-1`` and rotates queries and keys with exactly those positions.

The embedding and LM head have ``padded_vocab_size`` rows (the vocabulary rounded up to
``vocab_multiple``, for matmul shapes GPUs like); logits beyond the vocabulary are never returned
and never take part in the loss. With targets, the loss is computed by
:func:`linear_cross_entropy` a chunk of rows at a time, so [B, T, V] logits are never materialised.
:func:`build_model` builds a model on the meta device and initializes it where it will run.

Every projection is a plain ``nn.Linear`` (training/quantize.py swaps in weight-only quantized
ones) and rotary frequencies come from one function, :func:`rope_inv_freq`, which applies
``rope_scaling`` (linear position interpolation, NTK-aware or YaRN) for contexts longer than the
pretraining one.
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
    # {"type": "linear" | "ntk" | "yarn", "factor": F, "original_max_seq_len": N}; None: plain rotary
    rope_scaling: dict[str, Any] | None = None
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    vocab_multiple: int = 64  # embedding/head rows: vocab_size rounded up to a multiple of this

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
        if self.rope_scaling is not None:
            self.rope_scaling = make_rope_scaling(**self.rope_scaling)
        if min(self.vocab_size, self.n_layers, self.max_seq_len, self.vocab_multiple) < 1:
            raise ValueError("vocab_size, n_layers, max_seq_len and vocab_multiple must be positive")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def padded_vocab_size(self) -> int:
        return self.vocab_multiple * math.ceil(self.vocab_size / self.vocab_multiple)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown ModelConfig keys: {sorted(unknown)}")
        return cls(**{"vocab_multiple": 1, **data})  # configs without the key have unpadded tables

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


ROPE_SCALING_TYPES = ("linear", "ntk", "yarn")
YARN_BETA_FAST, YARN_BETA_SLOW = 32.0, 1.0  # YaRN's ramp bounds (rotations), as in the paper and HF


def make_rope_scaling(type: str, factor: float, original_max_seq_len: int | None = None) -> dict[str, Any]:
    """A checked ``rope_scaling`` entry. ``linear``: positions divided by ``factor`` (position
    interpolation); ``ntk``: the NTK-aware rotary base ``theta * factor ** (d / (d - 2))``;
    ``yarn``: YaRN's per-frequency blend of interpolation and extrapolation with its attention
    temperature, which needs the context the model was pretrained on (``original_max_seq_len``)."""
    if type not in ROPE_SCALING_TYPES:
        raise ValueError(f"rope_scaling type {type!r} is not one of {', '.join(ROPE_SCALING_TYPES)}")
    if not factor >= 1.0:
        raise ValueError(f"rope_scaling factor must be >= 1, got {factor}")
    if type == "yarn" and not original_max_seq_len:
        raise ValueError("yarn rope_scaling needs original_max_seq_len (the pretraining context)")
    if original_max_seq_len is not None and original_max_seq_len < 1:
        raise ValueError(f"original_max_seq_len must be positive, got {original_max_seq_len}")
    return {"type": type, "factor": float(factor), "original_max_seq_len": original_max_seq_len}


def ntk_theta(config: ModelConfig) -> float:
    """The rotary base of NTK-aware scaling (the plain base without it)."""
    scaling, dim = config.rope_scaling, config.head_dim
    if scaling is None or scaling["type"] != "ntk":
        return config.rope_theta
    return config.rope_theta * scaling["factor"] ** (dim / (dim - 2))


def _yarn_ramp(config: ModelConfig, base: float) -> Tensor:
    """1 for the frequency pairs YaRN keeps (many rotations in the original context), 0 for those
    it interpolates, linear in between (the correction range, floored and ceiled as in HF)."""
    dim, original = config.head_dim, config.rope_scaling["original_max_seq_len"]  # type: ignore[index]

    def correction_dim(rotations: float) -> float:
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low = max(math.floor(correction_dim(YARN_BETA_FAST)), 0)
    high = min(math.ceil(correction_dim(YARN_BETA_SLOW)), dim - 1)
    high = high + 0.001 if low == high else high
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    return 1 - ramp


def rope_inv_freq(config: ModelConfig) -> Tensor:
    """Inverse rotary frequencies per pair of head dimensions, with ``config.rope_scaling``."""
    base = ntk_theta(config)
    exponents = torch.arange(0, config.head_dim, 2, dtype=torch.float32) / config.head_dim
    inv_freq = 1.0 / (base**exponents)
    scaling = config.rope_scaling
    if scaling is None or scaling["type"] == "ntk":
        return inv_freq
    if scaling["type"] == "linear":
        return inv_freq / scaling["factor"]
    keep = _yarn_ramp(config, base)
    return inv_freq / scaling["factor"] * (1 - keep) + inv_freq * keep


def with_rope_scaling(
    config: ModelConfig, type: str | None, factor: float, original_max_seq_len: int
) -> ModelConfig:
    """``config`` with rotary scaling ``type`` by ``factor`` (None: none) for a model pretrained on
    ``original_max_seq_len`` positions; ``max_seq_len`` grows to ``factor`` times that context."""
    if type is None:
        return config.with_overrides(rope_scaling=None)
    scaling = make_rope_scaling(type, factor, original_max_seq_len)
    longest = max(config.max_seq_len, math.ceil(original_max_seq_len * factor))
    return config.with_overrides(rope_scaling=scaling, max_seq_len=longest)


def rope_attention_factor(config: ModelConfig) -> float:
    """YaRN's factor on cos/sin (``0.1 ln(factor) + 1``); 1 otherwise."""
    scaling = config.rope_scaling
    if scaling is None or scaling["type"] != "yarn" or scaling["factor"] <= 1:
        return 1.0
    return 0.1 * math.log(scaling["factor"]) + 1.0


class RotaryEmbedding(nn.Module):
    """Precomputed cos/sin tables for positions ``0 .. max_seq_len-1`` (not saved in state dicts)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        positions = torch.arange(config.max_seq_len, dtype=torch.float32)
        angles = torch.outer(positions, rope_inv_freq(config))
        angles = torch.cat([angles, angles], dim=-1)  # rotate-half layout: [T, head_dim]
        scale = rope_attention_factor(config)
        self.register_buffer("cos", angles.cos() * scale, persistent=False)
        self.register_buffer("sin", angles.sin() * scale, persistent=False)

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


def document_mask(doc_ids: Tensor) -> Tensor:
    """Boolean attention mask [B, 1, T, T] for packed sequences: query i sees key j <= i of the
    same document (``doc_ids`` [B, T]), so no position attends across examples."""
    t = doc_ids.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool, device=doc_ids.device).tril()
    return ((doc_ids[:, :, None] == doc_ids[:, None, :]) & causal).unsqueeze(1)


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
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        kv_cache: KVCache | None = None,
        start_pos: int = 0,
        attn_mask: Tensor | None = None,
    ) -> Tensor:
        """``attn_mask`` (bool, [B, 1, T, T], True: may attend) replaces the causal mask. Head
        counts come from the projections' outputs, so a tensor-parallel rank runs its own heads."""
        b, t, _ = x.shape
        q = self.wq(x).view(b, t, -1, self.head_dim).transpose(1, 2)
        k = self.wk(x).view(b, t, -1, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(b, t, -1, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_idx, start_pos, k, v)
        gqa = self.n_kv_heads != self.n_heads
        if attn_mask is not None:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, enable_gqa=gqa)
        elif k.shape[2] == t:  # no earlier positions: the plain causal fast path
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        else:
            mask = _causal_mask(t, k.shape[2], start_pos, x.device)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        return self.wo(y.transpose(1, 2).reshape(b, t, -1))


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
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        kv_cache: KVCache | None = None,
        start_pos: int = 0,
        attn_mask: Tensor | None = None,
    ) -> Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin, kv_cache, start_pos, attn_mask)
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
        self.tok_emb = nn.Embedding(config.padded_vocab_size, config.d_model)
        self.rotary = RotaryEmbedding(config)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.padded_vocab_size, bias=False)
        self.reset_parameters()
        if config.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Normal(0, 0.02) weights; residual output projections scaled by 1/sqrt(2 * n_layers).
        A tied LM head is the embedding and is drawn once, as the embedding."""
        out_std = 0.02 / math.sqrt(2 * self.config.n_layers)
        for module in self.modules():
            if module is self.lm_head and self.config.tie_embeddings:
                continue
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=0.02, generator=generator)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)
        for block in self.blocks:
            nn.init.normal_(block.attn.wo.weight, mean=0.0, std=out_std, generator=generator)
            nn.init.normal_(block.mlp.w2.weight, mean=0.0, std=out_std, generator=generator)

    def init_weights(self, generator: torch.Generator | None = None) -> None:
        """Initialize every parameter and buffer in place where they are (after ``to_empty``):
        the weights, the rotary tables and the tied head."""
        self.rotary = RotaryEmbedding(self.config).to(self.tok_emb.weight.device)
        self.reset_parameters(generator)
        if self.config.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight

    def num_parameters(self) -> int:
        """Distinct parameters (a tied embedding counts once)."""
        return sum(p.numel() for p in self.parameters())

    def new_kv_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        weight = self.norm.weight  # the activations' device and dtype, whatever the embedding's format
        return KVCache(self.config, batch_size, max_len, device=weight.device, dtype=weight.dtype)

    def forward(
        self,
        idx: Tensor,
        targets: Tensor | None = None,
        kv_cache: KVCache | None = None,
        start_pos: int = 0,
        doc_ids: Tensor | None = None,
    ) -> tuple[Tensor | None, Tensor | None]:
        """Without ``targets``: (logits [B, T, vocab_size] for tokens at positions ``start_pos ..``,
        None). With them: (None, mean cross-entropy over the targets that are not -100), computed
        without materialising the logits. ``doc_ids`` [B, T] (packed sequences): a position
        attends only to earlier positions with the same id (:func:`document_mask`)."""
        _, t = idx.shape
        cos, sin = self.rotary(start_pos, t)
        x = self.tok_emb(idx)
        mask = document_mask(doc_ids) if doc_ids is not None else None
        recompute = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            if recompute and kv_cache is None:
                x = checkpoint(block, x, cos, sin, None, 0, mask, use_reentrant=False)
            else:
                x = block(x, cos, sin, kv_cache, start_pos, mask)
        hidden = self.norm(x)
        if targets is None:
            return self.lm_head(hidden)[..., : self.config.vocab_size], None
        flat, weight = hidden.reshape(-1, hidden.shape[-1]), self.lm_head.weight
        return None, linear_cross_entropy(flat, weight, targets.reshape(-1), self.config.vocab_size)


def build_model(
    config: ModelConfig, device: torch.device | str, generator: torch.Generator | None = None
) -> Transformer:
    """A model allocated and initialized directly on ``device``: built on the meta device first, so
    no full copy is ever made on the host; the same generator state gives the same weights as
    ``Transformer(config).init_weights(generator)`` on that device."""
    with torch.device("meta"):
        model = Transformer(config)
    model.to_empty(device=device)
    model.init_weights(generator)
    return model


# ---------------------------------------------------------------- loss

IGNORE_INDEX = -100
CE_CHUNK_ELEMENTS = 1 << 26  # logits per chunk of linear_cross_entropy: 256 MB in float32


def _compute_dtype(tensor: Tensor) -> torch.dtype:
    device = tensor.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else tensor.dtype


def _chunk_logits(hidden: Tensor, weight: Tensor, vocab_size: int) -> Tensor:
    """float32 logits of one chunk, the padded columns at -inf (so they get no probability)."""
    logits = (hidden @ weight.t()).float()
    if logits.shape[1] > vocab_size:
        logits[:, vocab_size:] = float("-inf")
    return logits


class _LinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of ``hidden @ weight.T``. The forward pass also computes the gradients of
    ``hidden`` and ``weight`` chunk by chunk (the loss is a graph output, so only a scalar can flow
    back); backward scales them by the incoming gradient. Three matmuls per chunk, as autograd
    would do, and no tensor of the size of the logits outlives a chunk."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, hidden: Tensor, weight: Tensor, targets: Tensor, vocab_size: int, chunk_rows: int
    ) -> Tensor:
        dtype = _compute_dtype(hidden)
        with torch.autocast(hidden.device.type, enabled=False):
            h_all, w = hidden.to(dtype), weight.to(dtype)
            valid_all = targets != IGNORE_INDEX
            scale = 1.0 / valid_all.sum().clamp(min=1).float()
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            grad_hidden = torch.empty_like(hidden)
            grad_weight = torch.zeros_like(weight, dtype=torch.float32)
            for start in range(0, hidden.shape[0], chunk_rows):
                h = h_all[start : start + chunk_rows]
                valid = valid_all[start : start + chunk_rows]
                target = torch.where(valid, targets[start : start + chunk_rows], 0).unsqueeze(1)
                logits = _chunk_logits(h, w, vocab_size)
                lse = torch.logsumexp(logits, dim=1, keepdim=True)
                total += ((lse - logits.gather(1, target)).squeeze(1) * valid).sum()
                grad = logits.sub_(lse).exp_()  # softmax, in place of the logits
                grad.scatter_add_(1, target, torch.full_like(target, -1, dtype=grad.dtype))
                grad.mul_((valid * scale).unsqueeze(1))
                grad = grad.to(dtype)
                grad_hidden[start : start + chunk_rows] = grad @ w
                grad_weight += (grad.t() @ h).float()
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        return total * scale

    @staticmethod
    def backward(ctx: Any, grad_loss: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        grad_hidden, grad_weight = ctx.saved_tensors
        return (
            grad_hidden * grad_loss.to(grad_hidden.dtype),
            (grad_weight * grad_loss).to(ctx.weight_dtype),
            None,
            None,
            None,
        )


def linear_cross_entropy(
    hidden: Tensor, weight: Tensor, targets: Tensor, vocab_size: int, chunk_rows: int | None = None
) -> Tensor:
    """Mean cross-entropy of the logits ``hidden @ weight.T`` (columns from ``vocab_size`` on left
    out) against ``targets`` (-100: ignored), ``chunk_rows`` rows at a time (default: chunks of
    about ``CE_CHUNK_ELEMENTS`` logits). ``hidden`` is [N, D], ``weight`` [V, D], ``targets`` [N]."""
    rows = chunk_rows or max(1, CE_CHUNK_ELEMENTS // weight.shape[0])
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return _LinearCrossEntropy.apply(hidden, weight, targets, vocab_size, rows)
    dtype = _compute_dtype(hidden)
    with torch.autocast(hidden.device.type, enabled=False):
        h_all, w = hidden.to(dtype), weight.to(dtype)
        valid_all = targets != IGNORE_INDEX
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], rows):
            valid = valid_all[start : start + rows]
            target = torch.where(valid, targets[start : start + rows], 0)
            logits = _chunk_logits(h_all[start : start + rows], w, vocab_size)
            losses = F.cross_entropy(logits, target, reduction="none")
            total += (losses * valid).sum()
        return total / valid_all.sum().clamp(min=1).float()
