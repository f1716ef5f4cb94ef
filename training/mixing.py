"""Deterministic weighted interleaving of several window sources (``--data A B --data-weights ...``).

The global batch is filled lane by lane as in :mod:`training.order`: lane ``p`` gives
``global_batch / lanes`` consecutive slots of every step, and lane slot ``t = step * per_lane + i``
is given to a source by a fixed rule: the ``j``-th sample of source ``k`` is due at time
``(j + 1/2) / w_k`` and slots take samples in order of (due time, source index). This is the
Sainte-Laguë/Webster sequence: after ``n`` slots of a lane every source has had ``n * w_k / sum(w)``
samples of that lane, within one (within ``lanes`` over the whole batch). Weights are exact
fractions, so the rule is the same on every machine, and the counts before any slot come in closed
form (:meth:`Interleave.counts_at`), so any step can be produced without replaying the earlier ones.
Every lane follows the same rule, so all lanes draw the same sources at the same slot. Sample ``j``
of source ``k`` in lane ``p`` is position ``j % m_k`` of lane ``p`` of that source's streaming order
in epoch ``j // m_k`` (``m_k = n_windows_k // lanes``, permutations seeded by ``(seed, k, epoch)``):
each source runs through its own epochs, read as locally as a single source.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

import numpy as np

from training.config import as_fraction
from training.order import OrderError, Shuffle, lane_windows


class Interleave:
    """Which source each global slot draws from, for weights ``w_k``."""

    def __init__(self, weights: Sequence[float | int | str | Fraction]) -> None:
        if not weights:
            raise ValueError("at least one weight is needed")
        self.weights = [as_fraction(w) for w in weights]
        self.total = sum(self.weights, Fraction(0))

    def _due(self, k: int, j: int) -> Fraction:
        return (j + Fraction(1, 2)) / self.weights[k]

    def counts_at(self, n: int) -> list[int]:
        """Samples taken from each source by the first ``n`` slots."""
        threshold = Fraction(n) / self.total
        counts = [max(0, math.floor(threshold * w + Fraction(1, 2))) for w in self.weights]
        taken = sum(counts)
        while taken < n:
            k = min(range(len(counts)), key=lambda i: (self._due(i, counts[i]), i))
            counts[k] += 1
            taken += 1
        while taken > n:
            k = max(
                (i for i in range(len(counts)) if counts[i]), key=lambda i: (self._due(i, counts[i] - 1), i)
            )
            counts[k] -= 1
            taken -= 1
        return counts

    def slots(self, start: int, count: int) -> list[tuple[int, int]]:
        """(source, sample index in that source) for slots ``start .. start+count-1``."""
        counts = self.counts_at(start)
        heap = [(self._due(k, c), k) for k, c in enumerate(counts)]
        heapq.heapify(heap)
        out = []
        for _ in range(count):
            _, k = heapq.heappop(heap)
            out.append((k, counts[k]))
            counts[k] += 1
            heapq.heappush(heap, (self._due(k, counts[k]), k))
        return out


class MixedSchedule:
    """Global batches drawn from several sources by :class:`Interleave`; independent of world size."""

    kind = "mixed"

    def __init__(
        self,
        n_windows: Sequence[int],
        weights: Sequence[float | int | str | Fraction],
        global_batch: int,
        seed: int,
        shuffle: Shuffle,
    ) -> None:
        if len(n_windows) != len(weights):
            raise ValueError(f"{len(n_windows)} sources but {len(weights)} weights")
        if global_batch % shuffle.lanes:
            raise OrderError(f"{shuffle.lanes} lanes do not divide the global batch {global_batch}")
        if min(n_windows) < shuffle.lanes:
            raise OrderError(f"every mixed source needs at least one window per lane ({shuffle.lanes})")
        self.n_windows = list(n_windows)
        self.interleave = Interleave(weights)
        self.global_batch, self.seed, self.shuffle = global_batch, seed, shuffle
        self.per_lane = global_batch // shuffle.lanes
        self.lane_len = [n // shuffle.lanes for n in self.n_windows]

    def slots_at(self, step: int, start: int, stop: int) -> np.ndarray:
        """[stop-start, 2] array of (source, window) for slots ``start .. stop-1`` of step ``step``."""
        picks = np.array(self.interleave.slots(step * self.per_lane, self.per_lane), dtype=np.int64)
        slots = np.arange(start, stop, dtype=np.int64)
        lanes, offsets = np.divmod(slots, self.per_lane)
        sources, samples = picks[offsets, 0], picks[offsets, 1]
        out = np.stack([sources, np.empty_like(sources)], axis=1)
        for k in np.unique(sources):
            m = self.lane_len[int(k)]
            epochs, positions = np.divmod(samples, m)
            for lane in np.unique(lanes[sources == k]):
                for epoch in np.unique(epochs[(sources == k) & (lanes == lane)]):
                    mask = (sources == k) & (lanes == lane) & (epochs == epoch)
                    out[mask, 1] = lane_windows(
                        self.n_windows[int(k)],
                        self.shuffle,
                        (self.seed, int(k), int(epoch)),
                        int(lane),
                        m,
                        positions[mask],
                    )
        return out

    def global_batch_at(self, step: int) -> np.ndarray:
        """[global_batch, 2] array of (source, window) for global step ``step``."""
        return self.slots_at(step, 0, self.global_batch)

    def position(self, step: int) -> dict[str, Any]:
        """Where the reader stands before ``step``: slots used and samples taken per source."""
        counts = self.interleave.counts_at(step * self.per_lane)
        lanes = self.shuffle.lanes
        return {
            "schedule": self.kind,
            "slots_consumed": step * self.global_batch,
            "sources": [
                {"consumed": c * lanes, "epoch": c // m, "windows_consumed": (c % m) * lanes}
                for c, m in zip(counts, self.lane_len, strict=True)
            ],
        }
