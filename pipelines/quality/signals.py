"""Per-document quality signals in one fused pass, stored as Parquet columns.

For each document: language and confidence (fastText lid.176), Gopher quality and repetition signals on
the raw text, C4's line cleaning, C4's document signals and FineWeb's signals on the cleaned text, and a
fastText quality score of the cleaned text. The text is split into words once (`pipelines.words`), words
are hashed once, and every count after that is a C-level string operation or numpy on the hashes.

Signal values follow datatrove's filters (GopherQualityFilter, GopherRepetitionFilter, C4QualityFilter,
FineWebQualityFilter); docs/filtering.md lists each signal, its datatrove counterpart and where they
differ. A signal that is undefined for a document (a ratio over zero words) is null, and a null signal
never breaks a policy rule.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import filterfalse
from typing import Any

import numpy as np
import pyarrow as pa
from datatrove.utils.text import TERMINAL_PUNCTUATION

from pipelines.config import CleaningConfig
from pipelines.quality import langid, repetition, words
from pipelines.quality.cleaning import Cleaned, clean

GOPHER_STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})
# Languages written without spaces: stop words are found anywhere in the text, not as whole words.
NO_SPACE_LANGUAGES = frozenset({"zh", "ja", "th", "lo", "km", "my", "wuu", "yue"})
SHORT_LINE_CHARS = 30
# a line indented by any whitespace (NBSP, ideographic space, ...) that starts with a bullet
_INDENTED_BULLET = re.compile(r"\n[^\S\n]+[•-]")
_LEADING_INDENTED_BULLET = re.compile(r"[^\S\n]+[•-]")
_ELLIPSIS_END = re.compile(r"(?:\.\.\.|…)[^\S\n]*\n")  # in text + "\n"
_TERMINAL_CHARS = frozenset(TERMINAL_PUNCTUATION)  # single characters, some outside the BMP

# name -> (Arrow type, description); the order is the column order of signals/.
SIGNALS: dict[str, tuple[pa.DataType, str]] = {
    "n_chars": (pa.int64(), "characters of the raw text"),
    "n_lines": (pa.int64(), "lines of the raw text (str.splitlines)"),
    "lang": (pa.string(), "language (ISO code) from fastText lid.176; 'und' for no text"),
    "lang_score": (pa.float64(), "fastText confidence of `lang`"),
    # Gopher quality, raw text
    "n_words_total": (pa.int64(), "words, punctuation tokens included (datatrove's spaCy-like count)"),
    "word_count": (pa.int64(), "Gopher: words that are not only punctuation"),
    "mean_word_length": (pa.float64(), "Gopher: mean characters of those words"),
    "hash_word_ratio": (pa.float64(), "Gopher: '#' per word (punctuation tokens included)"),
    "ellipsis_word_ratio": (pa.float64(), "Gopher: '...' and '…' per word"),
    "symbol_word_ratio": (pa.float64(), "Gopher: the larger of the hash and ellipsis ratios"),
    "bullet_line_ratio": (pa.float64(), "Gopher: share of lines starting with a bullet (• or -)"),
    "ellipsis_line_ratio": (pa.float64(), "Gopher: share of lines ending with an ellipsis"),
    "alpha_word_fraction": (
        pa.float64(),
        "Gopher: share of words (punctuation tokens included) with a letter",
    ),
    "gopher_stop_word_count": (pa.int64(), "Gopher: distinct English stop words of Gopher's eight present"),
    "stop_word_count": (pa.int64(), "distinct stop words of the document's language present (null: no list)"),
    # Gopher repetition, raw text
    "dup_para_fraction": (pa.float64(), "Gopher: paragraphs that repeat an earlier one"),
    "dup_para_char_fraction": (pa.float64(), "Gopher: characters in repeated paragraphs"),
    "dup_line_fraction": (pa.float64(), "Gopher: lines that repeat an earlier one"),
    "dup_line_char_fraction": (pa.float64(), "Gopher: characters in repeated lines"),
    **{
        f"top_{n}gram_char_fraction": (pa.float64(), f"Gopher: characters of the most frequent {n}-gram")
        for n in repetition.TOP_NGRAMS
    },
    **{
        f"dup_{n}gram_char_fraction": (pa.float64(), f"Gopher: characters in duplicated {n}-grams")
        for n in repetition.DUP_NGRAMS
    },
    # C4, line cleaning of the raw text
    "c4_lines_removed": (pa.int64(), "C4: lines removed by the line cleaning"),
    "c4_lorem_ipsum_lines": (pa.int64(), "C4: kept lines containing 'lorem ipsum'"),
    "c4_curly_bracket_lines": (pa.int64(), "C4: kept lines containing '{'"),
    "c4_sentence_count": (pa.int64(), "C4: sentences in the cleaned text"),
    "clean_chars": (pa.int64(), "characters of the cleaned text"),
    # FineWeb, cleaned text
    "fineweb_line_punct_ratio": (pa.float64(), "FineWeb: share of lines ending in terminal punctuation"),
    "fineweb_short_line_ratio": (
        pa.float64(),
        f"FineWeb: share of lines of at most {SHORT_LINE_CHARS} chars",
    ),
    "fineweb_dup_line_char_ratio": (
        pa.float64(),
        "FineWeb: characters in repeated lines per non-newline char",
    ),
    "fineweb_newline_ratio": (pa.float64(), "FineWeb: newlines per word"),
    # quality classifier, cleaned text
    "quality_score": (pa.float64(), "fastText quality classifier: probability of 'high quality'"),
}
SIGNAL_SCHEMA = pa.schema([("id", pa.string()), *((name, t) for name, (t, _) in SIGNALS.items())])
SIGNAL_NAMES = tuple(name for name in SIGNALS if name != "lang")


@lru_cache(maxsize=256)
def stop_words(lang: str) -> frozenset[str]:
    """Stop words of a language, lowercase (English: Gopher's eight; empty for a language without a list)."""
    if lang == "en":
        return GOPHER_STOP_WORDS
    import stopwordsiso

    if not stopwordsiso.has_lang(lang):
        return frozenset()
    # stopwords-iso lists hold some punctuation ("、", "？"): only entries with a letter count
    return frozenset(w.lower() for w in stopwordsiso.stopwords(lang) if any(c.isalpha() for c in w))


@lru_cache(maxsize=64)
def _stop_word_re(lang: str) -> re.Pattern[str]:
    ordered = sorted(stop_words(lang), key=len, reverse=True)
    return re.compile("|".join(map(re.escape, ordered)))


def count_stop_words(distinct_words: Iterable[str], text: str, lang: str) -> int | None:
    """Distinct stop words of `lang` among the document's distinct words (any case), found anywhere in the
    text for languages without spaces; None when the language has no stop-word list."""
    stops = stop_words(lang)
    if not stops:
        return None
    if lang in NO_SPACE_LANGUAGES:
        return len(set(_stop_word_re(lang).findall(text.lower())))
    found = set(stops.intersection(distinct_words))
    if len(found) < len(stops):  # words with capitals count in lowercase
        found.update(stops.intersection(map(str.lower, filterfalse(str.islower, distinct_words))))
    return len(found)


@dataclass
class SignalComputer:
    """Computes every signal of a document; holds the cleaning settings and model paths."""

    cleaning: CleaningConfig = field(default_factory=CleaningConfig)
    langid_model: str | None = None
    quality_model: str | None = None
    quality: bool = True

    def compute(self, text: str) -> tuple[dict[str, Any], str]:
        """(signals, cleaned text) of one document."""
        out: dict[str, Any] = {"n_chars": len(text)}
        raw_lines = text.splitlines()
        kind = words.kind_of(text)  # one scan of a non-ASCII text for marks and scripts without spaces
        no_space = kind == "full" and words.has_no_space_script(text)
        cleaned = clean(text, self.cleaning, raw_lines, no_space)
        out["lang"], out["lang_score"] = langid.identify(cleaned.text or text, self.langid_model)
        out["n_lines"] = len(raw_lines)
        tokens = words.split(text, kind)
        lengths = np.fromiter(map(len, tokens), np.int64, len(tokens))
        hashes = repetition.word_hashes(tokens, lengths)
        out.update(gopher_quality(text, tokens, raw_lines, out["lang"], int(lengths.sum()), hashes))
        out.update(repetition.line_signals(text))
        out.update(repetition.ngram_signals(hashes, lengths, len(text)))
        out.update(c4_signals(cleaned))
        out.update(fineweb(cleaned, out["n_words_total"]))
        out["quality_score"] = self._quality(cleaned.text)
        return out, cleaned.text

    def _quality(self, text: str) -> float | None:
        if not self.quality or not text:
            return None
        from pipelines.quality import classifier as quality

        return quality.score(text, self.quality_model)


def gopher_quality(
    text: str,
    tokens: list[str],
    lines: list[str],
    lang: str,
    token_chars: int | None = None,
    hashes: np.ndarray | None = None,
) -> dict[str, Any]:
    """GopherQualityFilter's signals (`tokens`: the words of `text`, with their total length and
    repetition.word_hashes if known; `lines`: text.splitlines())."""
    counted = words.stats(text, tokens, token_chars, hashes)
    n, n_words = counted.tokens, counted.words
    distinct = counted.distinct.keys()
    hashes = text.count("#")
    ellipses = text.count("...") + text.count("…")
    out: dict[str, Any] = {
        "n_words_total": n,
        "word_count": n_words,
        "mean_word_length": counted.word_chars / n_words if n_words else None,
        "hash_word_ratio": hashes / n if n else None,
        "ellipsis_word_ratio": ellipses / n if n else None,
        "symbol_word_ratio": max(hashes, ellipses) / n if n else None,
        "alpha_word_fraction": counted.alpha / n if n else None,
        "gopher_stop_word_count": len(GOPHER_STOP_WORDS & distinct),
        "stop_word_count": count_stop_words(distinct, text, lang),
    }
    if lines:
        if len(lines) != text.count("\n") + (not text.endswith("\n")):  # other line breaks than "\n"
            bullets = sum(1 for s in lines if s.lstrip().startswith(("•", "-")))
            ellipsis_ends = sum(1 for s in lines if s.rstrip().endswith(("...", "…")))
        else:  # lines split at "\n" (a "\r" before it is whitespace): str.count, and regexes for indents
            bullets = text.count("\n-") + text.count("\n•") + text.startswith(("-", "•"))
            bullets += len(_INDENTED_BULLET.findall(text))
            bullets += _LEADING_INDENTED_BULLET.match(text) is not None
            ellipsis_ends = len(_ELLIPSIS_END.findall(f"{text}\n")) if ellipses else 0
        out["bullet_line_ratio"] = bullets / len(lines)
        out["ellipsis_line_ratio"] = ellipsis_ends / len(lines)
    else:
        out["bullet_line_ratio"] = out["ellipsis_line_ratio"] = None
    return out


def c4_signals(cleaned: Cleaned) -> dict[str, Any]:
    return {
        "c4_lines_removed": cleaned.lines_removed,
        "c4_lorem_ipsum_lines": cleaned.lorem_ipsum_lines,
        "c4_curly_bracket_lines": cleaned.curly_bracket_lines,
        "c4_sentence_count": cleaned.sentences,
        "clean_chars": len(cleaned.text),
    }


def fineweb(cleaned: Cleaned, raw_token_count: int) -> dict[str, Any]:
    """FineWebQualityFilter's signals of the cleaned text (null when it has no non-blank line)."""
    text = cleaned.text
    if not text:
        return dict.fromkeys(
            ("fineweb_line_punct_ratio", "fineweb_short_line_ratio", "fineweb_dup_line_char_ratio",
             "fineweb_newline_ratio")
        )  # fmt: skip
    lines = list(filter(None, text.split("\n")))  # cleaned lines are stripped: blank ones are empty
    # words never span lines: the cleaned text has the raw words less those of the removed lines, and
    # less the citations cut out of kept lines
    n_words = raw_token_count
    if cleaned.lines_removed:
        n_words -= words.count(cleaned.removed_text)
    if cleaned.cited_before:
        n_words += words.count(cleaned.cited_after) - words.count(cleaned.cited_before)
    punct_lines = sum(map(_TERMINAL_CHARS.__contains__, [line[-1] for line in lines]))
    lengths = np.fromiter(map(len, lines), np.int64, len(lines))
    newlines = text.count("\n")
    return {
        "fineweb_line_punct_ratio": punct_lines / len(lines),
        "fineweb_short_line_ratio": int((lengths <= SHORT_LINE_CHARS).sum()) / len(lines),
        "fineweb_dup_line_char_ratio": repetition.duplicates(lines)[1] / (len(text) - newlines),
        "fineweb_newline_ratio": newlines / n_words if n_words else None,
    }


def compute(text: str, langid_model: str | None = None) -> dict[str, Any]:
    """All signals of one document with the default settings (no quality model)."""
    return SignalComputer(langid_model=langid_model, quality=False).compute(text)[0]
