"""Word splitting for the quality signals: one regular expression, counted the way datatrove counts spaCy's.

datatrove's Gopher and FineWeb filters count spaCy's English tokens, punctuation included. `split` is
one regular expression that gives the same tokens on ordinary text: punctuation is its own token (`...`
and `--` stay whole), clitics are split off (`it's` -> `it` `'s`, `don't` -> `don` `'t` where spaCy says
`do` `n't`: the same count), numbers keep their separators (`3.50`, `1,000`), inner apostrophes and
periods stay (`o'clock`, `U.S`). Three spaCy rules that would slow the expression down are applied to the
counts afterwards (`stats`): the period of an initial or abbreviation belongs to it (`J.`, `U.S.`, `Dr.`),
`cannot` is two words, and a URL is one word.

Letters followed by combining marks stay one word, so Devanagari, Bengali or Tamil words are not cut at
their vowel signs. Scripts written without spaces between words (Han, kana, Thai, Lao, Khmer, Myanmar)
give one word per character (with its marks); docs/filtering.md explains how that differs from datatrove.
"""

from __future__ import annotations

import re
import sys
import unicodedata
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from itertools import filterfalse
from typing import Literal

import numpy as np
from datatrove.utils.text import PUNCTUATION_SET

# Scripts without spaces between words: one "word" per character.
NO_SPACE_RANGES = (
    "\u0e00-\u0e7f"  # Thai
    "\u0e80-\u0eff"  # Lao
    "\u1000-\u109f"  # Myanmar
    "\u1780-\u17ff"  # Khmer
    "\u2e80-\u2fdf"  # CJK and Kangxi radicals
    "\u3005-\u3007\u3021-\u3029\u3038-\u303b"  # ideographic marks and numerals
    "\u3040-\u30ff\u31f0-\u31ff"  # Hiragana, Katakana
    "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # CJK ideographs
    "\uff66-\uff9f"  # half-width Katakana
    "\U00020000-\U0003134f"  # CJK ideographs, supplementary planes
)
NO_SPACE_CHAR_RE = re.compile(f"[{NO_SPACE_RANGES}]")
CLITIC = r"(?:[sSdDmMtT]|re|RE|ll|LL|ve|VE)(?![^\W_])"  # after an apostrophe: split off, as spaCy does
# Abbreviations that spaCy's English tokenizer keeps with their period (its tokenizer exceptions), and
# single letters (initials); `split` makes the period a token of its own.
ABBREVIATIONS = (
    "Adm", "Ak", "Ala", "Apr", "Ariz", "Ark", "Aug", "Bros", "Calif", "Co", "Colo", "Conn", "Corp", "Dec",
    "Del", "Dr", "Feb", "Fla", "Ga", "Gen", "Gov", "Ia", "Id", "Ill", "Inc", "Ind", "Jan", "Jr", "Jul",
    "Jun", "Kan", "Kans", "Ky", "La", "Ltd", "Mar", "Mass", "Md", "Mich", "Minn", "Miss", "Mo", "Mont",
    "Mr", "Mrs", "Ms", "Mt", "Neb", "Nebr", "Nev", "Nov", "Oct", "Okla", "Ore", "Pa", "Prof", "Rep", "Rev",
    "Sen", "Sep", "Sept", "St", "Tenn", "Va", "Wash", "Wis", "co", "vs",
)  # fmt: skip
ABBREVIATION_WORDS = frozenset(ABBREVIATIONS) | frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
)
_INITIALS_RE = re.compile(r"[A-Za-z](?:\.[A-Za-z])+")  # U.S, e.g (their last period is a token of its own)
URL_RE = re.compile(r"https?://[^\s<>\"]*[^\s<>\".,;:!?)\]'”’]")
# A token made only of these characters is a "symbol", not a word (datatrove's PUNCTUATION_SET).
SYMBOL_CHARS = frozenset(PUNCTUATION_SET)
SYMBOL_TOKENS = SYMBOL_CHARS | {c * k for c in ".-" for k in range(2, 65)}
# one match per token (tokens joined by newlines) that holds no letter
NO_LETTER_RE = re.compile(r"^(?:[^\w\n]|[\d_])+$", re.MULTILINE)


def _bmp_class(keep: object) -> str:
    """A character-class body listing the Basic Multilingual Plane code points for which `keep(ch)` holds."""
    ranges: list[list[int]] = []
    for cp in range(0x10000):
        if keep(chr(cp)):  # type: ignore[operator]
            if ranges and ranges[-1][1] == cp - 1:
                ranges[-1][1] = cp
            else:
                ranges.append([cp, cp])
    return "".join(re.escape(chr(a)) + (f"-{re.escape(chr(b))}" if b > a else "") for a, b in ranges)


@lru_cache(maxsize=1)
def mark_re() -> re.Pattern[str]:
    """Combining marks (vowel signs, diacritics) outside the scripts without spaces."""
    marks = _bmp_class(lambda ch: unicodedata.category(ch)[0] == "M" and not NO_SPACE_CHAR_RE.match(ch))
    return re.compile(f"[{marks}]")


@lru_cache(maxsize=1)
def no_space_marks() -> str:
    """A character class of the combining marks of the scripts without spaces (Thai vowel signs, ...)."""
    return (
        "[" + _bmp_class(lambda ch: unicodedata.category(ch)[0] == "M" and NO_SPACE_CHAR_RE.match(ch)) + "]"
    )


# The four forms of the expression, each for the texts it splits exactly as the "full" form would:
# - "ascii": ASCII texts, with explicit character classes (a bitmap lookup per character);
# - "bmp": other texts of the Basic Multilingual Plane only, with explicit classes of its letters and
#   spaces (a two-level table lookup; Unicode categories cost a quarter more);
# - "unicode": texts with characters beyond it (emoji, ...), with Unicode categories;
# - "full": texts with combining marks or a script without spaces.
Kind = Literal["ascii", "bmp", "unicode", "full"]


@lru_cache(maxsize=4)
def _classes(kind: Kind) -> tuple[str, str, str]:
    r"""(letter class, word-character class body, whitespace class body) of one form ("\w" is a letter,
    a digit or "_"; a letter here is a word character other than "_")."""
    if kind == "ascii":  # str.isspace also holds for the separators \x1c-\x1f
        return "[A-Za-z0-9]", "A-Za-z0-9_", r"\t-\r\x1c-\x20"
    if kind == "bmp":
        alnum = _bmp_class(str.isalnum)
        return f"[{alnum}]", f"{alnum}_", _bmp_class(str.isspace)
    return (f"[^\\W_{NO_SPACE_RANGES}]" if kind == "full" else r"[^\W_]"), r"\w", r"\s"


def _pattern(kind: Kind) -> str:
    """The word-splitting alternatives of one form of the expression."""
    full = kind == "full"
    letter, w, s = _classes(kind)
    marks = mark_re().pattern
    word = f"(?:{letter}|{marks})(?:{letter}+|{marks}+)*" if full else f"{letter}+"
    # a word is matched possessively, and so are its joined pieces: nothing after them can need fewer
    # (each piece starts with a character that is not a letter), and the regex engine skips the
    # bookkeeping for backtracking
    return "|".join(
        [
            # a word, with inner apostrophes and periods (o'clock, U.S) and number separators (3.50, 10:30)
            # (but, as in spaCy, a period between a lower- and an uppercase letter splits: "her.I"), and
            # punctuation that spaCy has no infix rule for, between two words ("note;[1", "Ross.--_Dublin")
            rf"(?>{word})(?:(?=[^{w}{s}]|_)(?:['’](?!{CLITIC}){word}|\.(?:(?<![a-z]\.)|(?![A-Z])){word}"
            rf"|[,:/]\d+|(?:[^{w}{s}'’.,:/<>=\-–—~…]|_|\.(?=[^{w}{s}.]|_))(?:[^{w}{s}]|_)*{word}))*+",
            rf"['’]{CLITIC}",  # 's 're 'll 've 'd 'm, and 't of n't
            r"\.{2,}|-{2,}",  # ... and --
            rf"@[{w}]+",  # @handle
            *(
                [f"[{NO_SPACE_RANGES}]{no_space_marks()}*"] if full else []
            ),  # a character of a no-space script
            f"[^{s}]",  # any other character
        ]
    )


@lru_cache(maxsize=4)
def token_re(kind: Kind) -> re.Pattern[str]:
    """The word-splitting expression (built once per process). Its one group is a token; the
    whitespace before it is skipped by one possessive run rather than by failing every alternative at
    each whitespace character (the text must not end in whitespace: `split` strips it)."""
    return re.compile(rf"[{_classes(kind)[2]}]*+({_pattern(kind)})")


@lru_cache(maxsize=1)
def _needs_full_re() -> re.Pattern[str]:
    return re.compile(f"[{NO_SPACE_RANGES}{mark_re().pattern[1:-1]}]")


@lru_cache(maxsize=1)
def _beyond_bmp_re() -> re.Pattern[str]:
    """What takes a non-ASCII text off the "bmp" form: a combining mark, a character of a script without
    spaces, or one beyond the Basic Multilingual Plane."""
    return re.compile(f"[{_needs_full_re().pattern[1:-1]}\U00010000-\U0010ffff]")


def kind_of(text: str) -> Kind:
    """Which form of the expression splits `text`: one scan of a non-ASCII text, two when it has a
    character beyond the Basic Multilingual Plane (str.isascii is a flag lookup, not a scan)."""
    if text.isascii():
        return "ascii"
    found = _beyond_bmp_re().search(text)
    if found is None:
        return "bmp"
    if _needs_full_re().match(found.group()) or _needs_full_re().search(text, found.end()):
        return "full"
    return "unicode"


def split(text: str, kind: Kind | None = None) -> list[str]:
    """The words of `text`, punctuation tokens included (`kind`: kind_of(text), if known)."""
    return token_re(kind or kind_of(text)).findall(text.rstrip())


@dataclass
class Stats:
    """Counts over a document's words as datatrove counts its spaCy tokens."""

    tokens: int  # all words, punctuation included
    words: int  # words that are not only punctuation
    word_chars: int  # characters of those
    alpha: int  # words with a letter
    distinct: Counter[str]  # each word of `split` with its count


def stats(
    text: str, tokens: list[str], token_chars: int | None = None, hashes: np.ndarray | None = None
) -> Stats:
    """Counts of `tokens` (= split(text); `token_chars`: their total length, and `hashes`: their
    repetition.word_hashes, if known), with spaCy's URL, abbreviation and "cannot" rules applied."""
    counts = Counter(tokens)
    n = len(tokens)
    urls = _urls(text)
    if urls:  # spaCy keeps a URL whole: its pieces become one word
        for url, pieces in urls:
            counts.subtract(pieces)
            counts[url] += 1
            n -= len(pieces) - 1
        counts = +counts
    count = counts.__getitem__
    symbols = counts.keys() & SYMBOL_TOKENS
    n_symbols = sum(map(count, symbols))
    word_chars = (sum(map(len, tokens)) if token_chars is None else token_chars) - sum(
        count(s) * len(s) for s in symbols
    )
    # words with no letter: among those that are not all letters, the ones NO_LETTER_RE matches
    alpha = n - sum(map(count, NO_LETTER_RE.findall("\n".join(filterfalse(str.isalpha, counts)))))
    # spaCy keeps "Dr." and "J." whole: the period token joins the word before it
    periods = _abbreviation_periods(tokens, hashes) if counts["."] else 0
    n, n_symbols, word_chars = n - periods, n_symbols - periods, word_chars + periods
    # spaCy splits "cannot" into "can" "not"
    cannots = counts["cannot"] + counts["Cannot"]
    n, alpha = n + cannots, alpha + cannots
    return Stats(n, n - n_symbols, word_chars, alpha, counts)


def _urls(text: str) -> list[tuple[str, list[str]]]:
    """Each URL in `text` with the words `split` makes of it."""
    return [(url, split(url)) for url in URL_RE.findall(text)] if "://" in text else []


def _is_abbreviation(word: str) -> bool:
    """Whether a period right after `word` belongs to it (an abbreviation or an initial)."""
    return word in ABBREVIATION_WORDS or ("." in word and _INITIALS_RE.fullmatch(word) is not None)


def _abbreviation_periods(tokens: list[str], hashes: np.ndarray | None = None) -> int:
    """Period tokens right after an abbreviation or initial (`hashes`: repetition.word_hashes of the
    tokens, if known: then each distinct word before a period is looked at once)."""
    if hashes is not None:
        at = np.flatnonzero(hashes == hashes[tokens.index(".")])
        at = at[at > 0] - 1  # the words before periods
        _, first, times = np.unique(hashes[at], return_index=True, return_counts=True)
        before = at[first].tolist()
        return sum(t for i, t in zip(before, times.tolist(), strict=True) if _is_abbreviation(tokens[i]))
    found = 0
    index = tokens.index
    i = -1
    while True:
        try:
            i = index(".", i + 1)
        except ValueError:
            return found
        found += i > 0 and _is_abbreviation(tokens[i - 1])


def count(text: str) -> int:
    """How many tokens spaCy's English tokenizer gives for `text` (`stats(...).tokens`, computed faster)."""
    tokens = split(text)
    n = len(tokens)
    if "." in text:
        n -= _abbreviation_periods(tokens)
    if "annot" in text:
        n += tokens.count("cannot") + tokens.count("Cannot")
    return n - sum(len(pieces) - 1 for _, pieces in _urls(text))


def has_no_space_script(text: str) -> bool:
    return NO_SPACE_CHAR_RE.search(text) is not None


if __name__ == "__main__":  # pragma: no cover - a quick look: python -m pipelines.words "some text"
    text = " ".join(sys.argv[1:])
    print(split(text), stats(text, split(text)))
