"""Training stage: model, shard reader, a real torchrun run, exact resume and generation.

The ``token_run`` fixture builds real shards per docs/shard-format.md from tiny Shakespeare: a
byte-level BPE tokenizer trained here, ~200-line documents, train/validation Parquet shards with a
``list<uint16>`` column and a manifest.json.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from training.data import (
    DataError,
    IntegrityError,
    TokenWindows,
    WindowSampler,
    check_tokenizer,
    epoch_order,
    load_manifest,
    load_split_tokens,
)
from training.generate import generate, load_checkpoint, stream_text
from training.model import PRESETS, ModelConfig, Transformer
from training.train import lr_at
from training.train import main as train_main

REPO = Path(__file__).resolve().parents[1]
TEXT = Path("/work/shared/data/tinyshakespeare/input.txt")
EOT, PAD = "<|endoftext|>", "<|pad|>"


# ---------------------------------------------------------------- building shards per the contract


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def build_token_run(
    root: Path, text: str, lines_per_doc: int = 200, vocab_size: int = 1000, validation_fraction: float = 0.05
) -> Path:
    """Write tokenizer/tokenizer.json, tokens/{train,validation}-00000.parquet and tokens/manifest.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    lines = text.splitlines(keepends=True)
    docs = {
        f"shakespeare-{i // lines_per_doc:04d}": "".join(lines[i : i + lines_per_doc])
        for i in range(0, len(lines), lines_per_doc)
    }

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT, PAD],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(docs.values(), trainer)
    assert tokenizer.token_to_id(EOT) == 0 and tokenizer.token_to_id(PAD) == 1
    (root / "tokenizer").mkdir(parents=True)
    tok_path = root / "tokenizer" / "tokenizer.json"
    tokenizer.save(str(tok_path))

    threshold = validation_fraction * 10000
    splits: dict[str, list[str]] = {"train": [], "validation": []}
    for doc_id in docs:
        is_val = int(hashlib.sha256(doc_id.encode()).hexdigest(), 16) % 10000 < threshold
        splits["validation" if is_val else "train"].append(doc_id)
    assert splits["validation"], "the split rule should select some validation documents"

    tokens_dir = root / "tokens"
    tokens_dir.mkdir()
    schema = pa.schema([("id", pa.string()), ("input_ids", pa.list_(pa.uint16())), ("n_tokens", pa.int32())])
    manifest_splits = {}
    for split, ids in splits.items():
        texts = [docs[i] for i in ids]
        encoded = [enc.ids for enc in tokenizer.encode_batch(texts, add_special_tokens=False)]
        columns = {"id": ids, "input_ids": encoded, "n_tokens": [len(e) for e in encoded]}
        table = pa.table(columns, schema=schema)
        name = f"{split}-00000.parquet"
        pq.write_table(table, tokens_dir / name, row_group_size=1024)
        data = (tokens_dir / name).read_bytes()
        n_tokens = sum(len(e) for e in encoded)
        shard = {
            "path": name,
            "documents": len(ids),
            "tokens": n_tokens,
            "bytes": len(data),
            "sha256": _sha256(data),
        }
        manifest_splits[split] = {"documents": len(ids), "tokens": n_tokens, "shards": [shard]}
    manifest = {
        "format": "gristmill.tokens",
        "format_version": 1,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "dtype": "uint16",
        "tokenizer": {
            "path": "../tokenizer/tokenizer.json",
            "sha256": _sha256(tok_path.read_bytes()),
            "vocab_size": tokenizer.get_vocab_size(),
            "special_tokens": {EOT: 0, PAD: 1},
            "eot_id": 0,
        },
        "splits": manifest_splits,
        "totals": {
            "documents": len(docs),
            "tokens": sum(s["tokens"] for s in manifest_splits.values()),
            "bytes": sum(s["shards"][0]["bytes"] for s in manifest_splits.values()),
        },
        "split_rule": {
            "validation_fraction": validation_fraction,
            "method": "sha256(id) mod 10000 < fraction*10000",
        },
        "lineage": {
            "run_id": "test",
            "config_sha256": "0" * 64,
            "policy_sha256": "0" * 64,
            "inputs": [str(TEXT)],
        },
    }
    manifest_path = tokens_dir / "manifest.json"
    tmp = tokens_dir / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, manifest_path)
    return manifest_path


@pytest.fixture(scope="session")
def token_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not TEXT.is_file():
        pytest.skip(f"{TEXT} is not available")
    return build_token_run(tmp_path_factory.mktemp("run"), TEXT.read_text(encoding="utf-8"))


def _copy_run(manifest: Path, dest: Path) -> Path:
    shutil.copytree(manifest.parent.parent, dest)
    return dest / "tokens" / "manifest.json"


# ---------------------------------------------------------------- subprocess helpers


def _env() -> dict[str, str]:
    dist_vars = {"WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"}
    env = {k: v for k, v in os.environ.items() if k not in dist_vars}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


def _run(args: list[str], timeout: int = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout)


def _train_args(manifest: Path, output: Path, max_steps: int = 6) -> list[str]:
    return [
        "--data",
        str(manifest),
        "--output",
        str(output),
        "--max-steps",
        str(max_steps),
        "--preset",
        "tiny",
        "--seq-len",
        "64",
        "--batch-size",
        "8",
        "--grad-accum",
        "2",
        "--lr",
        "3e-3",
        "--warmup-steps",
        "2",
        "--eval-every",
        "3",
        "--eval-batches",
        "2",
        "--log-every",
        "1",
        "--save-every",
        "3",
        "--seed",
        "0",
    ]


def _metrics(output: Path, kind: str) -> list[dict]:
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["type"] == kind]


def _ok(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"


@pytest.fixture(scope="module")
def trained(token_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Output dir of a real 2-process torchrun run (6 steps, checkpoints at 3 and 6)."""
    output = tmp_path_factory.mktemp("train") / "out"
    proc = _run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "training.train",
            *_train_args(token_run, output),
        ]
    )
    _ok(proc)
    return output


# ---------------------------------------------------------------- model


def _tiny(**overrides: object) -> ModelConfig:
    base = {"vocab_size": 97, "d_model": 32, "n_layers": 2, "n_heads": 4, "max_seq_len": 32}
    return ModelConfig(**{**base, **overrides})


def test_forward_shapes_and_loss() -> None:
    torch.manual_seed(0)
    model = Transformer(_tiny())
    idx, targets = torch.randint(0, 97, (3, 16)), torch.randint(0, 97, (3, 16))
    logits, loss = model(idx, targets)
    assert logits.shape == (3, 16, 97)
    assert loss is not None and abs(loss.item() - math.log(97)) < 0.5  # near-uniform at init
    assert model(idx)[1] is None


def test_forward_is_causal() -> None:
    torch.manual_seed(0)
    model = Transformer(_tiny()).eval()
    idx = torch.randint(0, 97, (1, 12))
    changed = idx.clone()
    changed[0, 8] = (idx[0, 8] + 1) % 97
    a, _ = model(idx)
    b, _ = model(changed)
    torch.testing.assert_close(a[:, :8], b[:, :8])
    assert not torch.allclose(a[:, 8:], b[:, 8:])


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
def test_kv_cache_matches_full_forward(n_kv_heads: int) -> None:
    torch.manual_seed(0)
    model = Transformer(_tiny(n_kv_heads=n_kv_heads)).eval()
    idx = torch.randint(0, 97, (2, 20))
    full, _ = model(idx)
    cache = model.new_kv_cache(batch_size=2)
    pieces = [
        model(idx[:, :7], kv_cache=cache, start_pos=0)[0],  # prefill
        model(idx[:, 7:12], kv_cache=cache, start_pos=7)[0],
    ]  # a chunk after cached positions
    pieces += [model(idx[:, p : p + 1], kv_cache=cache, start_pos=p)[0] for p in range(12, 20)]  # one by one
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-4)


def test_gqa_config_and_parameter_savings() -> None:
    mha, gqa = Transformer(_tiny()), Transformer(_tiny(n_kv_heads=2))
    assert gqa.blocks[0].attn.wk.weight.shape == (16, 32)
    assert gqa.num_parameters() < mha.num_parameters()
    logits, loss = gqa(torch.randint(0, 97, (2, 8)), torch.randint(0, 97, (2, 8)))
    assert logits.shape == (2, 8, 97)
    loss.backward()
    with pytest.raises(ValueError, match="n_kv_heads"):
        _tiny(n_kv_heads=3)


def test_config_roundtrip_presets_and_init() -> None:
    cfg = _tiny(n_kv_heads=2, ffn_hidden=100)
    assert cfg.ffn_hidden == 128  # rounded up to multiple_of
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="unknown"):
        ModelConfig.from_dict({**cfg.to_dict(), "bogus": 1})
    assert set(PRESETS) == {"tiny", "small", "gpt2-124m", "1b"}
    with torch.device("meta"):
        gpt2 = Transformer(PRESETS["gpt2-124m"].with_overrides(vocab_size=50257))
        big = Transformer(PRESETS["1b"])
    assert 120e6 < gpt2.num_parameters() < 130e6
    assert 0.9e9 < big.num_parameters() < 1.2e9

    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=512, d_model=256, n_layers=8, n_heads=4))
    assert model.lm_head.weight is model.tok_emb.weight
    assert abs(model.tok_emb.weight.std().item() - 0.02) < 2e-3
    assert abs(model.blocks[0].attn.wo.weight.std().item() - 0.02 / 4) < 1e-3
    assert abs(model.blocks[0].mlp.w2.weight.std().item() - 0.02 / 4) < 1e-3
    untied = Transformer(_tiny(tie_embeddings=False))
    assert untied.lm_head.weight is not untied.tok_emb.weight


# ---------------------------------------------------------------- data


def test_split_stream_follows_manifest_order(token_run: Path) -> None:
    manifest = load_manifest(token_run)
    assert check_tokenizer(manifest).startswith(b"{")
    stream = load_split_tokens(manifest, "train")
    table = pq.read_table(token_run.parent / "train-00000.parquet")
    expected = [t for doc in table.column("input_ids").to_pylist() for t in [*doc, manifest.eot_id]]
    assert stream.dtype == np.uint16
    np.testing.assert_array_equal(stream, np.array(expected, dtype=np.uint16))
    windows = TokenWindows(stream, 64)
    assert len(windows) == len(stream) // 65
    x, y = windows.gather(np.array([3]))
    assert x.dtype == torch.long and x.shape == (1, 64)
    np.testing.assert_array_equal(x[0, 1:].numpy(), y[0, :-1].numpy())
    np.testing.assert_array_equal(y[0].numpy(), stream[3 * 65 + 1 : 4 * 65])


def test_window_order_is_independent_of_world_size(token_run: Path) -> None:
    manifest = load_manifest(token_run)
    windows = TokenWindows(load_split_tokens(manifest, "train"), 64)
    batch = 24
    sampler = WindowSampler(windows, batch, seed=7)
    spe = sampler.steps_per_epoch
    assert spe == len(windows) // batch
    for step in [0, 1, spe - 1, spe, spe + 3]:  # crossing into epoch 1
        single = sampler.indices_for_step(step)
        for world in (2, 3, 4):
            union = np.concatenate([sampler.indices_for_step(step, r, world) for r in range(world)])
            np.testing.assert_array_equal(union, single)
        x, _ = sampler.batch_for_step(step, 1, 4)
        assert x.shape == (6, 64)
    epoch0 = np.concatenate([sampler.indices_for_step(s) for s in range(spe)])
    assert len(np.unique(epoch0)) == len(epoch0) == spe * batch
    np.testing.assert_array_equal(epoch0, epoch_order(len(windows), 7, 0)[: spe * batch])
    np.testing.assert_array_equal(sampler.indices_for_step(spe), epoch_order(len(windows), 7, 1)[:batch])
    assert sampler.position(spe + 3).epoch == 1 and sampler.position(spe + 3).windows_consumed == 3 * batch
    with pytest.raises(ValueError, match="divide"):
        sampler.indices_for_step(0, 0, 5)


def test_shard_sha256_mismatch_raises(token_run: Path, tmp_path: Path) -> None:
    manifest_path = _copy_run(token_run, tmp_path / "run")
    shard = manifest_path.parent / "train-00000.parquet"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="sha256"):
        load_split_tokens(load_manifest(manifest_path), "train")
    load_split_tokens(load_manifest(manifest_path), "validation")  # untouched shard still reads


def test_tokenizer_and_format_checks(token_run: Path, tmp_path: Path) -> None:
    manifest_path = _copy_run(token_run, tmp_path / "run")
    tok = manifest_path.parent.parent / "tokenizer" / "tokenizer.json"
    tok.write_text(tok.read_text() + "\n")
    with pytest.raises(IntegrityError, match="tokenizer"):
        check_tokenizer(load_manifest(manifest_path))
    data = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**data, "format_version": 2}))
    with pytest.raises(DataError, match="format_version"):
        load_manifest(manifest_path)


def test_lr_schedule() -> None:
    assert lr_at(0, 100, 1.0, 10, 0.1) == pytest.approx(0.1)
    assert lr_at(9, 100, 1.0, 10, 0.1) == pytest.approx(1.0)
    assert lr_at(10, 100, 1.0, 10, 0.1) == pytest.approx(1.0)
    assert lr_at(55, 100, 1.0, 10, 0.1) == pytest.approx(0.55)
    assert lr_at(100, 100, 1.0, 10, 0.1) == pytest.approx(0.1)


# ---------------------------------------------------------------- training runs


def test_torchrun_writes_checkpoint_and_metrics(trained: Path) -> None:
    ckpt = trained / "step-000006"
    assert (trained / "latest").read_text().strip() == "step-000006"
    assert {p.name for p in ckpt.iterdir()} == {
        "model.pt",
        "optimizer.pt",
        "config.json",
        "train_state.json",
        "tokenizer.json",
    }
    assert (trained / "step-000003" / "model.pt").is_file()
    assert not list(trained.glob(".tmp-*"))
    state = json.loads((ckpt / "train_state.json").read_text())
    assert state["step"] == 6 and state["world_size"] == 2 and state["tokens_seen"] == 6 * 8 * 64
    config = json.loads((ckpt / "config.json").read_text())
    assert config["model"]["d_model"] == 128 and config["tokenizer"]["eot_id"] == 0
    assert config["training"]["batch_size"] == 8
    keys = set(torch.load(ckpt / "model.pt", weights_only=True))
    assert "tok_emb.weight" in keys and not any(k.startswith("module.") for k in keys)

    train = _metrics(trained, "train")
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]
    assert {"loss", "lr", "grad_norm", "tokens_per_s"} <= set(train[0])
    losses = [r["loss"] for r in train]
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0] - 0.3, losses
    val = _metrics(trained, "val")
    assert [r["step"] for r in val] == [3, 6]
    assert val[1]["val_loss"] < val[0]["val_loss"]
    assert val[1]["val_ppl"] == pytest.approx(math.exp(val[1]["val_loss"]))


def test_resume_on_one_process_continues_exactly(trained: Path, tmp_path: Path) -> None:
    output = tmp_path / "out"
    shutil.copytree(trained, output)
    shutil.rmtree(output / "step-000006")
    (output / "latest").write_text("step-000003\n")
    reference = _metrics(trained, "train")
    lines = (output / "metrics.jsonl").read_text().splitlines(keepends=True)
    (output / "metrics.jsonl").write_text("".join(line for line in lines if json.loads(line)["step"] <= 3))

    manifest = json.loads((trained / "step-000006" / "config.json").read_text())["data"]["manifest"]
    proc = _run([sys.executable, "-m", "training.train", *_train_args(Path(manifest), output), "--resume"])
    _ok(proc)
    assert "start step 3 of 6" in proc.stdout
    resumed = _metrics(output, "train")
    assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5, 6]
    for ref, got in zip(reference[3:], resumed[3:], strict=True):  # same windows, other world size
        assert got["loss"] == pytest.approx(ref["loss"], rel=1e-3)
    state = json.loads((output / "step-000006" / "train_state.json").read_text())
    ref_state = json.loads((trained / "step-000006" / "train_state.json").read_text())
    assert state["world_size"] == 1
    assert {k: state[k] for k in ("step", "epoch", "windows_consumed", "tokens_seen")} == {
        k: ref_state[k] for k in ("step", "epoch", "windows_consumed", "tokens_seen")
    }


def test_refuses_to_overwrite_checkpoints(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = json.loads((trained / "step-000006" / "config.json").read_text())["data"]["manifest"]
    assert train_main(_train_args(Path(manifest), trained)) == 1
    assert "pass --resume" in capsys.readouterr().err
    assert (trained / "latest").read_text().strip() == "step-000006"


def test_nonfinite_loss_stops_without_overwriting(trained: Path, tmp_path: Path) -> None:
    output = tmp_path / "out"
    shutil.copytree(trained, output)
    weights = output / "step-000006" / "model.pt"
    state = torch.load(weights, weights_only=True)
    state["norm.weight"][0] = float("nan")
    torch.save(state, weights)
    manifest = json.loads((output / "step-000006" / "config.json").read_text())["data"]["manifest"]
    proc = _run([sys.executable, "-m", "training.train", *_train_args(Path(manifest), output, 8), "--resume"])
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "non-finite loss at step 7" in proc.stderr
    assert (output / "latest").read_text().strip() == "step-000006"
    assert sorted(p.name for p in output.glob("step-*")) == ["step-000003", "step-000006"]
    assert not list(output.glob(".tmp-*"))


# ---------------------------------------------------------------- generation


def test_generate_cli_prints_text(trained: Path) -> None:
    proc = _run(
        [
            sys.executable,
            "-m",
            "training.generate",
            "--checkpoint",
            str(trained),
            "--prompt",
            "ROMEO:",
            "--max-new-tokens",
            "30",
            "--seed",
            "1",
        ]
    )
    _ok(proc)
    assert proc.stdout.startswith("ROMEO:")
    assert len(proc.stdout.strip()) > len("ROMEO:")


def test_generate_function_and_utf8_streaming(trained: Path) -> None:
    loaded = load_checkpoint(trained / "step-000006")
    prompt = [loaded.eot_id, *loaded.tokenizer.encode("KING:", add_special_tokens=False).ids]
    greedy = [list(generate(loaded.model, prompt, 12, temperature=0.0)) for _ in range(2)]
    assert greedy[0] == greedy[1] and 0 < len(greedy[0]) <= 12

    def sampled(seed: int) -> list[int]:
        gen = torch.Generator().manual_seed(seed)
        return list(generate(loaded.model, prompt, 20, 0.8, 50, 0.9, loaded.eot_id, gen))

    assert sampled(3) == sampled(3)
    # A sequence that ends in end-of-text stops before it.
    first = greedy[0][0]
    assert list(generate(loaded.model, prompt, 5, temperature=0.0, eot_id=first)) == []

    text = "héllo wörld, 你好 🙂!"
    ids = loaded.tokenizer.encode(text, add_special_tokens=False).ids
    assert any("\ufffd" in loaded.tokenizer.decode([i]) for i in ids)  # some tokens split characters
    pieces = list(stream_text(loaded.tokenizer, ids))
    assert "".join(pieces) == text
    assert not any("\ufffd" in piece for piece in pieces)
