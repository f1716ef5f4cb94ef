"""Token shards built per docs/shard-format.md from real text, for the training tests and benchmark.

A byte-level BPE tokenizer is trained on the text, ~``lines_per_doc``-line documents are split into
train/validation by the manifest's hash rule, and each split is written as Parquet shards with a
``list<uint16>`` column, small row groups (so readers cross row-group and shard boundaries) and a
manifest.json written last.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from shared_data import SHARED_DATA

TEXT = SHARED_DATA / "tinyshakespeare" / "input.txt"
EOT, PAD = "<|endoftext|>", "<|pad|>"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def build_token_run(
    root: Path,
    text: str,
    lines_per_doc: int = 200,
    vocab_size: int = 1000,
    validation_fraction: float = 0.05,
    train_shards: int = 2,
    row_group_rows: int = 16,
    empty_document: bool = False,
    write_statistics: bool = True,
) -> Path:
    """Write tokenizer/tokenizer.json, tokens/{train,validation}-NNNNN.parquet and tokens/manifest.json.

    ``empty_document`` adds a zero-token document to the train split; ``write_statistics=False``
    writes shards without column statistics (readers must fall back to the ``n_tokens`` column).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    lines = text.splitlines(keepends=True)
    docs = {
        f"shakespeare-{i // lines_per_doc:04d}": "".join(lines[i : i + lines_per_doc])
        for i in range(0, len(lines), lines_per_doc)
    }

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT, PAD],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(docs.values(), trainer)
    assert tokenizer.token_to_id(EOT) == 0 and tokenizer.token_to_id(PAD) == 1
    (root / "tokenizer").mkdir(parents=True)
    tok_path = root / "tokenizer" / "tokenizer.json"
    tokenizer.save(str(tok_path))

    threshold = validation_fraction * 10000
    splits: dict[str, list[str]] = {"train": [], "validation": []}
    for doc_id in docs:
        is_val = int(hashlib.sha256(doc_id.encode()).hexdigest(), 16) % 10000 < threshold
        splits["validation" if is_val else "train"].append(doc_id)
    assert splits["validation"], "the split rule should select some validation documents"

    tokens_dir = root / "tokens"
    tokens_dir.mkdir()
    schema = pa.schema([("id", pa.string()), ("input_ids", pa.list_(pa.uint16())), ("n_tokens", pa.int32())])
    manifest_splits = {}
    for split, ids in splits.items():
        encoded = [e.ids for e in tokenizer.encode_batch([docs[i] for i in ids], add_special_tokens=False)]
        if split == "train" and empty_document:
            ids, encoded = [*ids[:5], "empty-0000", *ids[5:]], [*encoded[:5], [], *encoded[5:]]
        n_shards = train_shards if split == "train" else 1
        bounds = [round(k * len(ids) / n_shards) for k in range(n_shards + 1)]
        shards = []
        for k in range(n_shards):
            part_ids, part = ids[bounds[k] : bounds[k + 1]], encoded[bounds[k] : bounds[k + 1]]
            table = pa.table(
                {"id": part_ids, "input_ids": part, "n_tokens": [len(e) for e in part]}, schema=schema
            )
            name = f"{split}-{k:05d}.parquet"
            pq.write_table(
                table, tokens_dir / name, row_group_size=row_group_rows, write_statistics=write_statistics
            )
            data = (tokens_dir / name).read_bytes()
            shards.append(
                {
                    "path": name,
                    "documents": len(part_ids),
                    "tokens": sum(len(e) for e in part),
                    "bytes": len(data),
                    "sha256": _sha256(data),
                }
            )
        manifest_splits[split] = {
            "documents": len(ids),
            "tokens": sum(s["tokens"] for s in shards),
            "shards": shards,
        }
    manifest = {
        "format": "gristmill.tokens",
        "format_version": 1,
        "dtype": "uint16",
        "tokenizer": {
            "path": "../tokenizer/tokenizer.json",
            "sha256": _sha256(tok_path.read_bytes()),
            "vocab_size": tokenizer.get_vocab_size(),
            "special_tokens": {EOT: 0, PAD: 1},
            "eot_id": 0,
        },
        "splits": manifest_splits,
        "totals": {
            "documents": sum(s["documents"] for s in manifest_splits.values()),
            "tokens": sum(s["tokens"] for s in manifest_splits.values()),
            "bytes": sum(sh["bytes"] for s in manifest_splits.values() for sh in s["shards"]),
        },
        "split_rule": {
            "validation_fraction": validation_fraction,
            "method": "sha256(id) mod 10000 < fraction*10000",
        },
        "lineage": {
            "run_id": "test",
            "config_sha256": "0" * 64,
            "policy_sha256": "0" * 64,
            "inputs": [str(TEXT)],
        },
    }
    manifest_path = tokens_dir / "manifest.json"
    tmp = tokens_dir / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, manifest_path)
    return manifest_path


def expected_stream(manifest_path: Path, split: str) -> list[int]:
    """The split's token stream computed the obvious way: whole shards, eot after each document."""
    manifest = json.loads(manifest_path.read_text())
    eot = manifest["tokenizer"]["eot_id"]
    out: list[int] = []
    for shard in manifest["splits"][split]["shards"]:
        for doc in pq.read_table(manifest_path.parent / shard["path"]).column("input_ids").to_pylist():
            out += [*doc, eot]
    return out
