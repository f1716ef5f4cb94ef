"""Gopher repetition signals (Rae et al. 2021, table A1) computed on hashed words with numpy.

Values equal datatrove's GopherRepetitionFilter for the same words: duplicate lines and paragraphs by
count and by characters, the character share of the most frequent 2/3/4-gram (its characters, spaces
included, times its count), and the share of characters in duplicated 5..10-grams found by datatrove's
left-to-right scan (a repeated n-gram counts, then the scan jumps past it).

n-grams are compared by a 64-bit hash of their words (`word_hashes`), never built as strings (a
collision is vanishingly rare). Exact counting sorts, so it runs only on the n-grams that can matter:
a hash table of bucket counts (`np.bincount`) first rules out every n-gram that occurs once (for the
duplicate scans) or less often than the most frequent one found so far (for the top n-gram), and an
n-gram can repeat only where the two (n-1)-grams it holds may repeat, so each length looks only at
the places the shorter one left (from 3-grams on).
"""

from __future__ import annotations

from collections import Counter

import numpy as np

TOP_NGRAMS = (2, 3, 4)
DUP_NGRAMS = (5, 6, 7, 8, 9, 10)
MAX_WORDS = 1_000_000  # n-gram signals of longer documents look at their first MAX_WORDS words only
SMALL = 2_048  # below this many n-grams, sort them all: the bucket table does not pay
# (numpy wraps integer arrays modulo 2**64 silently: only arithmetic on numpy scalars warns)
_MIX = np.uint64(0x9E3779B97F4A7C15)
_LENGTH_MIX = np.uint64(0xBF58476D1CE4E5B9)


def duplicates(items: list[str]) -> tuple[int, int]:
    """(number of items equal to an earlier item, their characters): datatrove's find_duplicates."""
    unique = set(items)
    return len(items) - len(unique), sum(map(len, items)) - sum(map(len, unique))


def split_lines(text: str) -> list[str]:
    """`re.split("\\n+", text)`, without the regex: runs of newlines separate lines."""
    lines = list(filter(None, text.split("\n")))
    if text.startswith("\n"):
        lines.insert(0, "")
    if text.endswith("\n") or not text:
        lines.append("")
    return lines


def split_paragraphs(text: str) -> list[str]:
    """`re.split("\\n{2,}", text)` for a stripped text, with str.split."""
    if "\n\n\n" not in text:
        return text.split("\n\n")
    return [p.lstrip("\n") for p in text.split("\n\n") if p.strip("\n")]


def line_signals(text: str) -> dict[str, float | None]:
    """Duplicate paragraph and line fractions, by count and by characters of the text."""
    if not text:
        return dict.fromkeys(
            ("dup_para_fraction", "dup_para_char_fraction", "dup_line_fraction", "dup_line_char_fraction")
        )
    paragraphs = split_paragraphs(text.strip())
    lines = split_lines(text)
    para_dups, para_chars = duplicates(paragraphs)
    line_dups, line_chars = duplicates(lines)
    return {
        "dup_para_fraction": para_dups / len(paragraphs),
        "dup_para_char_fraction": para_chars / len(text),
        "dup_line_fraction": line_dups / len(lines),
        "dup_line_char_fraction": line_chars / len(text),
    }


def word_hashes(tokens: list[str], lengths: np.ndarray) -> np.ndarray:
    """A uint64 hash of each word (`lengths`: their lengths, int64). CPython hashes a string's buffer,
    not its characters, so strings of different widths with the same bytes collide ('祭' and 'my' are
    both the bytes 6d 79): the length is mixed in, after which equal hashes mean equal words (up to
    64-bit collisions)."""
    raw = np.fromiter(map(hash, tokens), np.int64, len(tokens)).view(np.uint64)
    return raw ^ (lengths.view(np.uint64) * _LENGTH_MIX)


def extend(prev: np.ndarray, token_hashes: np.ndarray, n: int) -> np.ndarray:
    """Hashes of the n-grams from those of the (n-1)-grams (position i: words i..i+n-1).

    A polynomial hash modulo 2**64 over uniformly random word hashes: uniform, so two different
    n-grams collide with probability about 2**-64.
    """
    return prev[:-1] * _MIX + token_hashes[n - 1 :]


def _buckets(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(bucket of each value, count of each bucket) in a table of two to four buckets per value. The
    n-gram hashes are uniform already: their top bits are the bucket."""
    bits = max(4, len(values).bit_length() + 1)
    bucket = (values >> np.uint64(64 - bits)).view(np.intp)
    return bucket, np.bincount(bucket, minlength=1 << bits)


def _groups(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sort order, group number of each sorted value, size of each group) of equal values: the part of
    np.unique this module needs, with fewer passes. The order within a group is arbitrary (an unstable
    sort is several times faster on 64-bit keys): callers use groups as sets of positions."""
    order = np.argsort(values)
    ordered = values[order]
    new = np.empty(len(values), bool)
    new[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=new[1:])
    group = np.cumsum(new) - 1
    return order, group, np.bincount(group)


def _next_candidates(positions: np.ndarray) -> np.ndarray:
    """Of the positions (ascending) whose n-gram may repeat, those where the next n-gram may repeat too:
    the only places an (n+1)-gram can repeat."""
    return positions[:-1][positions[1:] == positions[:-1] + 1]


def top_ngram(hashes: np.ndarray, candidates: np.ndarray | None = None) -> tuple[int, int, np.ndarray]:
    """(first position of the most frequent n-gram, its count, where an (n+1)-gram may repeat); the first
    seen wins a tie. `candidates` (ascending) restricts the search: n-grams elsewhere must occur once."""
    positions = np.arange(len(hashes)) if candidates is None else candidates
    values = hashes if candidates is None else hashes[candidates]
    if len(values) == 0:
        return 0, 1, positions  # no n-gram repeats: the first one wins
    if len(values) > SMALL:
        bucket, counts = _buckets(values)
        top = counts.argmax()
        if counts[top] == 1:
            return 0, 1, positions[:0]  # every n-gram occurs once: the first one wins
        bound = counts[bucket]  # at least the count of each n-gram
        maybe = positions[bound > 1]
        floor = max(Counter(values[bucket == top].tolist()).values())  # exact: the best is at least this
        chosen = bound >= floor
        positions, values = positions[chosen], values[chosen]
    else:
        maybe = None
    order, group, sizes = _groups(values)
    best = int(sizes.max())
    if best == 1:
        return 0, 1, positions[:0]
    if maybe is None:
        maybe = np.sort(positions[order[sizes[group] > 1]])
    winner = int(positions[order[(sizes == best)[group]]].min())  # the first position of any most frequent
    return winner, best, _next_candidates(maybe)


def repeats(hashes: np.ndarray, positions: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Positions (ascending) of the n-grams that occur more than once, and a group id for each.

    `positions` (ascending) restricts the search; n-grams elsewhere must then occur once.
    """
    values = hashes if positions is None else hashes[positions]
    if positions is None:
        positions = np.arange(len(hashes))
    if len(values) > SMALL:
        bucket, counts = _buckets(values)
        maybe = counts[bucket] > 1
        positions, values = positions[maybe], values[maybe]
    if len(values) == 0:
        return positions, positions
    order, group, sizes = _groups(values)
    repeated = np.zeros(len(values), bool)
    repeated[order] = sizes[group] > 1
    group_of = np.empty(len(values), np.intp)
    group_of[order] = group
    return positions[repeated], group_of[repeated]


def scan_duplicates(positions: np.ndarray, groups: np.ndarray, chars: np.ndarray, n: int) -> int:
    """datatrove's `find_all_duplicate` scan, visiting only the positions of repeated n-grams.

    Walking left to right, an n-gram already seen at a visited position adds its characters and the walk
    jumps n words ahead; n-grams that occur once never change the result, so they are skipped.
    """
    group_list = groups.tolist()
    char_list = chars.tolist()
    after = np.searchsorted(positions, positions + n).tolist()  # where the walk resumes after a hit
    seen: set[int] = set()
    total = 0
    i, end = 0, len(group_list)
    while i < end:
        group = group_list[i]
        if group in seen:
            total += char_list[i]
            i = after[i]
        else:
            seen.add(group)
            i += 1
    return total


def ngram_signals(
    token_hashes: np.ndarray, token_lengths: np.ndarray, text_length: int
) -> dict[str, float | None]:
    """Top 2/3/4-gram and duplicated 5..10-gram character fractions of a word sequence.

    Beyond MAX_WORDS words (ten times Gopher's largest document) only the first MAX_WORDS words and
    their share of the text are looked at, which keeps time and memory bounded on huge documents.
    """
    out: dict[str, float | None] = {}
    if len(token_hashes) > MAX_WORDS:
        whole = int(token_lengths.sum())
        token_hashes, token_lengths = token_hashes[:MAX_WORDS], token_lengths[:MAX_WORDS]
        text_length = round(text_length * int(token_lengths.sum()) / max(whole, 1))
    n_tokens = len(token_hashes)
    cum = np.zeros(n_tokens + 1, np.int64)
    np.cumsum(token_lengths, out=cum[1:])
    hashes = token_hashes
    candidates: np.ndarray | None = None  # positions where the n-gram may repeat (None: anywhere)
    for n in range(2, max(DUP_NGRAMS) + 1):
        if n in DUP_NGRAMS and candidates is not None and len(candidates) == 0:
            out[f"dup_{n}gram_char_fraction"] = 0.0  # no shorter n-gram repeats, so no longer one does
            continue
        if n_tokens < n or not text_length:
            if n in TOP_NGRAMS:
                out[f"top_{n}gram_char_fraction"] = None
            else:
                out[f"dup_{n}gram_char_fraction"] = None if not text_length else 0.0
            continue
        hashes = extend(hashes, token_hashes, n)
        if candidates is not None:
            candidates = candidates[candidates < len(hashes)]
        if n in TOP_NGRAMS:
            position, count, candidates = top_ngram(hashes, candidates)
            chars = int(cum[position + n] - cum[position]) + n - 1  # words joined by spaces
            out[f"top_{n}gram_char_fraction"] = chars * count / text_length
            continue
        positions, groups = repeats(hashes, candidates)
        candidates = positions
        chars = cum[n + positions] - cum[positions]  # words joined without spaces
        out[f"dup_{n}gram_char_fraction"] = scan_duplicates(positions, groups, chars, n) / text_length
    return out
