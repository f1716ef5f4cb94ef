"""Where the tests find ../shared/data: real public data beside the checkout.

Order: $GRISTMILL_SHARED_DATA, then `shared/data` beside this checkout, then beside the checkout this one
was cloned from (a fresh CI clone in a temporary folder still finds the data of its origin).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _origin_checkout() -> Path | None:
    """The local checkout this one was cloned from, if its origin is a path."""
    try:
        url = subprocess.run(
            ["git", "-C", str(REPO), "config", "--get", "remote.origin.url"],
            capture_output=True, text=True, timeout=10, check=False,
        ).stdout.strip()  # fmt: skip
    except OSError:
        return None
    url = url.removeprefix("file://")
    return Path(url) if url.startswith("/") else None


def _find() -> Path:
    if os.environ.get("GRISTMILL_SHARED_DATA"):
        return Path(os.environ["GRISTMILL_SHARED_DATA"])
    beside = REPO.parent / "shared" / "data"
    origin = _origin_checkout()
    if not beside.is_dir() and origin is not None and (origin.parent / "shared" / "data").is_dir():
        return origin.parent / "shared" / "data"
    return beside


SHARED_DATA = _find()
