"""Run this environment's `gristmill` console script the way a user does (the tests' front door)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

GRISTMILL = Path(sys.executable).parent / "gristmill"


def gristmill(
    *args: str,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 600,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """`gristmill ARGS` with `env` added to this environment; with `check`, fail showing its output."""
    result = subprocess.run(
        [str(GRISTMILL), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    if check:
        command = " ".join(args)
        assert result.returncode == 0, (
            f"gristmill {command} failed ({result.returncode}):\n{result.stdout}\n{result.stderr[-6000:]}"
        )
    return result
