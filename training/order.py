"""The streaming order of training windows: which window every slot of every global batch takes.

The contract (docs/shard-format.md): one seeded global order that depends on the data, the sequence
length, the global batch, the seed and the :class:`Shuffle` settings, never on the world size or
the number of loader threads, so a run resumes exactly from a step on any world size that divides
the batch. The order is also local, so that a rank reads each row group about once per epoch:

* An epoch cuts the split's windows into **chunks** of ``chunk_windows`` consecutive windows (the
  last one shorter) and lays the chunks out in a seeded random order: the epoch's chunk sequence.
* The chunk sequence is cut into ``lanes`` contiguous, equal **lanes**. Each global batch takes
  ``global_batch / lanes`` consecutive slots from every lane, lane ``p`` filling the ``p``-th block
  of slots. Rank ``r`` of ``W`` takes the ``r``-th contiguous ``1/W`` of the slots, so when ``W``
  divides ``lanes`` it reads only its own lanes' chunks (otherwise neighbouring ranks share a lane).
* Within a lane, windows are shuffled inside **groups** of ``chunk_windows * buffer_chunks``
  consecutive positions (a bounded shuffle buffer spanning several chunks), each group by its own
  seeded permutation.

Every position of the order is computed directly from (epoch, lane, position): the memory it takes
is one entry per chunk of the split plus the permutations of the groups in use, never one entry
per window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from training.manifest import DataError


class OrderError(DataError):
    """Order settings that do not fit the data or the batch."""


@dataclass(frozen=True)
class Shuffle:
    """How windows are laid out in the order: ``lanes`` per global batch, chunks of
    ``chunk_windows`` windows, windows shuffled within groups of ``buffer_chunks`` chunks."""

    lanes: int
    chunk_windows: int
    buffer_chunks: int

    def __post_init__(self) -> None:
        if min(self.lanes, self.chunk_windows, self.buffer_chunks) < 1:
            raise OrderError(f"lanes, chunk and buffer must be positive: {self}")

    @classmethod
    def for_tokens(
        cls, lanes: int | None, chunk_tokens: int, buffer_chunks: int, seq_len: int, global_batch: int
    ) -> Shuffle:
        """Settings in the units of the config: chunks in tokens; ``lanes`` None means
        gcd(global batch, 8)."""
        lanes = math.gcd(global_batch, 8) if lanes is None else lanes
        if global_batch % lanes:
            raise OrderError(f"--data-lanes {lanes} does not divide --batch-size {global_batch}")
        return cls(lanes, max(1, chunk_tokens // (seq_len + 1)), buffer_chunks)

    @property
    def group_windows(self) -> int:
        return self.chunk_windows * self.buffer_chunks

    def to_json(self) -> dict[str, int]:
        return {"lanes": self.lanes, "chunk_windows": self.chunk_windows, "buffer_chunks": self.buffer_chunks}


@lru_cache(maxsize=16)
def _chunk_layout(n_windows: int, chunk_windows: int, key: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(chunk at each place of the epoch's chunk sequence, first position of each place)."""
    n_chunks = -(-n_windows // chunk_windows)
    chunks = np.random.default_rng([*key, 0]).permutation(n_chunks)
    sizes = np.full(n_chunks, chunk_windows, dtype=np.int64)
    sizes[-1] = n_windows - (n_chunks - 1) * chunk_windows
    starts = np.cumsum(sizes[chunks]) - sizes[chunks]
    chunks.flags.writeable = starts.flags.writeable = False
    return chunks, starts


@lru_cache(maxsize=64)
def _group_permutation(length: int, key: tuple[int, ...], lane: int, group: int) -> np.ndarray:
    order = np.random.default_rng([*key, 1, lane, group]).permutation(length)
    order.flags.writeable = False
    return order


def lane_windows(
    n_windows: int, shuffle: Shuffle, key: tuple[int, ...], lane: int, lane_len: int, positions: Any
) -> np.ndarray:
    """Windows at ``positions`` (each in ``0 .. lane_len-1``) of lane ``lane`` in the epoch whose
    permutations are seeded by ``key``; lane ``p`` covers places ``p*lane_len ..`` of the chunk
    sequence, so ``shuffle.lanes * lane_len`` must not exceed ``n_windows``."""
    positions = np.asarray(positions, dtype=np.int64)
    size = shuffle.group_windows
    groups = positions // size
    placed = np.empty_like(positions)
    for group in np.unique(groups):
        mask = groups == group
        base = int(group) * size
        permutation = _group_permutation(min(size, lane_len - base), key, lane, int(group))
        placed[mask] = base + permutation[positions[mask] - base]
    places = lane * lane_len + placed
    chunks, starts = _chunk_layout(n_windows, shuffle.chunk_windows, key)
    slot = np.searchsorted(starts, places, side="right") - 1
    return chunks[slot] * shuffle.chunk_windows + (places - starts[slot])


class EpochSchedule:
    """The single-manifest order: epochs of ``n_windows // global_batch`` steps; in every step each
    lane gives ``global_batch / lanes`` windows in lane order. The fewer than ``global_batch``
    windows left over at the end of the chunk sequence are not used in that epoch."""

    kind = "epoch"

    def __init__(self, n_windows: int, global_batch: int, seed: int, shuffle: Shuffle) -> None:
        if global_batch < 1:
            raise OrderError("global batch must be positive")
        if global_batch % shuffle.lanes:
            raise OrderError(f"{shuffle.lanes} lanes do not divide the global batch {global_batch}")
        if n_windows < global_batch:
            raise OrderError(
                f"only {n_windows} windows, fewer than one batch of {global_batch}: "
                "use a smaller --batch-size/--seq-len or more data"
            )
        self.n_windows, self.global_batch, self.seed, self.shuffle = n_windows, global_batch, seed, shuffle
        self.per_lane = global_batch // shuffle.lanes
        self.steps_per_epoch = n_windows // global_batch
        self.lane_len = self.steps_per_epoch * self.per_lane

    def position(self, step: int) -> dict[str, Any]:
        """Position before global step ``step`` (after ``step`` completed steps)."""
        epoch, in_epoch = divmod(step, self.steps_per_epoch)
        return {"schedule": self.kind, "epoch": epoch, "windows_consumed": in_epoch * self.global_batch}

    def slots_at(self, step: int, start: int, stop: int) -> np.ndarray:
        """[stop-start, 2] array of (source 0, window) for slots ``start .. stop-1`` of step ``step``."""
        epoch, in_epoch = divmod(step, self.steps_per_epoch)
        slots = np.arange(start, stop, dtype=np.int64)
        lanes, offsets = np.divmod(slots, self.per_lane)
        windows = np.empty_like(slots)
        for lane in np.unique(lanes):
            mask = lanes == lane
            positions = in_epoch * self.per_lane + offsets[mask]
            windows[mask] = lane_windows(
                self.n_windows, self.shuffle, (self.seed, epoch), int(lane), self.lane_len, positions
            )
        return np.stack([np.zeros_like(windows), windows], axis=1)

    def global_batch_at(self, step: int) -> np.ndarray:
        """[global_batch, 2] array of (source 0, window) for global step ``step``."""
        return self.slots_at(step, 0, self.global_batch)
