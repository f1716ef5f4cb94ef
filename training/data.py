"""Reader side of the token shard contract (docs/shard-format.md, format version 1).

``load_manifest`` reads and checks manifest.json, ``check_tokenizer`` verifies the tokenizer it
points to, ``load_split_tokens`` verifies every shard's sha256 and returns the split as one token
stream with ``eot_id`` after each document, and ``WindowSampler`` cuts that stream into
``seq_len + 1`` windows and hands out the batch of any global step for any rank. All I/O goes
through :func:`read_bytes` and :func:`join_uri`, the one place to add ``s3://`` later.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torch import Tensor

FORMAT = "gristmill.tokens"
FORMAT_VERSION = 1


class DataError(RuntimeError):
    """The manifest, a shard or the tokenizer does not match the shard contract."""


class IntegrityError(DataError):
    """A file's sha256 differs from the one recorded in the manifest."""


# ---------------------------------------------------------------- I/O (the one place for s3:// later)


def _is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def _local_path(uri: str) -> Path:
    return Path(uri.removeprefix("file://"))


def read_bytes(uri: str) -> bytes:
    """Whole contents of a local path (``file://`` allowed). Remote schemes are not supported yet."""
    if _is_remote(uri):
        raise NotImplementedError(f"cannot read {uri!r}: only local paths are supported for now")
    try:
        return _local_path(uri).read_bytes()
    except FileNotFoundError as exc:
        raise DataError(f"file not found: {uri}") from exc


def join_uri(base_dir: str, relative: str) -> str:
    """Resolve a manifest-relative path against the directory holding the manifest."""
    if _is_remote(base_dir):
        scheme, rest = base_dir.split("://", 1)
        return f"{scheme}://{posixpath.normpath(posixpath.join(rest, relative))}"
    return str((_local_path(base_dir) / relative).resolve())


def parent_uri(uri: str) -> str:
    if _is_remote(uri):
        return posixpath.dirname(uri)
    return str(_local_path(uri).resolve().parent)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------- manifest


@dataclass(frozen=True)
class Manifest:
    """A parsed manifest.json and the directory its relative paths start from."""

    uri: str
    base_dir: str
    data: dict[str, Any]

    @property
    def tokenizer(self) -> dict[str, Any]:
        return self.data["tokenizer"]

    @property
    def eot_id(self) -> int:
        return int(self.tokenizer["eot_id"])

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer["vocab_size"])

    @property
    def tokenizer_uri(self) -> str:
        return join_uri(self.base_dir, self.tokenizer["path"])

    def split(self, name: str) -> dict[str, Any]:
        splits = self.data["splits"]
        if name not in splits:
            raise DataError(f"manifest {self.uri} has no split {name!r} (has {sorted(splits)})")
        return splits[name]

    def has_split(self, name: str) -> bool:
        return name in self.data["splits"] and bool(self.data["splits"][name]["shards"])

    def fingerprint(self, split: str) -> str:
        """sha256 over the split's shard checksums: identifies the exact token stream."""
        digests = "\n".join(shard["sha256"] for shard in self.split(split)["shards"])
        return sha256_hex(digests.encode())


def load_manifest(uri: str | Path) -> Manifest:
    """Read manifest.json and check its format name, version and required keys."""
    uri = str(uri)
    try:
        data = json.loads(read_bytes(uri))
    except json.JSONDecodeError as exc:
        raise DataError(f"{uri} is not valid JSON: {exc}") from exc
    if data.get("format") != FORMAT:
        raise DataError(f"{uri}: format is {data.get('format')!r}, expected {FORMAT!r}")
    if data.get("format_version") != FORMAT_VERSION:
        raise DataError(
            f"{uri}: format_version {data.get('format_version')!r} is not supported "
            f"(this reader understands version {FORMAT_VERSION})"
        )
    for key in ("tokenizer", "splits", "dtype"):
        if key not in data:
            raise DataError(f"{uri}: missing key {key!r}")
    for key in ("path", "sha256", "vocab_size", "eot_id"):
        if key not in data["tokenizer"]:
            raise DataError(f"{uri}: missing key tokenizer.{key}")
    return Manifest(uri=uri, base_dir=parent_uri(uri), data=data)


def check_tokenizer(manifest: Manifest) -> bytes:
    """Return the tokenizer.json bytes after checking their sha256 and special-token ids."""
    from tokenizers import Tokenizer

    uri = manifest.tokenizer_uri
    data = read_bytes(uri)
    expected = manifest.tokenizer["sha256"]
    if sha256_hex(data) != expected:
        raise IntegrityError(
            f"tokenizer {uri} has sha256 {sha256_hex(data)}, but the manifest expects {expected}: "
            "the shards were tokenized with a different tokenizer"
        )
    tokenizer = Tokenizer.from_str(data.decode("utf-8"))
    for token, token_id in manifest.tokenizer.get("special_tokens", {}).items():
        if tokenizer.token_to_id(token) != token_id:
            raise DataError(
                f"tokenizer {uri} maps {token!r} to {tokenizer.token_to_id(token)}, manifest says {token_id}"
            )
    return data


# ---------------------------------------------------------------- shards


def _shard_stream(table: pa.Table, eot_id: int, dtype: np.dtype, where: str) -> tuple[np.ndarray, int]:
    """Concatenate a shard's documents with eot_id after each; returns (stream, content tokens)."""
    column = table.column("input_ids")
    if column.null_count:
        raise DataError(f"{where}: input_ids has null rows")
    pieces = []
    n_content = 0
    for chunk in column.chunks:
        values = chunk.flatten().to_numpy(zero_copy_only=False).astype(dtype, copy=False)
        ends = np.cumsum(pc.list_value_length(chunk).to_numpy(zero_copy_only=False))
        n_content += len(values)
        pieces.append(np.insert(values, ends, dtype.type(eot_id)))
    stream = np.concatenate(pieces) if pieces else np.empty(0, dtype=dtype)
    return stream, n_content


def load_split_tokens(manifest: Manifest, split: str) -> np.ndarray:
    """The split's token stream (manifest order, eot after each document), every shard verified."""
    dtype = np.dtype(manifest.data["dtype"])
    if dtype not in (np.dtype("uint16"), np.dtype("uint32")):
        raise DataError(f"{manifest.uri}: unsupported dtype {dtype}")
    streams = []
    for shard in manifest.split(split)["shards"]:
        uri = join_uri(manifest.base_dir, shard["path"])
        data = read_bytes(uri)
        digest = sha256_hex(data)
        if digest != shard["sha256"]:
            raise IntegrityError(
                f"shard {uri} has sha256 {digest}, but the manifest records {shard['sha256']}: "
                "the file is corrupt or was changed after the manifest was written"
            )
        table = pq.read_table(pa.BufferReader(data), columns=["input_ids"])
        stream, n_content = _shard_stream(table, manifest.eot_id, dtype, uri)
        if n_content != shard["tokens"] or table.num_rows != shard["documents"]:
            raise DataError(
                f"shard {uri}: {table.num_rows} documents / {n_content} tokens, manifest says "
                f"{shard['documents']} / {shard['tokens']}"
            )
        streams.append(stream)
    tokens = np.concatenate(streams) if streams else np.empty(0, dtype=dtype)
    if len(tokens) and int(tokens.max()) >= manifest.vocab_size:
        raise DataError(
            f"split {split!r} holds token id {int(tokens.max())} >= vocab_size {manifest.vocab_size}"
        )
    return tokens


# ---------------------------------------------------------------- windows


class TokenWindows:
    """Non-overlapping windows of ``seq_len + 1`` tokens over a stream; the short tail is dropped."""

    def __init__(self, tokens: np.ndarray, seq_len: int) -> None:
        self.seq_len = seq_len
        self.n_windows = len(tokens) // (seq_len + 1)
        self._windows = tokens[: self.n_windows * (seq_len + 1)].reshape(self.n_windows, seq_len + 1)

    def __len__(self) -> int:
        return self.n_windows

    def gather(self, indices: np.ndarray) -> tuple[Tensor, Tensor]:
        """(inputs, targets) LongTensors of shape [len(indices), seq_len]."""
        rows = torch.from_numpy(self._windows[np.asarray(indices, dtype=np.int64)].astype(np.int64))
        return rows[:, :-1].contiguous(), rows[:, 1:].contiguous()


def epoch_order(n_windows: int, seed: int, epoch: int) -> np.ndarray:
    """The permutation of window indices for an epoch, seeded by (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(n_windows)


@dataclass(frozen=True)
class WindowPosition:
    """Where the reader stands: windows consumed so far in ``epoch`` (counted over all ranks)."""

    epoch: int
    windows_consumed: int


class WindowSampler:
    """Deterministic global batches: step ``s`` of an epoch takes ``order[s*B:(s+1)*B]``.

    When fewer than ``B`` windows remain the rest of the epoch is skipped and the next epoch's
    permutation starts. Rank ``r`` of ``W`` takes the ``r``-th contiguous ``B/W`` slice, so the union
    over ranks is the same global batch for every world size that divides ``B``.
    """

    def __init__(self, windows: TokenWindows, global_batch: int, seed: int) -> None:
        if global_batch < 1:
            raise ValueError("global batch must be positive")
        if len(windows) < global_batch:
            raise DataError(
                f"only {len(windows)} windows of {windows.seq_len + 1} tokens, fewer than one batch "
                f"of {global_batch}: use a smaller --batch-size/--seq-len or more data"
            )
        self.windows = windows
        self.global_batch = global_batch
        self.seed = seed
        self.steps_per_epoch = len(windows) // global_batch
        self._cached: tuple[int, np.ndarray] | None = None

    def position(self, step: int) -> WindowPosition:
        """Position before global step ``step`` (0-based), i.e. after ``step`` completed steps."""
        epoch, in_epoch = divmod(step, self.steps_per_epoch)
        return WindowPosition(epoch=epoch, windows_consumed=in_epoch * self.global_batch)

    def _order(self, epoch: int) -> np.ndarray:
        if self._cached is None or self._cached[0] != epoch:
            self._cached = (epoch, epoch_order(len(self.windows), self.seed, epoch))
        return self._cached[1]

    def indices_for_step(self, step: int, rank: int = 0, world_size: int = 1) -> np.ndarray:
        if self.global_batch % world_size:
            raise ValueError(f"world size {world_size} does not divide the global batch {self.global_batch}")
        pos = self.position(step)
        batch = self._order(pos.epoch)[pos.windows_consumed : pos.windows_consumed + self.global_batch]
        per_rank = self.global_batch // world_size
        return batch[rank * per_rank : (rank + 1) * per_rank]

    def batch_for_step(self, step: int, rank: int = 0, world_size: int = 1) -> tuple[Tensor, Tensor]:
        """This rank's (inputs, targets), each [B/W, seq_len], for global step ``step``."""
        return self.windows.gather(self.indices_for_step(step, rank, world_size))


def validation_indices(n_windows: int, max_windows: int, rank: int, world_size: int) -> np.ndarray:
    """Fixed validation windows (the first ``max_windows``, in order), split contiguously over ranks."""
    return np.array_split(np.arange(min(n_windows, max_windows)), world_size)[rank]
