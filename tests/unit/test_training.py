"""Training stage: model, streaming shard reader, torchrun runs from a loopback S3 server, exact resume
after SIGKILL and on other world sizes, FSDP2, NaN stop, generation and Hugging Face export.

Shards are built per docs/shard-format.md from tiny Shakespeare (tests/token_shards.py) and served
by a real S3 server on 127.0.0.1 (moto, the ``s3_server`` fixture of tests/conftest.py).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from faulty_proxy import KINDS, FaultyProxy
from s3_server import aws_env, create_bucket, upload_dir
from token_shards import TEXT, build_token_run, expected_stream

from training import storage
from training.checkpoint import CheckpointStore
from training.data import (
    BatchStream,
    EpochSchedule,
    Shuffle,
    WindowSource,
    rank_slots,
    validation_windows,
)
from training.generate import generate, load_checkpoint, stream_text
from training.generate import main as generate_main
from training.logs import load_metrics
from training.manifest import DataError, IntegrityError, check_tokenizer, load_manifest, verify_shards
from training.mfu import flops_per_token, matmul_params, peak_flops
from training.mixing import Interleave, MixedSchedule
from training.model import PRESETS, ModelConfig, Transformer
from training.schedule import lr_at
from training.trace import load_trace
from training.train import main as train_main

REPO = Path(__file__).resolve().parents[2]
BUCKET = "gristmill-test"


# ---------------------------------------------------------------- data and environment


@pytest.fixture(scope="session")
def token_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not TEXT.is_file():
        pytest.skip(f"{TEXT} is not available")
    return build_token_run(tmp_path_factory.mktemp("run"), TEXT.read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def s3_data(s3_server: str, token_run: Path) -> str:
    """URI of the token run's manifest on the loopback S3 server."""
    create_bucket(s3_server, BUCKET)
    upload_dir(s3_server, token_run.parent.parent, BUCKET, "run")
    return f"s3://{BUCKET}/run/tokens/manifest.json"


@pytest.fixture
def s3_env(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point this process's boto3 at the loopback server."""
    for key, value in aws_env(s3_server).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(storage, "_client", None)
    return s3_server


def _env(s3_server: str | None = None) -> dict[str, str]:
    dist_vars = {"WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"}
    env = {k: v for k, v in os.environ.items() if k not in dist_vars}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return {**env, **(aws_env(s3_server) if s3_server else {})}


def _torchrun(nproc: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "training.train",
    ]


def _run(
    args: list[str], s3_server: str | None = None, timeout: int = 240
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=REPO, env=_env(s3_server), capture_output=True, text=True, timeout=timeout
    )


def _ok(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, (
        f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-6000:]}"
    )


MAX_STEPS = 8


def _train_args(
    data: str | list[str], output: str | Path, max_steps: int = MAX_STEPS, deterministic: bool = True
) -> list[str]:
    """Arguments of every test run; ``deterministic`` for the runs compared bitwise."""
    return [
        "--data", *([data] if isinstance(data, str) else data),
        "--output", str(output),
        "--max-steps", str(max_steps),
        "--preset", "tiny",
        "--seq-len", "64",
        "--batch-size", "8",
        "--grad-accum", "2",
        "--lr", "3e-3",
        "--warmup-steps", "2",
        "--eval-every", "4",
        "--eval-batches", "2",
        "--log-every", "1",
        "--save-every", "2",
        "--keep-last", "10",
        "--seed", "0",
        *(["--deterministic"] if deterministic else []),
    ]  # fmt: skip


def _metrics(output: str | Path, kind: str) -> list[dict]:
    return [r for r in load_metrics(str(output)) if r["type"] == kind]


def _step_windows(output: str | Path) -> dict[int, list[list[int]]]:
    """Windows of each step from the trace, all ranks concatenated in rank order."""
    return {
        step: [w for r in records for w in r["windows"]] for step, records in load_trace(str(output)).items()
    }


@pytest.fixture(scope="module")
def reference(s3_server: str, s3_data: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted 2-process DDP run (torchrun, gloo) on shards streamed from S3."""
    output = tmp_path_factory.mktemp("reference") / "out"
    _ok(_run([*_torchrun(2), *_train_args(s3_data, output)], s3_server))
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
    assert logits is None  # never materialised when the loss is asked for
    assert loss is not None and abs(loss.item() - math.log(97)) < 0.5  # near-uniform at init
    logits, no_loss = model(idx)
    assert logits.shape == (3, 16, 97) and no_loss is None  # the padded rows (97 -> 128) are cut off
    assert model.tok_emb.weight.shape == (128, 32)


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
        model(idx[:, 7:12], kv_cache=cache, start_pos=7)[0],  # a chunk after cached positions
    ]
    pieces += [model(idx[:, p : p + 1], kv_cache=cache, start_pos=p)[0] for p in range(12, 20)]  # one by one
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-4)


def test_gqa_config_and_parameter_savings() -> None:
    mha, gqa = Transformer(_tiny()), Transformer(_tiny(n_kv_heads=2))
    assert gqa.blocks[0].attn.wk.weight.shape == (16, 32)
    assert gqa.num_parameters() < mha.num_parameters()
    assert gqa(torch.randint(0, 97, (2, 8)))[0].shape == (2, 8, 97)
    _, loss = gqa(torch.randint(0, 97, (2, 8)), torch.randint(0, 97, (2, 8)))
    loss.backward()
    with pytest.raises(ValueError, match="n_kv_heads"):
        _tiny(n_kv_heads=3)


def test_activation_checkpointing_gives_the_same_gradients() -> None:
    torch.manual_seed(0)
    model = Transformer(_tiny(n_kv_heads=2))
    idx, targets = torch.randint(0, 97, (2, 16)), torch.randint(0, 97, (2, 16))
    grads = []
    for recompute in (False, True):
        model.zero_grad()
        model.activation_checkpointing = recompute
        model(idx, targets)[1].backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for plain, recomputed in zip(*grads, strict=True):
        torch.testing.assert_close(plain, recomputed, atol=1e-6, rtol=1e-5)


def test_config_roundtrip_presets_and_init() -> None:
    cfg = _tiny(n_kv_heads=2, ffn_hidden=100)
    assert cfg.ffn_hidden == 128  # rounded up to multiple_of
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="unknown"):
        ModelConfig.from_dict({**cfg.to_dict(), "bogus": 1})
    assert set(PRESETS) == {"tiny", "small", "15m", "gpt2-124m", "1b"}
    with torch.device("meta"):
        gpt2 = Transformer(PRESETS["gpt2-124m"].with_overrides(vocab_size=50257))
        big = Transformer(PRESETS["1b"])
        bench = Transformer(PRESETS["15m"].with_overrides(vocab_size=8192))
    assert 120e6 < gpt2.num_parameters() < 130e6
    assert 0.9e9 < big.num_parameters() < 1.2e9
    assert 13e6 < bench.num_parameters() < 16e6

    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=512, d_model=256, n_layers=8, n_heads=4))
    assert model.lm_head.weight is model.tok_emb.weight
    assert abs(model.tok_emb.weight.std().item() - 0.02) < 2e-3
    assert abs(model.blocks[0].attn.wo.weight.std().item() - 0.02 / 4) < 1e-3
    assert abs(model.blocks[0].mlp.w2.weight.std().item() - 0.02 / 4) < 1e-3
    untied = Transformer(_tiny(tie_embeddings=False))
    assert untied.lm_head.weight is not untied.tok_emb.weight


def test_flops_per_token_and_peaks(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = PRESETS["gpt2-124m"].with_overrides(vocab_size=50257)
    with torch.device("meta"):
        model = Transformer(cfg)
    norms = sum(p.numel() for n, p in model.named_parameters() if "norm" in n)
    assert matmul_params(cfg) == model.num_parameters() - norms  # tied: embedding counted once, as the head
    assert flops_per_token(cfg, 1024) == 6 * matmul_params(cfg) + 12 * 12 * 768 * 1024
    peak, where = peak_flops(torch.device("cpu"), "fp32")
    assert peak is not None and peak > 1e9 and where == "cpu estimate"
    assert peak_flops(torch.device("cpu"), "bf16", override=5e12) == (5e12, "override")
    monkeypatch.setenv("GRISTMILL_PEAK_FLOPS", "7e12")
    assert peak_flops(torch.device("cpu"), "fp32") == (7e12, "override")


def test_lr_schedule() -> None:
    assert lr_at(0, 100, 1.0, 10, 0.1) == pytest.approx(0.1)
    assert lr_at(9, 100, 1.0, 10, 0.1) == pytest.approx(1.0)
    assert lr_at(10, 100, 1.0, 10, 0.1) == pytest.approx(1.0)
    assert lr_at(55, 100, 1.0, 10, 0.1) == pytest.approx(0.55)
    assert lr_at(100, 100, 1.0, 10, 0.1) == pytest.approx(0.1)


# ---------------------------------------------------------------- streaming reader


@pytest.mark.parametrize("variant", ["statistics", "no_statistics_and_empty_document"])
def test_windows_match_the_manifest_order_stream(variant: str, tmp_path: Path) -> None:
    plain = variant == "statistics"
    manifest_path = build_token_run(
        tmp_path,
        TEXT.read_text(encoding="utf-8")[:300_000],
        lines_per_doc=50,
        empty_document=not plain,
        write_statistics=plain,
    )
    stream = np.array(expected_stream(manifest_path, "train"))
    source = WindowSource(load_manifest(str(manifest_path)), "train", 64)
    assert source.index.n_tokens == len(stream) and len(source) == len(stream) // 65
    assert (
        len(source.index) > 4 and len(set(source.index.shard.tolist())) == 2
    )  # several row groups, 2 shards
    for w in range(len(source)):
        tokens, segments = source.window(w)
        np.testing.assert_array_equal(tokens, stream[w * 65 : (w + 1) * 65])
    # The trace names exactly the rows whose tokens make up the window.
    import pyarrow.parquet as pq

    w = next(
        w
        for w in range(len(source))
        if len(source.window(w)[1]) > 1 or source.window(w)[1][0].first_row != source.window(w)[1][0].last_row
    )
    tokens, segments = source.window(w)
    rebuilt = []
    for seg in segments:
        docs = pq.read_table(manifest_path.parent / seg.shard).column("input_ids").to_pylist()
        rebuilt += [t for doc in docs[seg.first_row : seg.last_row + 1] for t in [*doc, 0]]
    assert "".join(map(chr, tokens.tolist())) in "".join(map(chr, rebuilt))
    x, y = source.gather([3, 5])
    assert x.dtype == torch.long and x.shape == (2, 64)
    np.testing.assert_array_equal(x[0, 1:].numpy(), y[0, :-1].numpy())


def test_s3_reads_only_the_row_groups_it_needs(token_run: Path, s3_data: str, s3_env: str) -> None:
    local = WindowSource(load_manifest(str(token_run)), "train", 64)
    remote = WindowSource(load_manifest(s3_data), "train", 64, cache_bytes=1)
    assert remote.index.n_tokens == local.index.n_tokens and len(remote.index) == len(local.index)
    window = len(remote) // 2
    tokens, segments = remote.window(window)
    np.testing.assert_array_equal(tokens, local.window(window)[0])
    needed = remote.row_groups([window])
    assert remote.cache.stats.row_groups == remote.cache.stats.requests == len(needed) < len(remote.index)
    meta = remote.index.shards[int(remote.index.shard[needed[0]])].metadata
    chunk = meta.row_group(int(remote.index.row_group[needed[0]])).column(1).total_compressed_size
    assert remote.cache.stats.bytes >= chunk  # the input_ids column chunk, not the shard
    assert segments == local.window(window)[1]
    remote.close()


def test_window_order_is_independent_of_world_size_and_workers(token_run: Path) -> None:
    source = WindowSource(load_manifest(str(token_run)), "train", 64)
    batch = 24
    schedule = EpochSchedule(len(source), batch, 7, Shuffle(lanes=4, chunk_windows=50, buffer_chunks=3))
    spe = schedule.steps_per_epoch
    for step in [0, 1, spe - 1, spe, spe + 3]:  # crossing into epoch 1
        single = schedule.global_batch_at(step)
        for world in (2, 3, 4, 6):
            union = np.concatenate([rank_slots(schedule, step, r, world) for r in range(world)])
            np.testing.assert_array_equal(union, single)
    epochs = [
        np.concatenate([schedule.global_batch_at(e * spe + s)[:, 1] for s in range(spe)]) for e in (0, 1)
    ]
    for windows in epochs:  # each window at most once per epoch; fewer than a batch left out
        assert len(np.unique(windows)) == len(windows) == spe * batch > len(source) - batch
    assert not np.array_equal(epochs[0], epochs[1])  # each epoch has its own order
    assert schedule.position(spe + 3) == {"schedule": "epoch", "epoch": 1, "windows_consumed": 3 * batch}
    with pytest.raises(ValueError, match="divide"):
        rank_slots(schedule, 0, 0, 5)

    # Batches built with one or three loader threads are the same.
    start, stop = spe - 2, spe + 2
    threads = WindowSource(load_manifest(str(token_run)), "train", 64, threads=3)
    one = list(BatchStream([source], schedule, 1, 2, start, stop))
    three = list(BatchStream([threads], schedule, 1, 2, start, stop, prefetch_steps=4))
    assert [b.step for b in one] == [b.step for b in three] == list(range(start, stop))
    for a, b in zip(one, three, strict=True):
        assert torch.equal(a.tokens, b.tokens) and a.windows == b.windows and a.sources == b.sources
        assert a.windows == rank_slots(schedule, a.step, 1, 2).tolist()
        np.testing.assert_array_equal(a.inputs[:, 1:].numpy(), a.targets[:, :-1].numpy())
    val = [validation_windows(100, 40, 8, r, w) for w, r in [(1, 0), (2, 0), (2, 1), (4, 3)]]
    assert len(val[0]) == 40 and np.array_equal(np.concatenate(val[1:3]), val[0]) and len(val[3]) == 10


def test_interleave_follows_weights_and_is_resumable() -> None:
    weights = [Fraction(3), Fraction(1, 2), Fraction(5, 4)]
    mix = Interleave(weights)
    replay = mix.slots(0, 4000)
    counts = Counter(k for k, _ in replay)
    for k, w in enumerate(weights):
        assert abs(counts[k] - 4000 * w / sum(weights)) <= 1
    for n in (0, 1, 17, 999, 2500, 4000):  # closed-form counts equal a replay from slot 0
        assert mix.counts_at(n) == [sum(1 for k, _ in replay[:n] if k == s) for s in range(3)]
    assert mix.slots(1234, 50) == replay[1234:1284]
    # Sample indices per source are consecutive: no sample is skipped or repeated.
    for k in range(3):
        assert [j for s, j in replay if s == k] == list(range(counts[k]))

    shuffle = Shuffle(lanes=2, chunk_windows=3, buffer_chunks=2)
    schedule = MixedSchedule([20, 14, 26], ["0.6", "0.1", "0.3"], global_batch=6, seed=3, shuffle=shuffle)
    seen = [schedule.global_batch_at(s) for s in range(20)]
    per_source = Counter(int(k) for batch in seen for k in batch[:, 0])
    assert per_source == {0: 72, 1: 12, 2: 36}
    longer = seen + [schedule.global_batch_at(s) for s in range(20, 30)]
    first_epoch = [int(w) for batch in longer for k, w in batch if k == 1][:14]
    assert sorted(first_epoch) == list(range(14))  # all of source 1 (7 per lane) before repeating
    assert schedule.position(20)["sources"][0] == {"consumed": 72, "epoch": 3, "windows_consumed": 12}
    for world in (2, 3, 6):
        union = np.concatenate([rank_slots(schedule, 13, r, world) for r in range(world)])
        np.testing.assert_array_equal(union, seen[13])


def test_integrity_checks(token_run: Path, tmp_path: Path) -> None:
    shutil.copytree(token_run.parent.parent, tmp_path / "run")
    manifest_path = tmp_path / "run" / "tokens" / "manifest.json"
    shard = manifest_path.parent / "train-00000.parquet"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="sha256"):
        verify_shards(load_manifest(str(manifest_path)), "train")
    verify_shards(load_manifest(str(manifest_path)), "validation")  # untouched shard still verifies
    shard.write_bytes(bytes(data[:-10]))
    with pytest.raises(IntegrityError, match="bytes"):
        WindowSource(load_manifest(str(manifest_path)), "train", 64)

    tok = manifest_path.parent.parent / "tokenizer" / "tokenizer.json"
    tok.write_text(tok.read_text() + "\n")
    with pytest.raises(IntegrityError, match="tokenizer"):
        check_tokenizer(load_manifest(str(manifest_path)))
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**manifest, "format_version": 2}))
    with pytest.raises(DataError, match="format_version"):
        load_manifest(str(manifest_path))


def test_storage_uris_and_retries(s3_env: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert storage.join("s3://b/run/tokens", "../tokenizer/t.json") == "s3://b/run/tokenizer/t.json"
    assert storage.parent("s3://b/run/tokens/manifest.json") == "s3://b/run/tokens"
    create_bucket(s3_env, "scratch")
    storage.write_bytes("s3://scratch/a/b.bin", bytes(range(200)))
    assert storage.read_range("s3://scratch/a/b.bin", 10, 5) == bytes(range(10, 15))
    assert storage.size("s3://scratch/a/b.bin") == 200 and storage.list_dirs("s3://scratch") == ["a"]
    with pytest.raises(storage.NotFound):
        storage.read_bytes("s3://scratch/missing")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens: retried, then an error
    monkeypatch.setenv("GRISTMILL_S3_MAX_ATTEMPTS", "2")
    monkeypatch.setattr(storage, "_client", None)
    with pytest.raises(storage.StorageError, match="failed"):
        storage.read_bytes("s3://scratch/a/b.bin")


def test_storage_through_injected_s3_faults(
    s3_env: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """503 SlowDown, 500, dropped connections and responses cut mid-body: botocore retries the requests,
    a ranged or whole read cut after the headers is read again, and every byte comes back right."""
    create_bucket(s3_env, "faults")
    payload = np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes()
    (tmp_path / "up.bin").write_bytes(payload)
    with FaultyProxy(s3_env, rate=0.3, seed=5) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        monkeypatch.setattr(storage, "_client", None)
        storage.write_bytes("s3://faults/run/a.bin", payload)
        storage.upload_file(tmp_path / "up.bin", "s3://faults/run/sub/b.bin")
        for start in range(0, len(payload), 2_500):
            assert storage.read_range("s3://faults/run/a.bin", start, 1_000) == payload[start : start + 1_000]
        assert storage.read_bytes("s3://faults/run/sub/b.bin") == payload
        assert storage.size("s3://faults/run/a.bin") == len(payload)
        assert storage.list_files("s3://faults/run") == ["a.bin", "sub/b.bin"]
        assert storage.list_dirs("s3://faults/run") == ["sub"]
        storage.download_file("s3://faults/run/a.bin", tmp_path / "down.bin")
        assert (tmp_path / "down.bin").read_bytes() == payload
        storage.delete_tree("s3://faults/run")
        assert storage.list_files("s3://faults/run") == []
    assert all(proxy.counts[kind] > 0 for kind in KINDS), proxy.counts


# ---------------------------------------------------------------- torchrun runs


def test_torchrun_from_s3_writes_checkpoints_metrics_and_trace(reference: Path, token_run: Path) -> None:
    assert (reference / "latest").read_text().strip() == "step-000008"
    ckpt = reference / "step-000008"
    assert {p.name for p in ckpt.iterdir()} == {
        "model",
        "optimizer",
        "rng",
        "config.json",
        "train_state.json",
        "tokenizer.json",
    }
    assert (ckpt / "model" / ".metadata").is_file() and (ckpt / "optimizer" / ".metadata").is_file()
    assert sorted(p.name for p in (ckpt / "rng").iterdir()) == ["rank-00000.json", "rank-00001.json"]
    assert sorted(p.name for p in reference.glob("step-*")) == [f"step-00000{i}" for i in (2, 4, 6, 8)]
    assert not list(reference.glob(".tmp-*"))
    state = json.loads((ckpt / "train_state.json").read_text())
    assert state["step"] == 8 and state["world_size"] == 2 and state["tokens_seen"] == 8 * 8 * 64
    assert state["position"] == {"schedule": "epoch", "epoch": 0, "windows_consumed": 64}
    config = json.loads((ckpt / "config.json").read_text())
    assert config["model"]["d_model"] == 128 and config["tokenizer"]["eot_id"] == 0
    assert config["data"]["sources"][0]["manifest"].startswith("s3://")

    train = _metrics(reference, "train")
    assert [r["step"] for r in train] == list(range(1, 9))
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "mfu", "data_wait_s", "position"} <= set(train[0])
    assert all(0 < r["mfu"] < 1 and r["tokens_per_s"] > 0 for r in train)
    losses = [r["loss"] for r in train]
    assert losses[-1] < losses[0] - 0.3, losses
    val = _metrics(reference, "val")
    assert [r["step"] for r in val] == [4, 8] and val[1]["val_loss"] < val[0]["val_loss"]
    assert val[1]["val_ppl"] == pytest.approx(math.exp(val[1]["val_loss"]))

    # The trace: every step's global batch is the schedule's, split over the two ranks, and names the
    # rows each window was cut from.
    schedule = EpochSchedule(config["data"]["sources"][0]["train_windows"], 8, 0, Shuffle(**state["order"]))
    trace = load_trace(str(reference))
    assert sorted(trace) == list(range(1, 9))
    for step, records in trace.items():
        assert [r["rank"] for r in records] == [0, 1] and all(r["world_size"] == 2 for r in records)
        assert [w for r in records for w in r["windows"]] == schedule.global_batch_at(step - 1).tolist()
    source = WindowSource(load_manifest(str(token_run)), "train", 64)
    for record in trace[3]:
        for (_, window), pieces in zip(record["windows"], record["sources"], strict=True):
            assert pieces == [s.to_json() for s in source.window(window)[1]]


# Not part of the training install (docs/training.md): importing any of them from training/ is a bug.
BLOCKED = ("pipelines", "flows", "tokenizer", "prefect", "datatrove", "pydantic", "yaml")
ISOLATED = f"""
import sys

class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {BLOCKED!r}:
            raise ImportError(f"{{name}} is not part of the training install")

sys.meta_path.insert(0, Blocked())
from training.train import main

code = main(sys.argv[1:])
assert not {{m.partition(".")[0] for m in sys.modules}} & set({BLOCKED!r})
sys.exit(code)
"""


def test_training_runs_without_the_pipeline_flows_prefect_or_datatrove(
    token_run: Path, tmp_path: Path
) -> None:
    output = tmp_path / "out"
    args = [*_train_args(str(token_run), output, max_steps=2, deterministic=False), "--loader-workers", "1"]
    _ok(_run([sys.executable, "-c", ISOLATED, *args]))
    assert (output / "latest").read_text().strip() == "step-000002"
    assert [r["step"] for r in _metrics(output, "train")] == [1, 2]


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def test_sigkill_then_resume_matches_an_uninterrupted_run_bitwise(
    reference: Path, s3_server: str, s3_data: str, tmp_path: Path
) -> None:
    output = tmp_path / "out"
    args = [*_torchrun(2), *_train_args(s3_data, output)]
    log = (tmp_path / "killed.log").open("w")
    proc = subprocess.Popen(
        args, cwd=REPO, env=_env(s3_server), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    metrics = output / "metrics.jsonl"
    deadline = time.monotonic() + 180
    try:
        while True:  # kill every process of the run (agent and both ranks) once step 5 is logged
            steps = (
                [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
                if metrics.is_file()
                else []
            )
            if steps and max(steps) >= 5:
                break
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "killed.log").read_text()
            time.sleep(0.01)
        victims = [proc.pid, *_descendants(proc.pid)]
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
        log.close()
    assert proc.returncode == -signal.SIGKILL and len(victims) >= 3
    latest = (output / "latest").read_text().strip()
    assert latest in ("step-000004", "step-000006"), latest  # killed after a checkpoint, before the end
    logged = max(r["step"] for r in _metrics(output, "train"))

    resumed = _run([*args, "--resume"], s3_server)
    _ok(resumed)
    assert f"start step {int(latest[-6:])} of {MAX_STEPS}" in resumed.stdout
    ref, got = _metrics(reference, "train"), _metrics(output, "train")
    assert [r["step"] for r in got] == list(range(1, MAX_STEPS + 1))
    assert [r["loss"] for r in got] == [r["loss"] for r in ref]  # bitwise: same floats
    assert [r["grad_norm"] for r in got] == [r["grad_norm"] for r in ref]
    assert [r["val_loss"] for r in _metrics(output, "val")] == [
        r["val_loss"] for r in _metrics(reference, "val")
    ]
    assert _step_windows(output) == _step_windows(reference)
    assert logged >= 5


def _retarget_latest(src: Path, dest: str | Path, step: int) -> None:
    """Copy a run's output and make checkpoint ``step`` the latest (later ones stay until overwritten)."""
    shutil.copytree(src, dest)
    (Path(dest) / "latest").write_text(f"step-{step:06d}\n")


def test_resume_on_one_process_consumes_exactly_the_remaining_windows(
    reference: Path, s3_data: str, s3_env: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "out"
    _retarget_latest(reference, output, 4)
    assert train_main([*_train_args(s3_data, output), "--resume"]) == 0  # in this process: no torchrun
    assert "start step 4 of 8" in capsys.readouterr().out
    # No window repeated or skipped: steps 1-4 from the 2-rank run, 5-8 from the 1-process run, and
    # together exactly the uninterrupted run's windows.
    trace = load_trace(str(output))
    assert {r["world_size"] for s in (1, 2, 3, 4) for r in trace[s]} == {2}
    assert {r["world_size"] for s in (5, 6, 7, 8) for r in trace[s]} == {1}
    windows = _step_windows(output)
    assert windows == _step_windows(reference)
    flat = [tuple(w) for s in sorted(windows) for w in windows[s]]
    assert len(flat) == len(set(flat)) == MAX_STEPS * 8
    ref, got = _metrics(reference, "train"), _metrics(output, "train")
    assert [r["loss"] for r in got[:4]] == [r["loss"] for r in ref[:4]]
    for a, b in zip(ref[4:], got[4:], strict=True):  # other reduction order: equal up to rounding
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
    state = json.loads((output / "step-000008" / "train_state.json").read_text())
    assert state["world_size"] == 1 and state["position"]["windows_consumed"] == 64


def test_fsdp2_on_s3_output_resumes_on_two_ranks_and_generates(
    reference: Path, s3_server: str, s3_data: str, s3_env: str, tmp_path: Path
) -> None:
    output = f"s3://{BUCKET}/fsdp-out"
    args = [*_train_args(s3_data, output, deterministic=False), "--parallel", "fsdp"]
    args += ["--staging-dir", str(tmp_path / "staging")]
    _ok(_run([*_torchrun(1), *args, "--stop-at", "4"], s3_server))
    store = CheckpointStore(output)
    assert store.latest() == "step-000004"
    assert store.step_names() == ["step-000002", "step-000004"]
    storage.write_bytes(f"{output}/latest", b"step-000002\n")
    resumed = _run([*_torchrun(2), *args, "--stop-at", "6", "--resume"], s3_server)
    _ok(resumed)
    assert "start step 2 of 8" in resumed.stdout and "2 rank(s)" in resumed.stdout
    assert (
        store.latest() == "step-000006" and "step-000004" in store.step_names()
    )  # rewritten by the 2-rank run
    files = storage.list_files(f"{output}/step-000006/model")
    assert {".metadata", "__0_0.distcp", "__1_0.distcp"} <= set(files)  # sharded over two ranks
    # 1 rank for steps 1-2, then 2 ranks: the same windows as the uninterrupted DDP run, losses equal
    # up to the different reduction order.
    windows, ref_windows = _step_windows(output), _step_windows(reference)
    assert windows == {s: ref_windows[s] for s in range(1, 7)}
    got, ref = _metrics(output, "train"), _metrics(reference, "train")
    assert [r["step"] for r in got] == list(range(1, 7))
    for a, b in zip(ref, got, strict=False):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
    loaded = load_checkpoint(output)
    assert loaded.path.endswith("step-000006")
    prompt = [loaded.eot_id, *loaded.tokenizer.encode("KING:", add_special_tokens=False).ids]
    assert 0 < len(list(generate(loaded.model, prompt, 8, temperature=0.0))) <= 8


def test_mixing_two_manifests_follows_the_weights(token_run: Path, tmp_path: Path) -> None:
    other = build_token_run(
        tmp_path / "other",
        TEXT.read_text(encoding="utf-8")[:400_000],
        lines_per_doc=60,
        train_shards=1,
        row_group_rows=8,
    )
    shutil.copy(token_run.parent.parent / "tokenizer" / "tokenizer.json", other.parent.parent / "tokenizer")
    manifest = json.loads(other.read_text())
    manifest["tokenizer"] = json.loads(token_run.read_text())["tokenizer"]
    other.write_text(json.dumps(manifest))
    output = tmp_path / "out"
    args = [*_train_args([str(token_run), str(other)], output, 4, False), "--data-weights", "3", "1"]
    assert train_main(args) == 0
    windows = _step_windows(output)
    counts = Counter(k for s in windows for k, _ in windows[s])
    assert counts == {0: 24, 1: 8}
    config = json.loads((output / "step-000004" / "config.json").read_text())
    assert [s["weight"] for s in config["data"]["sources"]] == ["3", "1"]
    assert {"val_loss_by_source"} <= set(_metrics(output, "val")[0])
    # Other weights are another data order: resuming with them is refused.
    args[args.index("--data-weights") + 1 :] = ["1", "1"]
    assert train_main([*args, "--max-steps", "6", "--resume"]) == 1


def test_refuses_to_overwrite_checkpoints(
    reference: Path, token_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert train_main(_train_args(str(token_run), reference)) == 1
    assert "pass --resume" in capsys.readouterr().err
    assert (reference / "latest").read_text().strip() == "step-000008"


def test_refuses_to_resume_another_checkpoint_format_or_data_order(
    reference: Path, token_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "out"
    _retarget_latest(reference, output, 4)
    args = [*_train_args(str(token_run), output, deterministic=False), "--resume"]
    assert train_main([*args, "--data-lanes", "4"]) == 1
    assert "cannot resume: checkpoint used --data-lanes" in capsys.readouterr().err
    config = output / "step-000004" / "config.json"
    config.write_text(config.read_text().replace('"format_version": 3', '"format_version": 2'))
    assert train_main(args) == 1
    assert "format version 2" in capsys.readouterr().err
    assert (output / "latest").read_text().strip() == "step-000004"


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_nonfinite_loss_stops_and_keeps_the_last_checkpoint(
    reference: Path, token_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch.distributed.checkpoint as dcp

    output = tmp_path / "out"
    _retarget_latest(reference, output, 6)
    weights = output / "step-000006" / "model"  # a NaN in the final norm poisons the next step's loss
    state = Transformer(
        ModelConfig.from_dict(json.loads((output / "step-000006" / "config.json").read_text())["model"])
    ).state_dict()
    dcp.load(state, checkpoint_id=weights, no_dist=True)
    state["norm.weight"][0] = float("nan")
    shutil.rmtree(weights)
    dcp.save(state, checkpoint_id=weights, no_dist=True)
    assert train_main([*_train_args(str(token_run), output, deterministic=False), "--resume"]) == 1
    err = capsys.readouterr().err
    assert "non-finite loss at step 7" in err and "step-000006" in err, err
    assert (output / "latest").read_text().strip() == "step-000006"
    assert sorted(p.name for p in output.glob("step-*")) == [f"step-00000{i}" for i in (2, 4, 6, 8)]
    assert not list(output.glob(".tmp-*"))
    assert max(r["step"] for r in _metrics(output, "train")) == 6  # the failed step is not logged as trained


# ---------------------------------------------------------------- generation and export


def test_generate_cli_prints_text(reference: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--checkpoint", str(reference), "--prompt", "ROMEO:", "--max-new-tokens", "30", "--seed", "1"]
    assert generate_main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("ROMEO:") and len(out.strip()) > len("ROMEO:")
    assert generate_main([*argv[:1], str(reference / "missing"), *argv[2:]]) == 1
    assert "no checkpoint found" in capsys.readouterr().err


def test_generate_function_and_utf8_streaming(reference: Path) -> None:
    loaded = load_checkpoint(str(reference / "step-000008"))
    prompt = [loaded.eot_id, *loaded.tokenizer.encode("KING:", add_special_tokens=False).ids]
    greedy = [list(generate(loaded.model, prompt, 12, temperature=0.0)) for _ in range(2)]
    assert greedy[0] == greedy[1] and 0 < len(greedy[0]) <= 12

    def sampled(seed: int) -> list[int]:
        gen = torch.Generator().manual_seed(seed)
        return list(generate(loaded.model, prompt, 20, 0.8, 50, 0.9, loaded.eot_id, gen))

    assert sampled(3) == sampled(3)
    first = greedy[0][0]  # a sequence that ends in end-of-text stops before it
    assert list(generate(loaded.model, prompt, 5, temperature=0.0, eot_id=first)) == []

    text = "héllo wörld, 你好 🙂!"
    ids = loaded.tokenizer.encode(text, add_special_tokens=False).ids
    assert any("\ufffd" in loaded.tokenizer.decode([i]) for i in ids)  # some tokens split characters
    pieces = list(stream_text(loaded.tokenizer, ids))
    assert "".join(pieces) == text
    assert not any("\ufffd" in piece for piece in pieces)


@pytest.mark.parametrize("variant", ["trained", "gqa_untied"])
def test_export_to_hugging_face_llama_matches_logits(
    variant: str, reference: Path, token_run: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.export import export_checkpoint, export_model

    loaded = load_checkpoint(str(reference))
    if variant == "trained":
        model = loaded.model
        out = export_checkpoint(str(reference), tmp_path / "hf")
    else:
        torch.manual_seed(0)
        cfg = loaded.model.config.with_overrides(n_kv_heads=2, tie_embeddings=False)
        model = Transformer(cfg).eval()
        out = export_model(model, loaded.tokenizer, loaded.eot_id, tmp_path / "hf")
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(hf).__name__ == "LlamaForCausalLM"
    assert hf.config.tie_word_embeddings == model.config.tie_embeddings
    ids = torch.randint(0, model.config.vocab_size, (2, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, _ = model(ids)
        theirs = hf(ids).logits
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)
    tokenizer = AutoTokenizer.from_pretrained(out)
    text = "ROMEO: wherefore art thou"
    assert tokenizer(text, add_special_tokens=False).input_ids == loaded.tokenizer.encode(text).ids
    assert tokenizer.eos_token_id == loaded.eot_id
    # A document of the shards: the exported tokenizer gives the ids training read, end-of-text first.
    import pyarrow.parquet as pq

    docs = pq.read_table(token_run.parent / "train-00000.parquet").column("input_ids").to_pylist()
    stream, start = expected_stream(token_run, "train"), sum(len(d) + 1 for d in docs[:3])
    document, ids = loaded.tokenizer.decode(docs[3]), docs[3]
    assert tokenizer(document).input_ids == [loaded.eot_id, *ids] == stream[start - 1 : start + len(ids)]
