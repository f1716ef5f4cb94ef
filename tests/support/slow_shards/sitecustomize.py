"""Slows every shard down, so that a test can kill a stage between shards.

A test puts this folder on PYTHONPATH of a `gristmill` child process; Python imports it at start-up. It
wraps `pipelines.exec.runner._call` (what a worker runs per shard): `SLOW_SHARD_BEFORE` seconds before
each shard starts, `SLOW_SHARD_AFTER` seconds after it finished.
"""

import os
import time

BEFORE = float(os.environ.get("SLOW_SHARD_BEFORE") or 0)
AFTER = float(os.environ.get("SLOW_SHARD_AFTER") or 0)

if BEFORE or AFTER:
    from pipelines.exec import runner

    _call = runner._call

    def _slow_call(task, index):  # type: ignore[no-untyped-def]
        time.sleep(BEFORE)
        counts = _call(task, index)
        time.sleep(AFTER)
        return counts

    runner._call = _slow_call
