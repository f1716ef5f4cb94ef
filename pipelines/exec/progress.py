"""Throttled progress lines (counts and rates) for long-running loops."""

from __future__ import annotations

import logging
import time

log = logging.getLogger("gristmill")


class Progress:
    """Log `<label>: N <unit>, R <unit>/s` at most every `every` seconds, and once more at `done()`."""

    def __init__(self, label: str, unit: str = "documents", every: float = 10.0) -> None:
        self.label, self.unit, self.every = label, unit, every
        self.count = 0
        self.start = self.last = time.perf_counter()

    def add(self, n: int = 1) -> None:
        self.count += n
        now = time.perf_counter()
        if now - self.last >= self.every:
            self.last = now
            self._log("so far")

    def done(self, extra: str = "") -> float:
        """Log the final count and return the elapsed seconds."""
        self._log(extra)
        return time.perf_counter() - self.start

    @property
    def rate(self) -> float:
        return self.count / max(time.perf_counter() - self.start, 1e-9)

    def _log(self, extra: str) -> None:
        log.info(
            "%s: %d %s, %.0f %s/s%s",
            self.label,
            self.count,
            self.unit,
            self.rate,
            self.unit,
            f" {extra}" if extra else "",
        )
