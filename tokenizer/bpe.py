"""Train and load byte-level BPE tokenizers with Hugging Face `tokenizers`."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

EOT = "<|endoftext|>"
PAD = "<|pad|>"
SPECIAL_TOKENS = (EOT, PAD)


def train_bpe(
    texts: Iterable[str],
    vocab_size: int = 8192,
    min_frequency: int = 2,
    special_tokens: Iterable[str] = SPECIAL_TOKENS,
) -> Tokenizer:
    """Train a byte-level BPE (GPT-2 style: every byte is representable, no unknown token).

    Special tokens get the first ids, in the order given (end-of-text is id 0 by default).
    """
    special = list(dict.fromkeys(special_tokens))
    if EOT not in special:
        raise ValueError(f"special tokens must include the end-of-text token {EOT!r}")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def load(path: str | Path) -> Tokenizer:
    """Load a tokenizer.json."""
    return Tokenizer.from_file(str(path))


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes (the tokenizer's identity in manifests and checkpoints)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
