"""Deterministic weighted interleaving of several window sources (``--data A B --data-weights ...``).

Global sample slot ``i`` (counted over all ranks, ``slot = step * global_batch + position``) is
given to a source by a fixed rule: the ``j``-th sample of source ``k`` is due at time
``(j + 1/2) / w_k`` and slots take samples in order of (due time, source index). This is the
Sainte-Laguë/Webster sequence: after ``n`` slots every source has had ``n * w_k / sum(w)`` samples,
within one. Weights are exact fractions, so the rule is the same on every machine, and the counts
before any slot come in closed form (:meth:`Interleave.counts_at`), so any step can be produced
without replaying the earlier ones. Within a source, sample ``j`` is window
``permutation(seed, k, j // n_k)[j % n_k]``: each source runs through its own seeded epochs.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from fractions import Fraction
from functools import lru_cache

import numpy as np

from training.config import as_fraction


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


@lru_cache(maxsize=8)
def _source_order(n_windows: int, seed: int, source: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, source, epoch]).permutation(n_windows)


class MixedSchedule:
    """Global batches drawn from several sources by :class:`Interleave`; independent of world size."""

    kind = "mixed"

    def __init__(
        self,
        n_windows: Sequence[int],
        weights: Sequence[float | int | str | Fraction],
        global_batch: int,
        seed: int,
    ) -> None:
        if len(n_windows) != len(weights):
            raise ValueError(f"{len(n_windows)} sources but {len(weights)} weights")
        if min(n_windows) < 1:
            raise ValueError("every mixed source needs at least one window")
        self.n_windows = list(n_windows)
        self.interleave = Interleave(weights)
        self.global_batch = global_batch
        self.seed = seed

    def global_batch_at(self, step: int) -> np.ndarray:
        """[global_batch, 2] array of (source, window) for global step ``step``."""
        out = np.empty((self.global_batch, 2), dtype=np.int64)
        for i, (k, j) in enumerate(self.interleave.slots(step * self.global_batch, self.global_batch)):
            n = self.n_windows[k]
            out[i] = (k, _source_order(n, self.seed, k, j // n)[j % n])
        return out

    def position(self, step: int) -> dict[str, object]:
        """Where the reader stands before ``step``: slots used and samples taken per source."""
        counts = self.interleave.counts_at(step * self.global_batch)
        return {
            "schedule": self.kind,
            "slots_consumed": step * self.global_batch,
            "sources": [
                {"consumed": c, "epoch": c // n, "windows_consumed": c % n}
                for c, n in zip(counts, self.n_windows, strict=True)
            ],
        }
