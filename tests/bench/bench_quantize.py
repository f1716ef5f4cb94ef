"""Quantized inference benchmark: one checkpoint in fp32, bf16, int8 and int4 (training/quantize.py).

Run with ``make bench`` or ``python tests/bench/bench_quantize.py``.

The ``small`` preset (4 layers, d_model 256, tied 8,192-token embedding: 5.3M parameters) is
pretrained here on tiny Shakespeare (``GRISTMILL_BENCH_QUANT_STEPS`` steps of 16 x 128 tokens,
default 120), then each format is measured on the same held-out text (the token run's validation
documents) in this one process: weight memory (bytes of the distinct parameters, quantized tensors
included), held-out loss (training.evaluate, windows of 128), and greedy generation speed (64 new
tokens after a 32-token prompt with the KV cache, best of ``GRISTMILL_BENCH_QUANT_REPEATS`` rounds,
default 3, the formats interleaved in every round so that background load hits them alike).

Targets (issue 16): weight memory -45% (int8) and -70% (int4) against the 16-bit model; held-out
loss within 1% (int8) and 5% (int4) of the unquantized (fp32) model. The memory and loss targets are
asserted; tokens/s are printed (CPU int4 runs torchao's tinygemm CPU kernel).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import torch

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent
sys.path[:0] = [str(TESTS / "support"), str(REPO)]

from pretrained import validation_texts  # noqa: E402
from token_shards import TEXT, build_token_run  # noqa: E402

from training.evaluate import evaluate_texts  # noqa: E402
from training.generate import LoadedModel, generate, load_checkpoint  # noqa: E402
from training.quantize import weight_bytes  # noqa: E402
from training.train import main as train_main  # noqa: E402

STEPS = int(os.environ.get("GRISTMILL_BENCH_QUANT_STEPS", "120"))
REPEATS = int(os.environ.get("GRISTMILL_BENCH_QUANT_REPEATS", "3"))
FORMATS = ("fp32", "bf16", "int8", "int4")
TARGETS = {"int8": (0.55, 0.01), "int4": (0.30, 0.05)}  # (memory vs 16-bit, loss vs fp32)


def pretrained(root: Path) -> Path:
    build_token_run(root / "run", TEXT.read_text(encoding="utf-8"), vocab_size=8192, row_group_rows=64)
    output = root / "out"
    argv = [
        "--data", str(root / "run" / "tokens" / "manifest.json"), "--output", str(output),
        "--preset", "small", "--seq-len", "128", "--batch-size", "16", "--max-steps", str(STEPS),
        "--lr", "2e-3", "--eval-every", "0", "--save-every", "0", "--log-every", "50", "--no-trace",
    ]  # fmt: skip
    assert train_main(argv) == 0
    return output


def load(checkpoint: Path, fmt: str) -> LoadedModel:
    if fmt in ("int8", "int4"):
        return load_checkpoint(checkpoint, quantize=fmt)
    loaded = load_checkpoint(checkpoint)
    if fmt == "bf16":
        loaded.model.to(torch.bfloat16)
    return loaded


def tokens_per_s(loaded: LoadedModel, prompt: list[int], new_tokens: int = 64) -> float:
    start = time.perf_counter()
    produced = sum(1 for _ in generate(loaded.model, prompt, new_tokens, temperature=0, eot_id=None))
    return produced / (time.perf_counter() - start)


def measure(checkpoint: Path, texts: list[str]) -> dict[str, dict[str, float]]:
    models = {fmt: load(checkpoint, fmt) for fmt in FORMATS}
    prompt = [models["fp32"].eot_id, *models["fp32"].tokenizer.encode(texts[0]).ids[:31]]
    results: dict[str, dict[str, float]] = {}
    for fmt, loaded in models.items():
        autocast = torch.bfloat16 if fmt == "bf16" else None
        loss = evaluate_texts(loaded.model, loaded.tokenizer, texts, 128, "cpu", autocast_dtype=autocast)[
            "loss"
        ]
        results[fmt] = {"bytes": weight_bytes(loaded.model), "loss": loss, "tokens_per_s": 0.0}
    for _ in range(REPEATS):
        for fmt, loaded in models.items():
            with torch.no_grad():
                results[fmt]["tokens_per_s"] = max(results[fmt]["tokens_per_s"], tokens_per_s(loaded, prompt))
    return results


def report(results: dict[str, dict[str, float]], n_tokens: int) -> list[str]:
    base16, base_loss = results["bf16"]["bytes"], results["fp32"]["loss"]
    lines = [
        f"held-out text: {n_tokens:,} tokens; {torch.get_num_threads()} threads; torch {torch.__version__}",
        "| format | weight memory | vs fp32 | vs bf16 | held-out loss | vs fp32 | generation tokens/s "
        "| vs fp32 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for fmt, r in results.items():
        lines.append(
            f"| {fmt} | {r['bytes'] / 1e6:.2f} MB | {r['bytes'] / results['fp32']['bytes'] - 1:+.1%} | "
            f"{r['bytes'] / base16 - 1:+.1%} | {r['loss']:.4f} | {r['loss'] / base_loss - 1:+.2%} | "
            f"{r['tokens_per_s']:.1f} | {r['tokens_per_s'] / results['fp32']['tokens_per_s']:.2f}x |"
        )
    for fmt, (memory, loss) in TARGETS.items():
        lines.append(
            f"target {fmt}: memory <= {memory:.0%} of bf16 (got {results[fmt]['bytes'] / base16:.1%}), "
            f"loss within {loss:.0%} of fp32 (got {abs(results[fmt]['loss'] / base_loss - 1):.2%})"
        )
    return lines


def run(root: Path) -> dict[str, dict[str, float]]:
    checkpoint = pretrained(root)
    texts = validation_texts(root)
    results = measure(checkpoint, texts)
    n_tokens = sum(len(t) for t in load_checkpoint(checkpoint).tokenizer.encode_batch(texts))
    print("\n" + "\n".join(report(results, n_tokens)), flush=True)
    return results


def test_quantized_weights_meet_the_memory_and_loss_targets(tmp_path: Path) -> None:
    results = run(tmp_path)
    for fmt, (memory, loss) in TARGETS.items():
        assert results[fmt]["bytes"] <= memory * results["bf16"]["bytes"], fmt
        assert abs(results[fmt]["loss"] / results["fp32"]["loss"] - 1) <= loss, fmt


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        run(Path(tmp))
