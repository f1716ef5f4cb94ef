"""Held-out evaluation: loss, perplexity and bits per byte of a model on raw texts.

Texts are tokenized the way the token shards hold documents (special-token strings in the text stay
ordinary text, docs/shard-format.md) and joined the way training windows see them: end-of-text after
every document, and one before the first, so each document is predicted from an end-of-text as in
training. The stream is cut into windows of ``seq_len`` inputs that share no context: window ``k``
reads tokens ``k*seq_len .. (k+1)*seq_len - 1`` and predicts the next token at each, so every token
after the leading end-of-text is scored exactly once (each document's tokens and the end-of-text
that closes it) and no position sees across a window start.

``bits_per_byte`` is the total loss in bits over the UTF-8 bytes of the texts: unlike per-token
loss, it compares models with different tokenizers.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import nn

__all__ = [
    "EOT",
    "evaluate_checkpoint",
    "evaluate_texts",
    "evaluation_windows",
    "format_result",
    "token_stream",
]

EOT = "<|endoftext|>"
IGNORE_INDEX = -100  # targets the loss skips (F.cross_entropy's default ignore_index)
LOGITS_PER_CHUNK = 1 << 26  # logits materialised at once (256 MB in float32)


def encode_documents(tokenizer: Tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text as the pipeline encodes documents: no added special tokens, and
    special-token strings inside the text encoded as ordinary text."""
    literal = tokenizer.encode_special_tokens
    tokenizer.encode_special_tokens = True
    try:
        encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
        return [e.ids for e in encode(list(texts), add_special_tokens=False)]
    finally:
        tokenizer.encode_special_tokens = literal


def token_stream(tokenizer: Tokenizer, texts: Sequence[str], eot_id: int) -> np.ndarray:
    """``[eot, doc_0..., eot, doc_1..., eot, ...]``: the documents as training windows see them."""
    pieces = [np.array([eot_id], dtype=np.int64)]
    for ids in encode_documents(tokenizer, texts):
        pieces += [np.asarray(ids, dtype=np.int64), np.array([eot_id], dtype=np.int64)]
    return np.concatenate(pieces)


def evaluation_windows(stream: np.ndarray, seq_len: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets) of shape [n_windows, seq_len] scoring every token of ``stream`` after the
    first exactly once; the last window is padded (inputs with ``pad_id``, targets ignored)."""
    n_targets = len(stream) - 1
    n_windows = max(1, math.ceil(n_targets / seq_len))
    inputs = np.full((n_windows, seq_len), pad_id, dtype=np.int64)
    targets = np.full((n_windows, seq_len), IGNORE_INDEX, dtype=np.int64)
    inputs.reshape(-1)[:n_targets] = stream[:-1]
    targets.reshape(-1)[:n_targets] = stream[1:]
    return inputs, targets


def _batches(
    inputs: np.ndarray, targets: np.ndarray, batch_size: int, device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
    pin = device.type == "cuda"
    for start in range(0, len(inputs), batch_size):
        x = torch.from_numpy(inputs[start : start + batch_size])
        y = torch.from_numpy(targets[start : start + batch_size])
        if pin:
            x, y = x.pin_memory(), y.pin_memory()
        valid = int((targets[start : start + batch_size] != IGNORE_INDEX).sum())
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True), valid


def _summed_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, autocast: Any) -> torch.Tensor:
    """Total cross-entropy (float64) of the targets that are not -100, from the model's logits, a
    few rows at a time (any model whose ``model(x)`` returns ``(logits, _)``, quantized ones too)."""
    rows = max(1, LOGITS_PER_CHUNK // (x.shape[1] * _vocab_size(model)))
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for start in range(0, x.shape[0], rows):
        with autocast:
            logits, _ = model(x[start : start + rows])
        flat = logits.float().reshape(-1, logits.shape[-1])
        total += F.cross_entropy(flat, y[start : start + rows].reshape(-1), reduction="sum").double()
    return total


def _vocab_size(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    return int(getattr(config, "vocab_size", 0)) or 65536


@torch.no_grad()
def evaluate_texts(
    model: nn.Module,
    tokenizer: Tokenizer,
    texts: list[str],
    seq_len: int,
    device: torch.device | str,
    batch_size: int = 8,
    eot_id: int | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> dict[str, Any]:
    """Held-out metrics of ``model`` on ``texts``.

    Returns ``loss`` (mean nats per scored token), ``perplexity``, ``bits_per_byte`` (total nats /
    ln 2 / UTF-8 bytes of the texts), ``tokens`` (scored tokens: every document's tokens and one
    end-of-text per document), ``bytes`` and ``documents``. ``model(inputs)`` must return
    ``(logits, _)`` as :class:`training.model.Transformer` does. ``eot_id`` defaults to the
    tokenizer's ``<|endoftext|>``; ``autocast_dtype`` (e.g. ``torch.bfloat16``) runs the forward
    passes under autocast.
    """
    if seq_len < 1:
        raise ValueError(f"seq_len must be positive, got {seq_len}")
    if eot_id is None:
        eot_id = tokenizer.token_to_id(EOT)
        if eot_id is None:
            raise ValueError(f"the tokenizer has no {EOT} token: pass eot_id")
    if not texts:
        raise ValueError("no texts to evaluate")
    device = torch.device(device)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    inputs, targets = evaluation_windows(token_stream(tokenizer, texts, eot_id), seq_len, eot_id)
    autocast = torch.autocast(
        device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None
    )
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    n_tokens = 0
    try:
        for x, y, valid in _batches(inputs, targets, batch_size, device):
            total += _summed_loss(model, x, y, autocast)  # stays on the device: one sync at the end
            n_tokens += valid
    finally:
        model.train(was_training)
    nats = float(total)
    loss = nats / n_tokens
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 700.0)),
        "bits_per_byte": nats / math.log(2) / n_bytes if n_bytes else float("nan"),
        "tokens": n_tokens,
        "bytes": n_bytes,
        "documents": len(texts),
    }


def evaluate_checkpoint(
    checkpoint: str,
    texts: list[str],
    seq_len: int | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 8,
    autocast_dtype: torch.dtype | None = None,
    **load_options: Any,
) -> dict[str, Any]:
    """:func:`evaluate_texts` for a checkpoint (a ``step-N`` directory or a training output's
    latest); ``seq_len`` defaults to the checkpoint's training sequence length. ``load_options`` go
    to :func:`training.generate.load_checkpoint` (rotary scaling, quantization); the model's
    context grows to ``seq_len`` when that is longer (rotary positions extrapolated unless scaled)."""
    from training.generate import load_checkpoint

    with_context = {"max_seq_len": seq_len, **load_options}
    loaded = load_checkpoint(checkpoint, device, **with_context)
    seq_len = seq_len or int(loaded.config["data"]["seq_len"])
    result = evaluate_texts(
        loaded.model, loaded.tokenizer, texts, seq_len, device, batch_size, loaded.eot_id, autocast_dtype
    )
    return {"checkpoint": loaded.path, "seq_len": seq_len, **result}


def format_result(result: dict[str, Any]) -> str:
    """The lines `gristmill eval` prints."""
    return (
        f"checkpoint {result['checkpoint']} | seq_len {result['seq_len']}\n"
        f"  documents {result['documents']:,} | tokens {result['tokens']:,} | bytes {result['bytes']:,}\n"
        f"  loss {result['loss']:.4f} | perplexity {result['perplexity']:.3f} | "
        f"bits per byte {result['bits_per_byte']:.4f}"
    )
