"""A small pretrained checkpoint for the tests of what comes after pretraining (evaluation, RoPE
scaling, quantization, instruction tuning): tiny Shakespeare token shards (token_shards.py) and a
short single-process run of ``python -m training.train``, in-process."""

from __future__ import annotations

from pathlib import Path

from shared_data import SHARED_DATA
from token_shards import TEXT, build_token_run

HELD_OUT = SHARED_DATA / "wikitext-2-valid" / "valid.txt"


def pretrain(
    root: Path, steps: int = 30, seq_len: int = 64, preset: str = "tiny", extra: list[str] | None = None
) -> Path:
    """Token shards under ``root/run`` and a checkpoint trained ``steps`` steps under ``root/out``;
    returns the training output directory (its ``latest`` is the last step)."""
    from training.train import main

    run = root / "run"
    if not (run / "tokens" / "manifest.json").is_file():
        build_token_run(run, TEXT.read_text(encoding="utf-8"))
    output = root / "out"
    args = [
        "--data", str(run / "tokens" / "manifest.json"), "--output", str(output),
        "--preset", preset, "--seq-len", str(seq_len), "--batch-size", "8", "--max-steps", str(steps),
        "--lr", "3e-3", "--warmup-steps", "2", "--eval-every", "0", "--log-every", str(steps),
        "--save-every", "0", "--no-trace", "--seed", "0", *(extra or []),
    ]  # fmt: skip
    assert main(args) == 0
    return output


def shared_pretrained(base: Path) -> Path:
    """One checkpoint per test session (``base``: the session's temporary folder), pretrained 40
    steps at 128 tokens, for the test modules that only read it."""
    root = base / "pretrained-128"
    if not (root / "out" / "latest").is_file():
        pretrain(root, steps=40, seq_len=128)
    return root / "out"


def held_out_texts(n: int = 8, chars: int = 4000) -> list[str]:
    """``n`` held-out documents of about ``chars`` characters each: WikiText-2 validation articles
    (text the tiny-Shakespeare model never saw)."""
    text = HELD_OUT.read_text(encoding="utf-8")
    return [text[i * chars : (i + 1) * chars] for i in range(n)]


def validation_texts(root: Path) -> list[str]:
    """The texts of the validation documents of ``pretrain``'s token shards (held-out Shakespeare:
    the same kind of text as the training split, never trained on)."""
    import pyarrow.parquet as pq
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(root / "run" / "tokenizer" / "tokenizer.json"))
    table = pq.read_table(root / "run" / "tokens" / "validation-00000.parquet")
    return [tokenizer.decode(ids) for ids in table.column("input_ids").to_pylist()]
