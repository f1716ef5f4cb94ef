"""Sample text from a checkpoint: ``python -m training.generate --checkpoint DIR --prompt TEXT``.

``--checkpoint`` is a checkpoint directory (``step-N``) or a training output directory, whose
``latest`` checkpoint is used, local or ``s3://``. The checkpoint holds everything needed:
config.json, the DCP model state (``model/``) and tokenizer.json. Tokens are sampled with a KV
cache (temperature, top-k, top-p), generation stops at the end-of-text id, and text is streamed as
soon as it decodes to whole UTF-8 characters.

``--chat`` formats the prompt as a user message with the chat template of an instruction-tuned
checkpoint (training/chat.py) and prints the assistant's reply, which ends at ``<|end|>``.
``--rope-scaling linear|ntk|yarn --rope-factor F`` stretches the rotary positions to ``F`` times
the context the model was trained on; ``--quantize int8|int4`` runs with weight-only quantized
weights (training/quantize.py).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer
from torch import Tensor

from training.chat import END, ROLES, encode_chat, has_chat_tokens
from training.checkpoint import CheckpointError, load_model_weights, resolve
from training.config import HelpFormatter, add_generate_arguments
from training.loop import TrainingError
from training.manifest import sha256_hex
from training.model import ModelConfig, RotaryEmbedding, Transformer, with_rope_scaling
from training.storage import StorageError


@dataclass
class LoadedModel:
    """A model ready for generation, with its tokenizer and checkpoint config."""

    model: Transformer
    tokenizer: Tokenizer
    eot_id: int
    config: dict[str, Any]
    path: str

    @property
    def chat(self) -> bool:
        """Whether the tokenizer has the chat template's tokens (an instruction-tuned checkpoint)."""
        return has_chat_tokens(self.tokenizer)

    @property
    def trained_seq_len(self) -> int:
        """The context the weights were trained on (the pretraining one before any RoPE scaling)."""
        scaling = self.model.config.rope_scaling
        if scaling and scaling.get("original_max_seq_len"):
            return int(scaling["original_max_seq_len"])
        return int(self.config.get("data", {}).get("seq_len") or self.model.config.max_seq_len)


def set_context(
    model: Transformer,
    rope_scaling: str | None,
    rope_factor: float | None,
    original_max_seq_len: int,
    max_seq_len: int | None = None,
) -> None:
    """Rebuild ``model``'s rotary tables for ``rope_scaling`` by ``rope_factor`` over a model
    trained on ``original_max_seq_len`` positions, and/or for up to ``max_seq_len`` positions."""
    config = model.config
    if rope_scaling is not None:
        if rope_factor is None:
            raise ValueError("--rope-scaling needs --rope-factor")
        config = with_rope_scaling(config, rope_scaling, rope_factor, original_max_seq_len)
    if max_seq_len is not None and max_seq_len > config.max_seq_len:
        config = config.with_overrides(max_seq_len=max_seq_len)
    if config != model.config:
        model.config = config
        model.rotary = RotaryEmbedding(config).to(model.norm.weight.device)


def load_checkpoint(
    path: str | Path,
    device: str | torch.device = "cpu",
    rope_scaling: str | None = None,
    rope_factor: float | None = None,
    max_seq_len: int | None = None,
    quantize: str | None = None,
) -> LoadedModel:
    """Load config.json, the DCP model state and tokenizer.json of a checkpoint into one process.

    ``path`` is a checkpoint directory or a training output (its ``latest``), local or ``s3://``;
    from S3 only ``model/``, config.json and tokenizer.json are downloaded. ``rope_scaling`` (with
    ``rope_factor``) and ``max_seq_len`` set the context (:func:`set_context`); ``quantize``
    (int8, int4) quantizes the weights on ``device``.
    """
    store, name = resolve(str(path))
    local = store.local_copy(name, parts=("model", "config.json", "tokenizer.json"))
    try:
        config = json.loads((local / "config.json").read_text())
        tokenizer_bytes = (local / config["tokenizer"]["file"]).read_bytes()
        if sha256_hex(tokenizer_bytes) != config["tokenizer"]["sha256"]:
            raise TrainingError(f"{store.uri(name)}: tokenizer.json does not match the sha256 in config.json")
        model = Transformer(ModelConfig.from_dict(config["model"]))
        load_model_weights(model, local)
    finally:
        if store.remote:
            shutil.rmtree(local, ignore_errors=True)
    model.to(device).eval()
    tokenizer = Tokenizer.from_str(tokenizer_bytes.decode("utf-8"))
    loaded = LoadedModel(model, tokenizer, int(config["tokenizer"]["eot_id"]), config, store.uri(name))
    set_context(model, rope_scaling, rope_factor, loaded.trained_seq_len, max_seq_len)
    if quantize is not None:
        from training.quantize import quantize_model

        quantize_model(model, quantize)
    return loaded


def sample_next(
    logits: Tensor, temperature: float, top_k: int, top_p: float, generator: torch.Generator | None
) -> int:
    """One token id from a [vocab] logit vector; temperature 0 means greedy."""
    if temperature <= 0:
        return int(logits.argmax())
    logits = logits.float() / temperature
    if 0 < top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs > top_p  # keep the smallest prefix reaching top_p (at least one)
        logits = logits.scatter(0, order[drop], float("-inf"))
    probs = logits.softmax(-1)
    return int(torch.multinomial(probs, 1, generator=generator))


@torch.no_grad()
def generate(
    model: Transformer,
    prompt_ids: list[int],
    max_new_tokens: int = 100,
    temperature: float = 0.8,
    top_k: int = 50,
    top_p: float = 1.0,
    eot_id: int | None = None,
    generator: torch.Generator | None = None,
    stop_ids: Collection[int] = (),
) -> Iterator[int]:
    """Yield new token ids one by one, using the KV cache; stop at ``eot_id``, any of
    ``stop_ids`` or the context limit.

    A prompt longer than the model's context keeps only its last ``max_seq_len - 1`` tokens.
    """
    if not prompt_ids:
        raise ValueError("prompt_ids must not be empty")
    max_len = model.config.max_seq_len
    prompt_ids = prompt_ids[-(max_len - 1) :]
    device = model.norm.weight.device
    cache = model.new_kv_cache(batch_size=1, max_len=max_len)
    idx = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    pos = 0
    for _ in range(min(max_new_tokens, max_len - len(prompt_ids))):
        logits, _ = model(idx, kv_cache=cache, start_pos=pos)
        pos += idx.shape[1]
        token = sample_next(logits[0, -1], temperature, top_k, top_p, generator)
        if token == eot_id or token in stop_ids:
            return
        yield token
        idx = torch.tensor([[token]], dtype=torch.long, device=device)


def stream_text(tokenizer: Tokenizer, token_ids: Iterable[int]) -> Iterator[str]:
    """Turn a stream of token ids into text pieces that never split a UTF-8 character.

    The whole sequence is decoded at each step and the new suffix emitted; while it ends in an
    incomplete character (decoded as U+FFFD) the suffix is held back until the next token.
    """
    ids: list[int] = []
    emitted = ""
    for token in token_ids:
        ids.append(token)
        text = tokenizer.decode(ids, skip_special_tokens=False)
        if text.endswith("\ufffd") or not text.startswith(emitted):
            continue
        yield text[len(emitted) :]
        emitted = text
    text = tokenizer.decode(ids, skip_special_tokens=False)
    if len(text) > len(emitted):
        yield text[len(emitted) :]


def build_parser() -> argparse.ArgumentParser:
    return add_generate_arguments(
        argparse.ArgumentParser(
            prog="python -m training.generate",
            description="Generate text from a gristmill training checkpoint.",
            formatter_class=HelpFormatter,
        )
    )


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Load ``args.checkpoint`` and stream a continuation of ``args.prompt`` to stdout."""
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    try:
        loaded = load_checkpoint(
            args.checkpoint, device, args.rope_scaling, args.rope_factor, quantize=args.quantize
        )
    except (TrainingError, CheckpointError, StorageError, FileNotFoundError, KeyError, ValueError) as exc:
        print(f"error: cannot load checkpoint {args.checkpoint}: {exc}", file=sys.stderr)
        return 1
    generator = None
    if args.seed is not None:
        generator = torch.Generator(device=device).manual_seed(args.seed)
    stop_ids: list[int] = []
    if args.chat:
        if not loaded.chat:
            print(f"error: {args.checkpoint} has no chat template (not instruction-tuned: gristmill sft)",
                  file=sys.stderr)  # fmt: skip
            return 1
        messages = [{"role": "system", "content": args.system}] if args.system else []
        messages.append({"role": "user", "content": args.prompt})
        prompt_ids = encode_chat(loaded.tokenizer, messages, loaded.eot_id, add_generation_prompt=True).ids
        stop_ids = [loaded.tokenizer.token_to_id(t) for t in (END, *ROLES.values())]
    else:
        # Documents start after an end-of-text token in training, so it also opens the prompt.
        prompt_ids = [loaded.eot_id, *loaded.tokenizer.encode(args.prompt, add_special_tokens=False).ids]
        sys.stdout.write(args.prompt)
        sys.stdout.flush()
    tokens = generate(
        loaded.model,
        prompt_ids,
        args.max_new_tokens,
        args.temperature,
        args.top_k,
        args.top_p,
        loaded.eot_id,
        generator,
        stop_ids,
    )
    for piece in stream_text(loaded.tokenizer, tokens):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
