"""Training stage: decoder-only model, streaming token-shard reader, torchrun training loop,
DCP checkpoints, generation and Hugging Face export (docs/training.md).

Imports only torch, numpy, pyarrow, tokenizers and the standard library, plus boto3 for ``s3://``
URIs and safetensors/transformers inside ``training.export`` (both imported lazily), so it runs in a
training image without the rest of gristmill.
"""
