"""Instruction-tuning data: JSONL conversations to packed, masked training windows.

Each line of the input files is one example: ``{"messages": [{"role", "content"}, ...]}`` or
``{"prompt": ..., "response": ...}`` (training/chat.py renders both). A line that is not JSON, not a
conversation, or gives the assistant no word to say (an empty response) is quarantined with a
counted reason (and kept in :attr:`Examples.quarantined`); an example longer than a window is cut
to it (counted as ``truncated``). An example is held out for validation when
``sha256("sft:<file>:<line>")`` as a fraction of 2**64 is below ``validation_fraction``, so the
split depends on nothing else.

Windows hold ``seq_len + 1`` tokens. With packing, examples fill windows in input order, whole (a
window is closed when the next example does not fit), and every token carries its example's id:
attention stays within an example (the model's document mask) and no target crosses from one
example into the next. Without packing, each window holds one example. Padding has no targets.
Targets are the next token where the chat template scores it (the assistant's words and its
``<|end|>``), -100 elsewhere.

The order of windows is an epoch permutation seeded by ``(seed, epoch)``; global step ``s`` takes
slots ``s*B .. (s+1)*B-1`` of the endless sequence of epochs, and data-parallel rank ``r`` of
``W`` the ``r``-th contiguous ``B/W`` of them, so a run resumes exactly on any world size.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer

from training import storage
from training.chat import END, ChatError, encode_chat, messages_of

__all__ = ["Examples", "Windows", "global_batch", "pack", "read_examples"]

IGNORE_INDEX = -100
PAD_DOC = -1
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


@dataclass
class Example:
    ids: list[int]
    scored: list[bool]


@dataclass
class Examples:
    """The examples of both splits, and what was set aside or cut."""

    train: list[Example] = field(default_factory=list)
    validation: list[Example] = field(default_factory=list)
    quarantined: list[dict[str, Any]] = field(default_factory=list)  # {source, line, reason, detail}
    counts: Counter[str] = field(default_factory=Counter)  # quarantine reasons
    truncated: int = 0  # examples cut to the window

    def set_aside(self, source: str, line: int, reason: str, detail: str) -> None:
        self.counts[reason] += 1
        self.quarantined.append({"source": source, "line": line, "reason": reason, "detail": detail})


def _input_files(uris: list[str]) -> list[str]:
    """Each URI itself when it is a file, else the files under it (sorted)."""
    files: list[str] = []
    for uri in uris:
        uri = storage.normalize(uri)
        under = storage.list_files(uri)
        if under:
            files += [f"{uri}/{name}" for name in under if not name.rsplit("/", 1)[-1].startswith(".")]
        elif storage.exists(uri):
            files.append(uri)
        else:
            raise FileNotFoundError(f"SFT data {uri} does not exist")
    return files


def _text(data: bytes) -> str:
    """The bytes of a JSONL file, gzip or zstd decompressed by their magic bytes."""
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    elif data[:4] == _ZSTD_MAGIC:
        import pyarrow as pa

        with pa.input_stream(pa.py_buffer(data), compression="zstd") as stream:
            data = stream.read()
    return data.decode("utf-8", errors="replace")


def _is_validation(source: str, line: int, fraction: float) -> bool:
    digest = hashlib.sha256(f"sft:{source}:{line}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def read_examples(
    uris: list[str], tokenizer: Tokenizer, eot_id: int, seq_len: int, validation_fraction: float
) -> Examples:
    """Encode every conversation of the JSONL files under ``uris`` (local or s3://) with the chat
    template; a record's source is its file's name and 1-based line."""
    out = Examples()
    end_id = tokenizer.token_to_id(END)
    for path in _input_files(uris):
        source = path.rsplit("/", 1)[-1]
        for number, line in enumerate(io.StringIO(_text(storage.read_bytes(path))), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ChatError("a record must be a JSON object")
                encoded = encode_chat(tokenizer, messages_of(record), eot_id)
            except json.JSONDecodeError as exc:
                out.set_aside(source, number, "malformed_json", str(exc))
                continue
            except ChatError as exc:
                out.set_aside(source, number, "not_a_conversation", str(exc))
                continue
            ids, scored = encoded.ids[: seq_len + 1], encoded.scored[: seq_len + 1]
            if len(ids) < len(encoded.ids):
                out.truncated += 1
            if not any(s and i != end_id for i, s in zip(ids[1:], scored[1:], strict=True)):
                out.set_aside(source, number, "no_assistant_tokens", "no assistant words within the window")
                continue
            split = out.validation if _is_validation(source, number, validation_fraction) else out.train
            split.append(Example(ids, scored))
    return out


@dataclass
class Windows:
    """Packed windows: tokens, example id per token (-1: padding) and scored flags, [N, seq_len + 1]."""

    tokens: np.ndarray
    docs: np.ndarray
    scored: np.ndarray

    def __len__(self) -> int:
        return len(self.tokens)

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for array in (self.tokens, self.docs, self.scored):
            digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()

    def batch(self, rows: np.ndarray, packed: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(inputs, targets, doc_ids or None) for these windows: a target is the next token where it
        is scored and belongs to the same example."""
        tokens, docs, scored = self.tokens[rows], self.docs[rows], self.scored[rows]
        keep = scored[:, 1:] & (docs[:, 1:] == docs[:, :-1])
        targets = np.where(keep, tokens[:, 1:], IGNORE_INDEX)
        doc_ids = torch.from_numpy(docs[:, :-1].astype(np.int64)) if packed else None
        return torch.from_numpy(tokens[:, :-1].copy()), torch.from_numpy(targets), doc_ids

    def scored_targets(self, rows: np.ndarray) -> int:
        docs, scored = self.docs[rows], self.scored[rows]
        return int((scored[:, 1:] & (docs[:, 1:] == docs[:, :-1])).sum())


def pack(examples: list[Example], seq_len: int, pad_id: int, packing: bool = True) -> Windows:
    """Examples into windows of ``seq_len + 1`` tokens (see the module docstring)."""
    width = seq_len + 1
    rows: list[list[Example]] = []
    used = width
    for example in examples:
        if not packing or used + len(example.ids) > width:
            rows.append([])
            used = 0
        rows[-1].append(example)
        used += len(example.ids)
    tokens = np.full((len(rows), width), pad_id, dtype=np.int64)
    docs = np.full((len(rows), width), PAD_DOC, dtype=np.int32)
    scored = np.zeros((len(rows), width), dtype=bool)
    for r, row in enumerate(rows):
        start = 0
        for d, example in enumerate(row):
            end = start + len(example.ids)
            tokens[r, start:end], docs[r, start:end], scored[r, start:end] = example.ids, d, example.scored
            start = end
    return Windows(tokens, docs, scored)


def global_batch(n_windows: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """Window indices of global step ``step``: slots ``step*B ..`` of the seeded epoch permutations."""
    slots = np.arange(step * batch_size, (step + 1) * batch_size)
    epochs, positions = np.divmod(slots, n_windows)
    out = np.empty(batch_size, dtype=np.int64)
    for epoch in np.unique(epochs):
        order = np.random.default_rng([seed, int(epoch)]).permutation(n_windows)
        out[epochs == epoch] = order[positions[epochs == epoch]]
    return out
