"""Byte-level BPE tokenizer: training, loading, special tokens."""

from tokenizer.bpe import EOT, PAD, SPECIAL_TOKENS, file_sha256, load, train_bpe

__all__ = ["EOT", "PAD", "SPECIAL_TOKENS", "file_sha256", "load", "train_bpe"]
