"""The references gristmill is checked against: datatrove's stock quality chain (the agreement test and
the filter benchmark) and datasketch's own MinHash over the same shingles (the dedup tests).

GopherRepetitionFilter -> GopherQualityFilter -> C4QualityFilter(filter_no_terminal_punct=False) ->
FineWebQualityFilter, all with default arguments; pipelines/resources/policy-datatrove.yaml holds the
same thresholds for gristmill.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from datasketch import LeanMinHash, MinHash

from pipelines.dedup.minhash import U32, WORD_BASE, _multipliers, words

# The gristmill policy with the chain's thresholds.
POLICY = Path(__file__).resolve().parents[2] / "pipelines" / "resources" / "policy-datatrove.yaml"


def quality_chain() -> list[Any]:
    """A fresh instance of each filter of the chain, in order."""
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )

    return [
        GopherRepetitionFilter(),
        GopherQualityFilter(),
        C4QualityFilter(filter_no_terminal_punct=False),
        FineWebQualityFilter(),
    ]


MASK64 = (1 << 64) - 1


def _fmix64_int(h: int) -> int:
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & MASK64
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) & MASK64
    return h ^ (h >> 33)


def word_hash(word: str) -> int:
    """The 64-bit hash of one normalized word."""
    h, power = 0, 1
    for c in word:
        h = (h + ord(c) * power) & MASK64
        power = (power * int(WORD_BASE)) & MASK64
    return _fmix64_int(h ^ len(word))


def shingle_hash(word_hashes: tuple[int, ...]) -> int:
    """The 32-bit hash of a shingle given the hashes of its words (datasketch's `hashfunc` value)."""
    multipliers = _multipliers(max(len(word_hashes), 1)).tolist()
    total = sum(w * m for w, m in zip(word_hashes, multipliers, strict=False))
    return _fmix64_int(total & MASK64) & 0xFFFFFFFF


def shingles(text: str, size: int) -> list[tuple[int, ...]]:
    """Shingles of a text as tuples of word hashes (one of all words when there are fewer than `size`)."""
    hashes = [word_hash(w) for w in words(text)]
    if 0 < len(hashes) < size:
        return [tuple(hashes)]
    return [tuple(hashes[i : i + size]) for i in range(len(hashes) - size + 1)]


def datasketch_minhash(text: str, num_perm: int, seed: int, shingle_size: int) -> MinHash:
    """A datasketch MinHash of `text` built the slow way: datasketch hashes every shingle itself."""
    minhash = MinHash(num_perm=num_perm, seed=seed, scheme="affine32", hashfunc=shingle_hash)
    minhash.update_batch(shingles(text, shingle_size))
    return minhash


def as_datasketch(values: np.ndarray, seed: int) -> LeanMinHash:
    """A stored signature as a datasketch LeanMinHash (for jaccard(), LSH indexes, ...)."""
    return LeanMinHash(seed=seed, hashvalues=np.asarray(values, U32), scheme="affine32")
