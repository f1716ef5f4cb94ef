"""Training-loop benchmark: our train loop against a minimal plain-PyTorch loop, in the same process.

Run with ``make bench`` (``pytest -q -s tests/bench``) or ``python tests/bench/bench_train.py``.

* CPU: the ``15m`` preset (~14.7M parameters with the 8,192-token vocabulary trained here), fp32
  (8 x 256 tokens per step) and bf16 (2 x 256, see ``SHAPES``). "ours" is ``training.train.main``
  itself (streaming shard reader, background batch thread, trace, metrics; single process), timed
  from its own metrics.jsonl; "plain" is forward, backward, clip, AdamW and zero_grad on batches
  already in memory. They run in back-to-back pairs (plain then ours, ``GRISTMILL_BENCH_PAIRS``
  times) so that background load hits both alike; the ratio is the median of the pairs' ratios.
  Target: ratio >= 0.95 (``GRISTMILL_BENCH_MIN_RATIO`` overrides).
* GPU (skipped without CUDA): MFU of the ``gpt2-124m`` preset at sequence length 1024, bf16,
  ``--compile``, on synthetic token shards with a 50,304-token vocabulary (the content does not
  matter for throughput). Target on an H100: MFU >= 0.45.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent
sys.path[:0] = [str(TESTS / "support"), str(REPO)]

from token_shards import TEXT, build_token_run  # noqa: E402

from training.data import WindowSource  # noqa: E402
from training.loop import build_optimizer  # noqa: E402
from training.manifest import load_manifest  # noqa: E402
from training.model import PRESETS, Transformer  # noqa: E402
from training.parallel import available_cpus  # noqa: E402
from training.train import main as train_main  # noqa: E402

SEQ_LEN = 256
# (sequences per step, steps, warmup steps left out of the timing) per dtype. bf16 matmuls on a CPU
# without AVX512-BF16/AMX take a slow path (about 15x slower than fp32 on the AVX2 development
# machine), so the bf16 leg takes fewer, smaller steps; ours and plain always run the same shape.
SHAPES = {"fp32": (8, 6, 2), "bf16": (2, 4, 1)}
PAIRS = int(os.environ.get("GRISTMILL_BENCH_PAIRS", "4"))
MIN_RATIO = float(os.environ.get("GRISTMILL_BENCH_MIN_RATIO", "0.95"))


def _shards(root: Path) -> Path:
    manifest = root / "tokens" / "manifest.json"
    if not manifest.is_file():
        build_token_run(root, TEXT.read_text(encoding="utf-8"), vocab_size=8192, row_group_rows=64)
    return manifest


def ours(manifest: Path, output: Path, dtype: str) -> list[float]:
    """Seconds per step of training.train (steps after the warmup), from its metrics.jsonl."""
    batch, steps, warmup = SHAPES[dtype]
    argv = [
        "--data", str(manifest), "--output", str(output), "--max-steps", str(steps), "--preset", "15m",
        "--seq-len", str(SEQ_LEN), "--batch-size", str(batch), "--lr", "1e-3", "--warmup-steps", "2",
        "--eval-every", "0", "--log-every", "1", "--save-every", "0", "--dtype", dtype, "--seed", "0",
    ]  # fmt: skip
    assert train_main(argv) == 0
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    return [
        batch * SEQ_LEN / r["tokens_per_s"] for r in records if r["type"] == "train" and r["step"] > warmup
    ]


def plain(manifest: Path, dtype: str) -> list[float]:
    """Seconds per step of a minimal loop on the same model, batch shape and data."""
    batch, steps, warmup = SHAPES[dtype]
    torch.set_num_threads(available_cpus())
    source = WindowSource(load_manifest(str(manifest)), "train", SEQ_LEN)
    order = np.random.default_rng(0).permutation(len(source))
    batches = [source.gather(order[s * batch : (s + 1) * batch]) for s in range(steps)]
    torch.manual_seed(0)
    model = Transformer(PRESETS["15m"].with_overrides(vocab_size=source.manifest.vocab_size))
    optimizer = build_optimizer(model, 1e-3, 0.1, torch.device("cpu"))
    times = []
    for step, (x, y) in enumerate(batches):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
            _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()
        if step >= warmup:
            times.append(time.perf_counter() - start)
    return times


def run_cpu_benchmark(work: Path, pairs: int = PAIRS) -> dict[str, dict[str, object]]:
    """Tokens/s of plain and ours, run back to back ``pairs`` times per dtype; prints a summary.

    Other jobs on a shared machine change the speed from minute to minute, so each pair (plain then
    ours, a minute or two) is compared on its own and the ratio reported is the median over pairs.
    """
    manifest = _shards(work / "shards")
    with torch.device("meta"):
        n_params = Transformer(PRESETS["15m"].with_overrides(vocab_size=8192)).num_parameters()
    print(
        f"\nmodel: 15m preset, {n_params:,} parameters, seq_len {SEQ_LEN}, {available_cpus()} CPUs",
        flush=True,
    )
    results: dict[str, dict[str, object]] = {}
    for dtype, (batch, steps, warmup) in SHAPES.items():
        tokens = batch * SEQ_LEN
        rates: dict[str, list[float]] = {"plain": [], "ours": []}
        for rep in range(pairs):
            rates["plain"].append(tokens / statistics.median(plain(manifest, dtype)))
            rates["ours"].append(
                tokens / statistics.median(ours(manifest, work / f"out-{dtype}-{rep}", dtype))
            )
        ratios = [o / p for o, p in zip(rates["ours"], rates["plain"], strict=True)]
        ratio = statistics.median(ratios)
        results[dtype] = {**rates, "pair_ratios": ratios, "ratio": ratio}
        print(
            f"{dtype} ({batch} x {SEQ_LEN} tokens/step, median of {steps - warmup} steps per run): "
            f"plain {', '.join(f'{r:,.0f}' for r in rates['plain'])} tokens/s | "
            f"ours {', '.join(f'{r:,.0f}' for r in rates['ours'])} tokens/s | "
            f"pair ratios {', '.join(f'{r:.3f}' for r in ratios)} | median ratio {ratio:.3f}",
            flush=True,
        )
    return results


@pytest.mark.timeout(3600)
@pytest.mark.skipif(not TEXT.is_file(), reason="tiny Shakespeare is not available")
def test_train_loop_keeps_up_with_plain_pytorch(tmp_path: Path) -> None:
    results = run_cpu_benchmark(tmp_path)
    for dtype, result in results.items():
        assert result["ratio"] >= MIN_RATIO, f"{dtype}: {result}"


# ---------------------------------------------------------------- GPU: MFU of the 124M preset


def synthetic_shards(root: Path, vocab_size: int = 50304, tokens: int = 20_000_000) -> Path:
    """Random-token shards (uint16) with a 50,304-token vocabulary and the tokenizer of a tiny run."""
    import hashlib

    import pyarrow as pa
    import pyarrow.parquet as pq

    manifest_path = root / "tokens" / "manifest.json"
    if manifest_path.is_file():
        return manifest_path
    small = build_token_run(root / "small", TEXT.read_text(encoding="utf-8")[:200_000], vocab_size=300)
    tok_dir = root / "tokenizer"
    tok_dir.mkdir(parents=True)
    (tok_dir / "tokenizer.json").write_bytes(
        (small.parent.parent / "tokenizer" / "tokenizer.json").read_bytes()
    )
    manifest = json.loads(small.read_text())
    rng = np.random.default_rng(0)
    doc_len = 2048
    docs = rng.integers(2, vocab_size, size=(tokens // doc_len, doc_len), dtype=np.uint16)
    (root / "tokens").mkdir()
    schema = pa.schema([("id", pa.string()), ("input_ids", pa.list_(pa.uint16())), ("n_tokens", pa.int32())])
    shards = {}
    for split, rows in (("train", docs[:-16]), ("validation", docs[-16:])):
        table = pa.table(
            {
                "id": [f"{split}-{i}" for i in range(len(rows))],
                "input_ids": pa.array(list(rows), type=pa.list_(pa.uint16())),
                "n_tokens": [doc_len] * len(rows),
            },
            schema=schema,
        )
        path = root / "tokens" / f"{split}-00000.parquet"
        pq.write_table(table, path, row_group_size=256)
        data = path.read_bytes()
        entry = {"path": path.name, "documents": len(rows), "tokens": rows.size, "bytes": len(data),
                 "sha256": hashlib.sha256(data).hexdigest()}  # fmt: skip
        shards[split] = {"documents": len(rows), "tokens": int(rows.size), "shards": [entry]}
    manifest["splits"] = shards
    manifest["tokenizer"]["vocab_size"] = vocab_size
    manifest_path.write_text(json.dumps(manifest))
    return manifest_path


GPU_COMMAND = (
    "torchrun --standalone --nproc_per_node 1 -m training.train --data {manifest} --output {output} "
    "--preset gpt2-124m --seq-len 1024 --batch-size 32 --grad-accum 1 --max-steps 60 --warmup-steps 10 "
    "--dtype bf16 --compile --eval-every 0 --save-every 0 --log-every 10"
)


@pytest.mark.timeout(3600)
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_mfu_of_the_124m_preset(tmp_path: Path) -> None:
    manifest = synthetic_shards(tmp_path / "synthetic")
    command = GPU_COMMAND.format(manifest=manifest, output=tmp_path / "out").split()
    command = [sys.executable, "-m", "torch.distributed.run", *command[1:]]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    records = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["type"] == "train" and r["step"] > 20]
    mfu = statistics.median(r["mfu"] for r in train)
    tokens_per_s = statistics.median(r["tokens_per_s"] for r in train)
    memory = max(r["cuda_max_allocated_gib"] for r in train)
    wait = statistics.median(r["data_wait_s"] for r in train)
    device = torch.cuda.get_device_name()
    print(
        f"{device}: gpt2-124m, seq 1024, bf16, compiled: {tokens_per_s:,.0f} tokens/s, MFU {mfu:.3f}, "
        f"peak {memory:.1f} GiB allocated, data wait {wait:.3f} s per 10 steps"
    )
    assert mfu >= float(os.environ.get("GRISTMILL_BENCH_MIN_MFU", "0.45"))


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        run_cpu_benchmark(Path(tmp))
