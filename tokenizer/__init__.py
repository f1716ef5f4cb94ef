"""Byte-level BPE tokenizer: training, saving, loading, special tokens."""

from tokenizer.bpe import (
    EOT,
    PAD,
    SPECIAL_TOKENS,
    TRANSFORMERS_FILES,
    bytes_per_token,
    count_tokens,
    encode_ids,
    file_sha256,
    load,
    save,
    train_bpe,
)

__all__ = [
    "EOT",
    "PAD",
    "SPECIAL_TOKENS",
    "TRANSFORMERS_FILES",
    "bytes_per_token",
    "count_tokens",
    "encode_ids",
    "file_sha256",
    "load",
    "save",
    "train_bpe",
]
