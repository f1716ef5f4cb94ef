"""Word n-gram MinHash signatures, vectorized with numpy and identical to datasketch's "affine32" MinHash.

Normalization (the definition; `words` is the slow reference the fast path is tested against): every
character is mapped to its Unicode simple lowercase, and a word is a maximal run of alphanumeric characters
(`str.isalnum`); everything else (spaces, punctuation, symbols, underscores, combining marks) separates words.

Hashes (all 64-bit arithmetic wraps, i.e. is mod 2^64):
- word: polynomial hash of its code points, `fmix64(sum(cp_j * B^j) ^ length)`;
- shingle (`shingle_size` consecutive words, or all the words of a shorter document): the low 32 bits of
  `fmix64(sum(word_k * M_k))`; this is the 32-bit value datasketch's `hashfunc` would return;
- normalized text (exact duplicates): `fmix64(sum(word_i * B^i) ^ n_words)`.

A signature is datasketch's affine32 MinHash of the shingle hashes: `min(a_k * fmix32(h) + b_k mod 2^32)`
with datasketch's own permutations (a, b) for `num_perm` and `seed`, so
`datasketch.MinHash(num_perm, seed, scheme="affine32", hashfunc=...)` updated with the same shingles has the
same `hashvalues` (tests/test_dedup.py checks it). The fast path works on the UTF-8 bytes of a whole batch of
documents at once: no per-word or per-shingle Python objects.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

U64 = np.uint64
U32 = np.uint32
WORD_RE = re.compile(r"[^\W_]+")  # maximal runs of str.isalnum() characters
ALNUM_LIMIT = 0x40000  # no alphanumeric code point lies above (checked in tests)
LOWER_LIMIT = 0x20000  # no code point above has a lowercase mapping (checked in tests)
WORD_BASE = U64(0x9E3779B97F4A7C15)  # odd: invertible mod 2^64
SHINGLE_MULTIPLIERS = np.array(
    [0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93, 0xFF51AFD7ED558CCD, 0x94D049BB133111EB],
    U64,
)
MAX_SHINGLE = 32
_ALL_MULTIPLIERS = np.concatenate(  # the five above, then fixed seeded ones
    [
        SHINGLE_MULTIPLIERS,
        np.random.default_rng(5).integers(0, 1 << 63, MAX_SHINGLE - 5, dtype=U64) * U64(2) + U64(1),
    ]
)
MIN_POWERS = (1 << 21) + (1 << 16)  # a batch of text (see `signatures`) and then some
PERMUTATION_CHUNK = 8192  # shingles per (num_perm x chunk) block: a few MB, stays in cache


@dataclass
class Signatures:
    """MinHash signatures of a batch of documents."""

    minhash: np.ndarray  # (documents, num_perm) uint32
    text_hash: np.ndarray  # (documents,) uint64, equal for equal normalized texts
    n_words: np.ndarray  # (documents,) int32; 0: nothing to deduplicate on


def fmix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finalizer (a bijection), on a copy."""
    h = h ^ (h >> U64(33))
    h *= U64(0xFF51AFD7ED558CCD)
    h ^= h >> U64(33)
    h *= U64(0xC4CEB9FE1A85EC53)
    h ^= h >> U64(33)
    return h


def fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer, as datasketch applies it before its affine32 permutations."""
    h = h ^ (h >> U32(16))
    h *= U32(0x85EBCA6B)
    h ^= h >> U32(13)
    h *= U32(0xC2B2AE35)
    h ^= h >> U32(16)
    return h


@functools.cache
def char_tables() -> tuple[np.ndarray, np.ndarray]:
    """(alphanumeric flag per code point < ALNUM_LIMIT, simple lowercase per code point < LOWER_LIMIT)."""
    alnum = np.fromiter((chr(c).isalnum() for c in range(ALNUM_LIMIT)), bool, ALNUM_LIMIT)
    lower = np.fromiter((ord(chr(c).lower()[0]) for c in range(LOWER_LIMIT)), U32, LOWER_LIMIT)
    return alnum, lower


_POWERS: list[np.ndarray] = []


def _powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    """WORD_BASE^i and WORD_BASE^-i mod 2^64 for i <= n (at least; one cached pair, grown by doubling)."""
    if not _POWERS or len(_POWERS[0]) <= n:
        size = max(MIN_POWERS, 2 * len(_POWERS[0]) if _POWERS else 0, n + 1)
        up = np.full(size, WORD_BASE, U64)
        up[0] = 1
        np.cumprod(up, out=up)
        down = np.full(size, U64(pow(int(WORD_BASE), -1, 1 << 64)), U64)
        down[0] = 1
        np.cumprod(down, out=down)
        _POWERS[:] = [up, down]
    return _POWERS[0], _POWERS[1]


@functools.cache
def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's affine32 permutation parameters (a, b), each (num_perm, 1) uint32."""
    from datasketch import MinHash  # with scipy: imported by the stages that hash, not by the CLI

    a, b = MinHash(num_perm=num_perm, seed=seed, scheme="affine32").permutations
    return a.astype(U32).reshape(-1, 1), b.astype(U32).reshape(-1, 1)


def warm() -> None:
    """Build the lookup tables now (before worker processes fork, so they inherit them)."""
    char_tables()
    _powers(MIN_POWERS)


# --- the slow reference (definitions, tests, datasketch interop) --------------------------------------


@functools.cache
def _lowercase_translation() -> dict[int, int]:
    _, lower = char_tables()
    changed = np.flatnonzero(lower != np.arange(LOWER_LIMIT, dtype=U32))
    return dict(zip(changed.tolist(), lower[changed].tolist(), strict=True))


def words(text: str) -> list[str]:
    """The normalized words of a text."""
    return WORD_RE.findall(text.translate(_lowercase_translation()))


# --- the fast path ------------------------------------------------------------------------------------


def signatures(
    texts: pa.Array | pa.ChunkedArray, num_perm: int, seed: int, shingle_size: int, batch_bytes: int = 1 << 21
) -> Signatures:
    """Signatures of Arrow strings (one document per element; nulls are empty documents).

    Works through batches of about `batch_bytes` of text, so that its arrays stay small (allocations
    above glibc's mmap threshold fault every page in again, which costs more than the arithmetic).
    """
    chunks = texts.chunks if isinstance(texts, pa.ChunkedArray) else [texts]
    parts = []
    for chunk in chunks:
        chunk = chunk.cast(pa.large_string()) if chunk.type != pa.large_string() else chunk
        offsets = np.frombuffer(chunk.buffers()[1], np.int64)[chunk.offset : chunk.offset + len(chunk) + 1]
        lo = 0
        while lo < len(chunk):
            hi = int(np.searchsorted(offsets, offsets[lo] + batch_bytes, side="right")) - 1
            hi = min(max(hi, lo + 1), len(chunk))
            parts.append(_signatures(chunk.slice(lo, hi - lo), num_perm, seed, shingle_size))
            lo = hi
    if not parts:
        parts.append(_signatures(pa.array([], pa.large_string()), num_perm, seed, shingle_size))
    return Signatures(
        minhash=np.concatenate([p.minhash for p in parts]),
        text_hash=np.concatenate([p.text_hash for p in parts]),
        n_words=np.concatenate([p.n_words for p in parts]),
    )


def _signatures(texts: pa.Array, num_perm: int, seed: int, shingle_size: int) -> Signatures:
    """Signatures of one batch of documents."""
    offsets = np.frombuffer(texts.buffers()[1], np.int64)[texts.offset : texts.offset + len(texts) + 1]
    data = texts.buffers()[2]
    utf8 = np.frombuffer(data, np.uint8) if data is not None else np.zeros(0, np.uint8)
    if texts.null_count:
        valid = np.asarray(texts.is_valid())
        ends = np.where(valid, offsets[1:], offsets[:-1])
        offsets = np.concatenate([offsets[:1], ends])  # a null becomes an empty document
    word_hashes, word_offsets = word_hashes_utf8(utf8, offsets)
    n_words = np.diff(word_offsets).astype(np.int32)
    hashes, shingle_offsets = shingle_hashes(word_hashes, word_offsets, shingle_size)
    return Signatures(
        minhash=min_hashes(hashes, shingle_offsets, num_perm, seed),
        text_hash=text_hashes(word_hashes, word_offsets),
        n_words=n_words,
    )


def word_hashes_utf8(utf8: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of the normalized words of documents `utf8[offsets[i]:offsets[i + 1]]`, and word offsets."""
    start, stop = int(offsets[0]), int(offsets[-1])
    data = utf8[start:stop]
    doc_starts = offsets[:-1] - start
    is_word, units = _ascii_words(data)
    wide_at, wide = np.zeros(0, np.int64), np.zeros(0, U64)
    if data.max(initial=0) >= 0x80:
        is_word, units, doc_starts, wide_at, wide = _non_ascii(data, is_word, units, doc_starts)
    n = len(units)
    # a word ends where a non-word character or a document follows
    edges = np.diff(is_word.view(np.int8), prepend=np.int8(0), append=np.int8(0))
    word_starts = np.flatnonzero(edges == 1)
    word_ends = np.flatnonzero(edges == -1)
    inner = doc_starts[(doc_starts > 0) & (doc_starts < n)]
    joined = np.unique(inner[is_word[inner] & is_word[inner - 1]])  # a word running into the next document
    if len(joined):
        word_starts = np.insert(word_starts, np.searchsorted(word_starts, joined), joined)
        word_ends = np.insert(word_ends, np.searchsorted(word_ends, joined), joined)
    up, down = _powers(n)
    prefix = np.zeros(n + 1, U64)
    np.multiply(units, up[:n], out=prefix[1:])
    prefix[1 + wide_at] = wide * up[wide_at]  # characters beyond ASCII
    np.cumsum(prefix[1:], out=prefix[1:])
    hashes = prefix[word_ends]
    hashes -= prefix[word_starts]
    hashes *= down[word_starts]
    hashes ^= (word_ends - word_starts).astype(U64)
    word_offsets = np.searchsorted(word_starts, np.append(doc_starts, n))
    return fmix64(hashes), word_offsets


def _ascii_words(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(is an ASCII letter or digit, the byte with A-Z lowercased) per UTF-8 byte: arithmetic, not lookups."""
    upper = (data - np.uint8(ord("A"))) < 26
    units = data | (upper.view(np.uint8) << np.uint8(5))
    is_word = (units - np.uint8(ord("a"))) < 26
    is_word |= (data - np.uint8(ord("0"))) < 10
    return is_word, units


def _non_ascii(
    data: np.ndarray, is_word: np.ndarray, units: np.ndarray, doc_starts: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Decode multi-byte UTF-8 characters and drop their continuation bytes (one element per code point).

    Returns is_word, units and doc_starts per code point, and the positions and lowercased code points of
    the characters beyond ASCII (their entries in `units` are left as they are).
    """
    alnum, lower = char_tables()
    lead = np.flatnonzero(data >= 0xC0)
    padded = np.concatenate([data, np.zeros(3, np.uint8)])
    b0 = padded[lead].astype(U32)
    b1, b2, b3 = (padded[lead + k].astype(U32) & U32(0x3F) for k in (1, 2, 3))
    cp = np.where(
        b0 < 0xE0,
        ((b0 & U32(0x1F)) << U32(6)) | b1,
        np.where(
            b0 < 0xF0,
            ((b0 & U32(0x0F)) << U32(12)) | (b1 << U32(6)) | b2,
            ((b0 & U32(0x07)) << U32(18)) | (b1 << U32(12)) | (b2 << U32(6)) | b3,
        ),
    )
    is_word[lead] = np.where(cp < ALNUM_LIMIT, alnum[np.minimum(cp, ALNUM_LIMIT - 1)], False)
    wide = np.where(cp < LOWER_LIMIT, lower[np.minimum(cp, LOWER_LIMIT - 1)], cp).astype(U64)
    continuation = np.flatnonzero((data & np.uint8(0xC0)) == 0x80)
    keep = np.ones(len(data), bool)
    keep[continuation] = False
    doc_starts = doc_starts - np.searchsorted(continuation, doc_starts)
    wide_at = lead - np.searchsorted(continuation, lead)
    return is_word[keep], units[keep], doc_starts, wide_at, wide


def shingle_hashes(
    word_hashes: np.ndarray, word_offsets: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """32-bit shingle hashes of every document, grouped by document, and their offsets."""
    n = len(word_hashes)
    multipliers = _multipliers(size)
    total = word_hashes * multipliers[0]
    for k in range(1, min(size, n)):  # (a batch may hold fewer words than a shingle)
        total[: n - k] += word_hashes[k:] * multipliers[k]
    starts, ends = word_offsets[:-1], word_offsets[1:]
    n_words = ends - starts
    keep = np.ones(n, bool)
    for k in range(1, size):  # windows running past the end of their document
        keep[(ends - k)[n_words >= k]] = False
    short = starts[(n_words > 0) & (n_words < size)]
    if len(short):  # one shingle of all the words of a short document
        short_n = n_words[(n_words > 0) & (n_words < size)]
        total[short] = word_hashes[short] * multipliers[0]
        for k in range(1, size - 1):
            has = short_n > k
            total[short[has]] += word_hashes[short[has] + k] * multipliers[k]
        keep[short] = True
    counts = np.where(n_words >= size, n_words - size + 1, np.minimum(n_words, 1))
    shingle_offsets = np.concatenate([[0], np.cumsum(counts)])
    return (fmix64(total[keep]) & U64(0xFFFFFFFF)).astype(U32), shingle_offsets


def _multipliers(size: int) -> np.ndarray:
    """One odd 64-bit multiplier per position in a shingle of `size` words (at most MAX_SHINGLE)."""
    return _ALL_MULTIPLIERS[:size]


def min_hashes(hashes: np.ndarray, offsets: np.ndarray, num_perm: int, seed: int) -> np.ndarray:
    """datasketch affine32 MinHash values of each document's shingle hashes: (documents, num_perm)."""
    a, b = permutations(num_perm, seed)
    n_docs = len(offsets) - 1
    out = np.full((num_perm, n_docs), np.iinfo(U32).max, U32)
    mixed = fmix32(hashes)
    block = np.empty((num_perm, PERMUTATION_CHUNK), U32)
    for lo in range(0, len(mixed), PERMUTATION_CHUNK):
        chunk = mixed[lo : lo + PERMUTATION_CHUNK]
        values = block[:, : len(chunk)]
        np.multiply(a, chunk, out=values)
        values += b
        # documents with shingles in this chunk, and where each starts in it
        first = int(np.searchsorted(offsets, lo, side="right")) - 1
        last = int(np.searchsorted(offsets, lo + len(chunk), side="left"))
        docs = np.arange(first, last)
        docs = docs[offsets[docs + 1] > offsets[docs]]
        starts = np.maximum(offsets[docs], lo) - lo
        out[:, docs] = np.minimum(out[:, docs], np.minimum.reduceat(values, starts, axis=1))
    return np.ascontiguousarray(out.T)


def text_hashes(word_hashes: np.ndarray, word_offsets: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each document's normalized text (its sequence of word hashes)."""
    n = len(word_hashes)
    up, down = _powers(n)
    prefix = np.zeros(n + 1, U64)
    np.cumsum(word_hashes * up[:n], out=prefix[1:])
    starts, ends = word_offsets[:-1], word_offsets[1:]
    total = (prefix[ends] - prefix[starts]) * down[starts]
    return fmix64(total ^ (ends - starts).astype(U64))
