"""Training windows over streamed token shards, their global order, and this rank's batches.

A :class:`WindowSource` is one split of one manifest cut into non-overlapping windows of
``seq_len + 1`` tokens (docs/shard-format.md). A schedule maps a global step to the global batch of
(source, window) pairs: :class:`EpochSchedule` is the contract for a single manifest, and
:class:`training.mixing.MixedSchedule` mixes several by weight. Neither depends on the number of
ranks or loader workers: rank ``r`` of ``W`` takes the ``r``-th contiguous slice of the global batch,
so a run resumes exactly from a step on any world size that divides the batch. :class:`BatchStream`
yields this rank's batches in step order, building them on a background thread (or on DataLoader
worker processes, worker ``i`` taking every ``n``-th step) while row groups of the next steps are
fetched ahead; each batch says which shard, row group and rows every window came from.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from training.manifest import DataError, IntegrityError, Manifest, check_tokenizer, load_manifest, sha256_hex
from training.mixing import MixedSchedule
from training.shards import RowGroupReader, Segment, SplitIndex

__all__ = [
    "Batch",
    "BatchStream",
    "DataError",
    "EpochSchedule",
    "IntegrityError",
    "Manifest",
    "MixedSchedule",
    "Schedule",
    "WindowSource",
    "check_tokenizer",
    "epoch_order",
    "load_manifest",
    "make_schedule",
    "rank_slice",
    "sha256_hex",
    "validation_windows",
]


class WindowSource:
    """Windows of ``seq_len + 1`` tokens over one split's stream; the short tail is dropped."""

    def __init__(
        self, manifest: Manifest, split: str, seq_len: int, cache_bytes: int = 512 << 20, threads: int = 4
    ) -> None:
        self.manifest, self.split, self.seq_len = manifest, split, seq_len
        self.index = SplitIndex(manifest, split)
        self.reader = RowGroupReader(self.index, cache_bytes, threads)
        self.n_windows = self.index.n_tokens // (seq_len + 1)

    def __len__(self) -> int:
        return self.n_windows

    def _span(self, window: int) -> tuple[int, int]:
        if not 0 <= window < self.n_windows:
            raise IndexError(f"window {window} out of range (0..{self.n_windows - 1})")
        start = window * (self.seq_len + 1)
        return start, start + self.seq_len + 1

    def row_groups(self, window: int) -> range:
        """Index positions of the row groups this window reads."""
        return self.index.locate(*self._span(window))

    def window(self, window: int) -> tuple[np.ndarray, list[Segment]]:
        """The window's ``seq_len + 1`` tokens and the rows they came from."""
        return self.reader.read(*self._span(window))

    def prefetch(self, windows: Sequence[int]) -> None:
        self.reader.prefetch(sorted({pos for w in windows for pos in self.row_groups(int(w))}))

    def gather(self, windows: Sequence[int]) -> tuple[Tensor, Tensor]:
        """(inputs, targets) LongTensors of shape [len(windows), seq_len]."""
        rows = np.stack([self.window(int(w))[0] for w in windows]).astype(np.int64)
        tensor = torch.from_numpy(rows)
        return tensor[:, :-1].contiguous(), tensor[:, 1:].contiguous()


# ---------------------------------------------------------------- global order


@lru_cache(maxsize=4)
def epoch_order(n_windows: int, seed: int, epoch: int) -> np.ndarray:
    """The permutation of window indices for an epoch, seeded by (seed, epoch)."""
    order = np.random.default_rng([seed, epoch]).permutation(n_windows)
    order.flags.writeable = False
    return order


class Schedule(Protocol):
    global_batch: int

    def global_batch_at(self, step: int) -> np.ndarray: ...

    def position(self, step: int) -> dict[str, Any]: ...


class EpochSchedule:
    """The single-manifest contract: step ``s`` of an epoch takes ``order[s*B:(s+1)*B]``.

    When fewer than ``B`` windows remain the rest of the epoch is skipped and the next epoch's
    permutation starts.
    """

    kind = "epoch"

    def __init__(self, n_windows: int, global_batch: int, seed: int) -> None:
        if global_batch < 1:
            raise ValueError("global batch must be positive")
        if n_windows < global_batch:
            raise DataError(
                f"only {n_windows} windows, fewer than one batch of {global_batch}: "
                "use a smaller --batch-size/--seq-len or more data"
            )
        self.n_windows, self.global_batch, self.seed = n_windows, global_batch, seed
        self.steps_per_epoch = n_windows // global_batch

    def position(self, step: int) -> dict[str, Any]:
        """Position before global step ``step`` (after ``step`` completed steps)."""
        epoch, in_epoch = divmod(step, self.steps_per_epoch)
        return {"schedule": self.kind, "epoch": epoch, "windows_consumed": in_epoch * self.global_batch}

    def global_batch_at(self, step: int) -> np.ndarray:
        """[global_batch, 2] array of (source 0, window) for global step ``step``."""
        epoch, in_epoch = divmod(step, self.steps_per_epoch)
        start = in_epoch * self.global_batch
        windows = epoch_order(self.n_windows, self.seed, epoch)[start : start + self.global_batch]
        return np.stack([np.zeros_like(windows), windows], axis=1)


def make_schedule(
    n_windows: Sequence[int], weights: Sequence[Any] | None, global_batch: int, seed: int
) -> Schedule:
    """The contract's :class:`EpochSchedule` for one source, a :class:`MixedSchedule` for several."""
    if len(n_windows) == 1:
        return EpochSchedule(n_windows[0], global_batch, seed)
    return MixedSchedule(n_windows, weights or list(n_windows), global_batch, seed)


def rank_slice(global_batch: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """Rank ``r``'s contiguous share of a global batch."""
    if len(global_batch) % world_size:
        raise ValueError(f"world size {world_size} does not divide the global batch {len(global_batch)}")
    per_rank = len(global_batch) // world_size
    return global_batch[rank * per_rank : (rank + 1) * per_rank]


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
    """This rank's share of one global step, with where every window came from."""

    step: int
    inputs: Tensor
    targets: Tensor
    windows: list[list[int]] = field(default_factory=list)  # [source, window] per row
    sources: list[list[list[Any]]] = field(default_factory=list)  # per row: [shard, row_group, first, last]

    def pin_memory(self) -> Batch:
        """Page-locked inputs/targets for asynchronous host-to-GPU copies (DataLoader calls this)."""
        self.inputs, self.targets = self.inputs.pin_memory(), self.targets.pin_memory()
        return self


def build_batch(
    sources: Sequence[WindowSource], schedule: Schedule, step: int, rank: int, world_size: int
) -> Batch:
    pairs = rank_slice(schedule.global_batch_at(step), rank, world_size)
    rows, windows, traces = [], [], []
    for k, w in pairs:
        tokens, segments = sources[int(k)].window(int(w))
        rows.append(tokens)
        windows.append([int(k), int(w)])
        traces.append([s.to_json() for s in segments])
    tensor = torch.from_numpy(np.stack(rows).astype(np.int64))
    return Batch(step, tensor[:, :-1].contiguous(), tensor[:, 1:].contiguous(), windows, traces)


def _prefetch(
    sources: Sequence[WindowSource], schedule: Schedule, step: int, rank: int, world_size: int
) -> None:
    pairs = rank_slice(schedule.global_batch_at(step), rank, world_size)
    for k in np.unique(pairs[:, 0]):
        sources[int(k)].prefetch(pairs[pairs[:, 0] == k, 1].tolist())


class _StepDataset(torch.utils.data.IterableDataset):
    """DataLoader view: worker ``i`` of ``n`` builds steps ``start+i, start+i+n, ...``."""

    def __init__(self, stream: BatchStream) -> None:
        self.stream = stream

    def __iter__(self) -> Iterator[Batch]:
        info = torch.utils.data.get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info else (0, 1)
        return self.stream.iter_steps(
            range(self.stream.start + worker, self.stream.stop, n_workers), lookahead_stride=n_workers
        )


class BatchStream:
    """This rank's batches for global steps ``start .. stop-1``, in order.

    With ``workers == 0`` a background thread builds up to ``prefetch_steps`` batches ahead;
    otherwise a DataLoader with that many worker processes does. Row groups of the next
    ``prefetch_steps`` steps are requested ahead of time either way.
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
        workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        self.sources, self.schedule = list(sources), schedule
        self.rank, self.world_size = rank, world_size
        self.start, self.stop = start, stop
        self.prefetch_steps, self.workers, self.pin_memory = max(1, prefetch_steps), workers, pin_memory
        rank_slice(np.zeros((schedule.global_batch, 2)), rank, world_size)  # fail early on a bad world size

    def iter_steps(self, steps: range, lookahead_stride: int = 1) -> Iterator[Batch]:
        """Build the batches of ``steps`` in this process, prefetching row groups ahead."""
        requested = set()
        for step in steps:
            for ahead in range(
                step, min(step + self.prefetch_steps * lookahead_stride + 1, self.stop), lookahead_stride
            ):
                if ahead not in requested:
                    requested.add(ahead)
                    _prefetch(self.sources, self.schedule, ahead, self.rank, self.world_size)
            requested.discard(step)
            yield build_batch(self.sources, self.schedule, step, self.rank, self.world_size)

    def __iter__(self) -> Iterator[Batch]:
        if self.start >= self.stop:
            return iter(())
        if self.workers > 0:
            loader = torch.utils.data.DataLoader(
                _StepDataset(self),
                batch_size=None,
                num_workers=self.workers,
                prefetch_factor=self.prefetch_steps,
                pin_memory=self.pin_memory,
                collate_fn=lambda batch: batch,
                multiprocessing_context="fork",
            )
            return self._checked(iter(loader))
        return self._checked(self._threaded())

    def _checked(self, batches: Iterator[Batch]) -> Iterator[Batch]:
        for expected, batch in zip(range(self.start, self.stop), batches, strict=True):
            if batch.step != expected:
                raise DataError(f"data loader produced step {batch.step}, expected {expected}")
            yield batch

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
                for batch in self.iter_steps(range(self.start, self.stop)):
                    if not put(batch.pin_memory() if self.pin_memory else batch):
                        return
                put(None)
            except BaseException as exc:  # surfaced in the training thread
                put(exc)

        thread = threading.Thread(target=produce, name=f"batches-rank{self.rank}", daemon=True)
        thread.start()
        try:
            while True:
                item = out.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            thread.join(timeout=10)
