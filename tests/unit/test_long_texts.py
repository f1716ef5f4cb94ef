"""Long texts are trained on and encoded in pieces (tokenizer.bpe): the same ids and the same tokenizer as
one whole text, in bounded pieces."""

from __future__ import annotations

import random

import pytest

from tokenizer import bpe, count_tokens, encode_ids, train_bpe

PARTS = (
    "word", "Word", "the", "don't", "it's", "we'll", "  ", "   ", "\n", "\n\n", " \n", "\t", "\r\n", "...",
    ", ", ". ", "!", "?", "(", ")", "[1]", '"', "'", "12", "3.14", "²", "Ⅻ", "中文", "日本語", "ｆｕｌｌ",
    "😀", "naïve", "ß", "\u00a0", "\u3000", "\u2028", "\x85", "-", "—", "#", "<|endoftext|>", "a_b", "_",
)  # fmt: skip


def _text(chars: int, seed: int) -> str:
    """A text of about `chars` characters mixing words, whitespace runs, punctuation and scripts."""
    rng = random.Random(seed)
    out, size = [], 0
    while size < chars:
        part = rng.choice(PARTS) if rng.random() < 0.6 else " " + rng.choice(PARTS[:6])
        out.append(part)
        size += len(part)
    return "".join(out)


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe([_text(200_000, seed) for seed in range(3)], vocab_size=600)


def test_pieces_are_bounded_and_join_to_the_text() -> None:
    text = _text(5 * bpe.PIECE_CHARS, 1) + "x" * (3 * bpe.PIECE_CHARS) + _text(bpe.PIECE_CHARS, 2)
    pieces = bpe.pieces(text)
    assert "".join(pieces) == text
    assert len(pieces) >= 9
    assert all(0 < len(p) <= bpe.PIECE_CHARS for p in pieces)
    assert bpe.pieces("short text") == ["short text"]


@pytest.mark.parametrize("seed", range(4))
def test_pieces_give_the_ids_of_the_whole_text(tokenizer, monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    texts = [_text(4 * bpe.PIECE_CHARS + 777 * seed, seed), "", "short one", _text(3 * bpe.PIECE_CHARS, 9)]
    assert all(len(bpe.pieces(t)) > 1 for t in (texts[0], texts[3]))
    whole = [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)]
    monkeypatch.setattr(bpe, "CALL_CHARS", bpe.PIECE_CHARS)  # one piece per call: many calls
    assert [ids.tolist() for ids in encode_ids(tokenizer, texts)] == whole
    assert count_tokens(tokenizer, texts) == [len(ids) for ids in whole]


def test_training_on_pieces_gives_the_tokenizer_of_whole_texts(monkeypatch: pytest.MonkeyPatch) -> None:
    texts = [_text(3 * bpe.PIECE_CHARS, 5), _text(1000, 6)]
    cut = train_bpe(texts, vocab_size=400).to_str()
    monkeypatch.setattr(bpe, "PIECE_CHARS", 1 << 40)  # no cuts: what tokenizers does with whole texts
    assert train_bpe(texts, vocab_size=400).to_str() == cut
