"""Per-document quality signals, computed once and stored as Parquet columns.

Words are Unicode `\\w+` runs; a word is "alphabetic" if it holds at least one letter. Stop words come
from the stopwords-iso list of the document's detected language (English: Gopher's eight words);
`stop_word_count` is null for a language without a list, and policy rules never fire on a null signal.
"""

from __future__ import annotations

import re
from functools import lru_cache

import pyarrow as pa

from pipelines import langid

WORD_RE = re.compile(r"\w+")
LETTER_RE = re.compile(r"[^\W\d_]")
GOPHER_STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})

SIGNAL_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("n_chars", pa.int64()),
        ("n_lines", pa.int64()),
        ("word_count", pa.int64()),
        ("mean_word_length", pa.float64()),
        ("symbol_word_ratio", pa.float64()),
        ("alpha_word_fraction", pa.float64()),
        ("stop_word_count", pa.int64()),
        ("lang", pa.string()),
        ("lang_score", pa.float64()),
    ]
)
SIGNAL_NAMES = tuple(name for name in SIGNAL_SCHEMA.names if name not in ("id", "lang"))


@lru_cache(maxsize=256)
def stop_words(lang: str) -> frozenset[str]:
    """Stop words of a language (empty for a language without a list)."""
    if lang == "en":
        return GOPHER_STOP_WORDS
    import stopwordsiso

    return frozenset(stopwordsiso.stopwords(lang)) if stopwordsiso.has_lang(lang) else frozenset()


def compute(text: str, model_path: str | None = None) -> dict[str, object]:
    """All signals of one document."""
    words = WORD_RE.findall(text)
    n_words = len(words)
    lang, lang_score = langid.identify(text, model_path)
    stops = stop_words(lang)
    symbols = text.count("#") + text.count("...") + text.count("…")
    return {
        "n_chars": len(text),
        "n_lines": text.count("\n") + 1,
        "word_count": n_words,
        "mean_word_length": sum(map(len, words)) / n_words if n_words else 0.0,
        "symbol_word_ratio": symbols / n_words if n_words else float(symbols > 0),
        "alpha_word_fraction": sum(1 for w in words if LETTER_RE.search(w)) / n_words if n_words else 0.0,
        "stop_word_count": sum(1 for w in words if w.lower() in stops) if stops else None,
        "lang": lang,
        "lang_score": lang_score,
    }
