"""Train, save and load byte-level BPE tokenizers with Hugging Face `tokenizers`; encode texts of any
length in bounded memory.

`tokenizers` needs about 150 bytes per character to encode one text (and 70 to train on one), so a long
text is trained on and encoded in pieces of at most PIECE_CHARS characters, cut only where the byte-level
pre-tokenizer splits anyway (after a word character or closing punctuation, before a space or newline):
the pieces' ids joined are the whole text's ids, and training sees the same words. A run of more than
PIECE_CHARS / 2 characters with no such place is cut where the piece must end (its count may then differ
by a token or two from encoding it whole). Each `encode_batch` call gets at most CALL_CHARS characters.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

EOT = "<|endoftext|>"
PAD = "<|pad|>"
SPECIAL_TOKENS = (EOT, PAD)
# what transformers needs next to tokenizer.json for AutoTokenizer.from_pretrained(folder)
TRANSFORMERS_FILES = ("tokenizer_config.json", "special_tokens_map.json")
PIECE_CHARS = 1 << 16
CALL_CHARS = 1 << 20
# a place where GPT-2's pre-tokenizer regex always splits: after a character no regex class treats as
# whitespace, before a space or a newline
_CUT = re.compile(r"[\w.,;:!?'\")\]](?=[ \n])")


def train_bpe(
    texts: Iterable[str],
    vocab_size: int = 8192,
    min_frequency: int = 2,
    special_tokens: Iterable[str] = SPECIAL_TOKENS,
) -> Tokenizer:
    """Train a byte-level BPE (GPT-2 style: every byte is representable, no unknown token).

    Special tokens get the first ids, in the order given (end-of-text is id 0 by default).
    """
    special = list(dict.fromkeys(special_tokens))
    if EOT not in special:
        raise ValueError(f"special tokens must include the end-of-text token {EOT!r}")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator((piece for text in texts for piece in pieces(text)), trainer=trainer)
    return tokenizer


def pieces(text: str) -> list[str]:
    """`text` cut into pieces of at most PIECE_CHARS characters where the pre-tokenizer splits anyway."""
    if len(text) <= PIECE_CHARS:
        return [text]
    out, start = [], 0
    while len(text) - start > PIECE_CHARS:
        cut = _CUT.search(text, start + PIECE_CHARS // 2, start + PIECE_CHARS)
        end = cut.end() if cut else start + PIECE_CHARS
        out.append(text[start:end])
        start = end
    out.append(text[start:])
    return out


def _encoded(tokenizer: Tokenizer, texts: Sequence[str]) -> Iterator[tuple[int, object]]:
    """(text index, encoding of one piece) for every piece of `texts`, in order, encoded in calls of at
    most CALL_CHARS characters (without special tokens, without character offsets where this `tokenizers`
    can)."""
    encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
    owners: list[int] = []
    batch: list[str] = []
    size = 0
    for index, text in enumerate(texts):
        for piece in pieces(text):
            if batch and size + len(piece) > CALL_CHARS:
                yield from zip(owners, encode(batch, add_special_tokens=False), strict=True)
                owners, batch, size = [], [], 0
            owners.append(index)
            batch.append(piece)
            size += len(piece)
    if batch:
        yield from zip(owners, encode(batch, add_special_tokens=False), strict=True)


def encode_ids(tokenizer: Tokenizer, texts: Sequence[str], dtype: type = np.uint32) -> list[np.ndarray]:
    """The token ids of each text (no special tokens added), as arrays of `dtype`."""
    parts: list[list[np.ndarray]] = [[] for _ in texts]
    for index, encoding in _encoded(tokenizer, texts):
        parts[index].append(np.asarray(encoding.ids, dtype))  # type: ignore[attr-defined]
    return [p[0] if len(p) == 1 else np.concatenate(p) if p else np.zeros(0, dtype) for p in parts]


def count_tokens(tokenizer: Tokenizer, texts: Sequence[str]) -> list[int]:
    """The number of tokens of each text (no special tokens added)."""
    counts = [0] * len(texts)
    for index, encoding in _encoded(tokenizer, texts):
        counts[index] += len(encoding)  # type: ignore[arg-type]
    return counts


def load(path: str | Path, literal_special_tokens: bool = False) -> Tokenizer:
    """Load a tokenizer.json.

    `literal_special_tokens=True` encodes special-token strings found in text (a web page quoting
    "<|endoftext|>") as ordinary text, so a document's ids never contain a special id; the pipeline
    encodes corpus text this way.
    """
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.encode_special_tokens = literal_special_tokens
    return tokenizer


def save(tokenizer: Tokenizer, folder: str | Path, special_tokens: Iterable[str] = SPECIAL_TOKENS) -> Path:
    """Write tokenizer.json, plus tokenizer_config.json and special_tokens_map.json so that
    `transformers.AutoTokenizer.from_pretrained(folder)` loads it with eos (and pad) set.

    Each file is written atomically; tokenizer.json is written last. Returns its path.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    special = list(dict.fromkeys(special_tokens))
    names = {"eos_token": EOT, "bos_token": EOT, "unk_token": EOT}
    if PAD in special:
        names["pad_token"] = PAD
    added = {
        str(i): {
            "content": tok.content,
            "lstrip": tok.lstrip,
            "normalized": tok.normalized,
            "rstrip": tok.rstrip,
            "single_word": tok.single_word,
            "special": tok.special,
        }
        for i, tok in sorted(tokenizer.get_added_tokens_decoder().items())
    }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": 1_000_000_000_000_000_019_884_624_838_656,
        "clean_up_tokenization_spaces": False,
        "add_bos_token": False,
        "add_eos_token": False,
        **names,
        "added_tokens_decoder": added,
    }
    _write_atomic(folder / "tokenizer_config.json", json.dumps(config, indent=2) + "\n")
    _write_atomic(folder / "special_tokens_map.json", json.dumps(names, indent=2) + "\n")
    path = folder / "tokenizer.json"
    _write_atomic(path, tokenizer.to_str(pretty=True))
    return path


def bytes_per_token(tokenizer: Tokenizer, texts: list[str]) -> tuple[int, int]:
    """(UTF-8 bytes, tokens) of `texts`, encoded as the pipeline encodes documents."""
    literal = tokenizer.encode_special_tokens
    tokenizer.encode_special_tokens = True
    try:
        tokens = sum(count_tokens(tokenizer, texts))
    finally:
        tokenizer.encode_special_tokens = literal
    return sum(len(t.encode("utf-8")) for t in texts), tokens


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; give the mode a plain open() would
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes (the tokenizer's identity in manifests and checkpoints)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
