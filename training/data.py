"""Training windows over streamed token shards, and this rank's batches in step order.

A :class:`WindowSource` is one split of one manifest cut into non-overlapping windows of
``seq_len + 1`` tokens (docs/shard-format.md), read through one :class:`RowGroupCache` per split
and rank. A schedule maps a global step to the global batch of (source, window) pairs:
:class:`training.order.EpochSchedule` for a single manifest, :class:`training.mixing.MixedSchedule`
for several. Neither depends on the number of ranks or loader threads: rank ``r`` of ``W`` takes
the ``r``-th contiguous slice of the global batch, so a run resumes exactly from a step on any world
size that divides the batch. :class:`BatchStream` builds this rank's batches on a background thread;
it pins the row groups of the steps it plans ahead (as many as fit in the cache) so that they are
fetched while earlier steps train and never evicted before their step is built. Each batch says
which shard, row group and rows every window came from.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from training.manifest import DataError, IntegrityError, Manifest, check_tokenizer, load_manifest, sha256_hex
from training.mixing import MixedSchedule
from training.order import EpochSchedule, OrderError, Shuffle
from training.shards import RowGroupCache, Segment, SplitIndex

__all__ = [
    "Batch",
    "BatchStream",
    "DataError",
    "EpochSchedule",
    "IntegrityError",
    "Manifest",
    "MixedSchedule",
    "OrderError",
    "Schedule",
    "Shuffle",
    "WindowSource",
    "check_tokenizer",
    "load_manifest",
    "make_schedule",
    "rank_slots",
    "sha256_hex",
    "validation_windows",
]

LOOKAHEAD_STEPS = 1024  # most steps planned (and their row groups pinned) ahead of the one built


class WindowSource:
    """Windows of ``seq_len + 1`` tokens over one split's stream; the short tail is dropped."""

    def __init__(
        self, manifest: Manifest, split: str, seq_len: int, cache_bytes: int = 512 << 20, threads: int = 4
    ) -> None:
        self.manifest, self.split, self.seq_len = manifest, split, seq_len
        self.index = SplitIndex(manifest, split)
        self.cache = RowGroupCache(self.index, cache_bytes, threads)
        self.n_windows = self.index.n_tokens // (seq_len + 1)

    def __len__(self) -> int:
        return self.n_windows

    def _span(self, window: int) -> tuple[int, int]:
        if not 0 <= window < self.n_windows:
            raise IndexError(f"window {window} out of range (0..{self.n_windows - 1})")
        start = window * (self.seq_len + 1)
        return start, start + self.seq_len + 1

    def row_groups(self, windows: Any) -> np.ndarray:
        """Sorted index positions of the row groups these windows read."""
        starts = np.asarray(windows, dtype=np.int64) * (self.seq_len + 1)
        first = np.searchsorted(self.index.start, starts, side="right") - 1
        last = np.searchsorted(self.index.start, starts + self.seq_len, side="right") - 1
        if len(first) and int((last - first).max()) > 1:  # row groups shorter than a window
            return np.unique(np.concatenate([np.arange(a, b + 1) for a, b in zip(first, last, strict=True)]))
        return np.unique(np.concatenate([first, last]))

    def window(self, window: int) -> tuple[np.ndarray, list[Segment]]:
        """The window's ``seq_len + 1`` tokens and the rows they came from."""
        return self.cache.read(*self._span(window))

    def gather(self, windows: Sequence[int]) -> tuple[Tensor, Tensor]:
        """(inputs, targets) LongTensors of shape [len(windows), seq_len]."""
        rows = np.stack([self.window(int(w))[0] for w in windows]).astype(np.int64)
        tensor = torch.from_numpy(rows)
        return tensor[:, :-1].contiguous(), tensor[:, 1:].contiguous()

    def close(self) -> None:
        self.cache.close()


# ---------------------------------------------------------------- schedules and slices


class Schedule(Protocol):
    global_batch: int
    shuffle: Shuffle

    def slots_at(self, step: int, start: int, stop: int) -> np.ndarray: ...

    def global_batch_at(self, step: int) -> np.ndarray: ...

    def position(self, step: int) -> dict[str, Any]: ...


def make_schedule(
    n_windows: Sequence[int],
    weights: Sequence[float | int | str | Fraction] | None,
    global_batch: int,
    seed: int,
    shuffle: Shuffle,
) -> Schedule:
    """The contract's :class:`EpochSchedule` for one source, a :class:`MixedSchedule` for several."""
    if len(n_windows) == 1:
        return EpochSchedule(n_windows[0], global_batch, seed, shuffle)
    return MixedSchedule(n_windows, weights or list(n_windows), global_batch, seed, shuffle)


def rank_slots(schedule: Schedule, step: int, rank: int, world_size: int) -> np.ndarray:
    """Rank ``r``'s contiguous share of the global batch of ``step``: [B/W, 2] (source, window)."""
    if schedule.global_batch % world_size:
        raise ValueError(f"world size {world_size} does not divide the global batch {schedule.global_batch}")
    per_rank = schedule.global_batch // world_size
    return schedule.slots_at(step, rank * per_rank, (rank + 1) * per_rank)


def validation_windows(
    n_windows: int, max_windows: int, global_batch: int, rank: int, world_size: int
) -> np.ndarray:
    """Fixed validation windows (the first ones, in order), the same count on every rank.

    Up to ``max_windows``, rounded down to whole global batches when there are enough windows, so
    the set does not depend on the world size.
    """
    n = min(n_windows, max_windows)
    n = n - n % global_batch if n >= global_batch else n - n % world_size
    return np.array_split(np.arange(n), world_size)[rank]


# ---------------------------------------------------------------- batches of this rank


@dataclass
class Batch:
    """This rank's share of one global step, with where every window came from. ``tokens`` holds
    each window's ``seq_len + 1`` tokens: inputs are the first ``seq_len``, targets the last."""

    step: int
    tokens: Tensor
    windows: list[list[int]] = field(default_factory=list)  # [source, window] per row
    sources: list[list[list[Any]]] = field(default_factory=list)  # per row: [shard, row_group, first, last]

    @property
    def inputs(self) -> Tensor:
        return self.tokens[:, :-1]

    @property
    def targets(self) -> Tensor:
        return self.tokens[:, 1:]


@dataclass
class _Plan:
    step: int
    pairs: np.ndarray  # [n, 2] (source, window)
    row_groups: dict[int, np.ndarray]  # source -> pinned index positions


class BatchStream:
    """This rank's batches for global steps ``start .. stop-1``, in order, built on one background
    thread up to ``prefetch_steps`` batches ahead (pinned host memory with ``pin_memory``).

    Steps are planned ahead of the one being built, each plan pinning its row groups in the
    sources' caches (which start fetching them): always the next step, and further steps while
    every cache's pinned row groups fit in its budget (at most ``LOOKAHEAD_STEPS``).
    """

    def __init__(
        self,
        sources: Sequence[WindowSource],
        schedule: Schedule,
        rank: int,
        world_size: int,
        start: int,
        stop: int,
        prefetch_steps: int = 2,
        pin_memory: bool = False,
    ) -> None:
        self.sources, self.schedule = list(sources), schedule
        self.rank, self.world_size = rank, world_size
        self.start, self.stop = start, stop
        self.prefetch_steps, self.pin_memory = max(1, prefetch_steps), pin_memory
        rank_slots(schedule, start, rank, world_size)  # fail early on a bad world size

    def _plan(self, step: int) -> _Plan:
        pairs = rank_slots(self.schedule, step, self.rank, self.world_size)
        row_groups = {}
        for k in np.unique(pairs[:, 0]):
            row_groups[int(k)] = self.sources[int(k)].row_groups(pairs[pairs[:, 0] == k, 1])
            self.sources[int(k)].cache.pin(row_groups[int(k)])
        return _Plan(step, pairs, row_groups)

    def _release(self, plan: _Plan) -> None:
        for k, positions in plan.row_groups.items():
            self.sources[k].cache.unpin(positions)

    def _room(self) -> bool:
        return all(s.cache.pinned_bytes < s.cache.cache_bytes for s in self.sources)

    def _build(self, plan: _Plan) -> Batch:
        seq = self.sources[0].seq_len + 1
        tokens = torch.empty((len(plan.pairs), seq), dtype=torch.int64, pin_memory=self.pin_memory)
        rows = tokens.numpy()
        windows, traces = [], []
        for i, (k, w) in enumerate(plan.pairs.tolist()):
            window, segments = self.sources[k].window(w)
            rows[i] = window
            windows.append([k, w])
            traces.append([s.to_json() for s in segments])
        return Batch(plan.step, tokens, windows, traces)

    def iter_steps(self) -> Iterator[Batch]:
        """Build the batches in this thread, planning and pinning ahead."""
        planned: deque[_Plan] = deque()
        next_step = self.start
        try:
            for step in range(self.start, self.stop):
                while next_step < self.stop and (
                    next_step <= step + 1 or (next_step - step <= LOOKAHEAD_STEPS and self._room())
                ):
                    planned.append(self._plan(next_step))
                    next_step += 1
                plan = planned.popleft()
                batch = self._build(plan)
                self._release(plan)
                yield batch
        finally:
            for plan in planned:
                self._release(plan)

    def __iter__(self) -> Iterator[Batch]:
        if self.start >= self.stop:
            return iter(())
        return self._threaded()

    def _threaded(self) -> Iterator[Batch]:
        out: queue.Queue[Batch | BaseException | None] = queue.Queue(maxsize=self.prefetch_steps)
        stop = threading.Event()

        def put(item: Batch | BaseException | None) -> bool:
            """Hand an item to the training thread; False once it stopped listening."""
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def produce() -> None:
            try:
                batches = self.iter_steps()
                for batch in batches:
                    if not put(batch):
                        batches.close()
                        return
                put(None)
            except BaseException as exc:  # surfaced in the training thread
                put(exc)

        thread = threading.Thread(target=produce, name=f"batches-rank{self.rank}", daemon=True)
        thread.start()
        expected = self.start
        try:
            while True:
                item = out.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                if item.step != expected:
                    raise DataError(f"data loader produced step {item.step}, expected {expected}")
                expected += 1
                yield item
        finally:
            stop.set()
            thread.join(timeout=10)
