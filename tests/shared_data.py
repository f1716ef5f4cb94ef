"""Where the tests find ../shared/data (real public data beside the checkout; CI has it there too)."""

from __future__ import annotations

import os
from pathlib import Path

SHARED_DATA = Path(
    os.environ.get("GRISTMILL_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data"
)
