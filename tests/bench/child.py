"""Run one benchmark step in a fresh Python process (`SCRIPT --child STEP ARGS...`); its JSON result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def run_child(script: str | Path, step: str, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """The last stdout line of `python SCRIPT --child STEP ARGS`, parsed as JSON; its stderr if it fails."""
    out = subprocess.run(
        [sys.executable, str(Path(script).resolve()), "--child", step, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'tests' / 'support'}", **(env or {})},
        timeout=1800,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{step} failed:\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])
