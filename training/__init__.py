"""Training stage: decoder-only model, token-shard reader, torchrun training loop and generation.

Imports only torch, numpy, pyarrow, tokenizers and the standard library, so it runs in a training
image without the rest of gristmill.
"""
