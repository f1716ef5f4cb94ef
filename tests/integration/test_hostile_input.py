"""Hostile input and hostile paths: every case is counted in quarantine with its reason, or refused with
one clear line, and no run is silently wrong, unbounded in memory or time, or written outside --output.

Inputs are built inside the tests; every subprocess runs under `timeout`.
"""

from __future__ import annotations

# ---------------------------------------------------------------- bad records, files and paths (ingest)


# ---------------------------------------------------------------- CLI errors: run ids, output, repeated inputs
