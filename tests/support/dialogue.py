"""Instruction-tuning data built mechanically from real text: the dialogue of tiny Shakespeare.

The plays (../shared/data/tinyshakespeare, public domain; the char-rnn copy is MIT) are a sequence
of speeches, ``NAME:`` then its lines. Each pair of consecutive speeches by two different speakers
is an exchange: the first is what the user says, the reply is the assistant's. Records alternate
between the two input formats of ``gristmill sft``: ``{"prompt", "response"}`` for one exchange,
and ``{"messages": [system, user, assistant, user, assistant]}`` for two exchanges in a row, with
a system message naming the character who answers. No text is written by hand.

    python tests/support/dialogue.py OUT.jsonl [--limit N] [--max-chars N]
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Iterator
from pathlib import Path

from shared_data import SHARED_DATA

TEXT = SHARED_DATA / "tinyshakespeare" / "input.txt"
_SPEAKER = re.compile(r"^([A-Z][A-Za-z .']{1,40}):$")


def speeches(text: str) -> list[tuple[str, str]]:
    """(speaker, speech) in order; a speech is the block of lines under ``NAME:``."""
    out: list[tuple[str, str]] = []
    for block in text.split("\n\n"):
        lines = block.strip("\n").split("\n")
        match = _SPEAKER.match(lines[0]) if lines else None
        if match and len(lines) > 1:
            out.append((match.group(1), "\n".join(lines[1:]).strip()))
    return out


def records(text: str, limit: int | None = None, max_chars: int | None = None) -> Iterator[dict]:
    """The exchanges of ``text`` as SFT records, alternating prompt/response and messages; with
    ``max_chars``, only speeches up to that length."""
    turns = [t for t in speeches(text) if max_chars is None or len(t[1]) <= max_chars]
    i, n = 0, 0
    while i + 1 < len(turns) and (limit is None or n < limit):
        (asker, question), (answerer, answer) = turns[i], turns[i + 1]
        if asker == answerer:
            i += 1
            continue
        if n % 2 == 0 or i + 3 >= len(turns) or turns[i + 2][0] != asker or turns[i + 3][0] != answerer:
            yield {"prompt": question, "response": answer}
            i += 2
        else:
            yield {"messages": [
                {"role": "system", "content": f"You are {answerer.title()}."},
                {"role": "user", "content": question},
                {"role": "assistant", "content": answer},
                {"role": "user", "content": turns[i + 2][1]},
                {"role": "assistant", "content": turns[i + 3][1]},
            ]}  # fmt: skip
            i += 4
        n += 1


def write(path: Path, limit: int | None = None, max_chars: int | None = None) -> int:
    """Write the records as JSONL; returns how many."""
    text = TEXT.read_text(encoding="utf-8")
    lines = [json.dumps(r, ensure_ascii=False) for r in records(text, limit, max_chars)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", type=Path)
    parser.add_argument("--limit", type=int, default=None, help="at most this many records")
    parser.add_argument("--max-chars", type=int, default=None, help="only speeches up to this length")
    args = parser.parse_args()
    print(f"{write(args.output, args.limit, args.max_chars):,} records -> {args.output}")
