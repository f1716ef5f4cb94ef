"""The GPU hot path, checked on the CPU: chunked cross-entropy, grouped-query attention through SDPA,
meta-device initialization, the padded vocabulary and the peak FLOP/s table (training/model.py,
training/mfu.py). None of these needs a GPU to be right; their speed is for bench_train.py on one."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from training.mfu import GPU_PEAKS, gpu_peak, matmul_params
from training.model import (
    PRESETS,
    Attention,
    ModelConfig,
    Transformer,
    apply_rotary,
    build_model,
    linear_cross_entropy,
)


def _config(**overrides: object) -> ModelConfig:
    base = {"vocab_size": 97, "d_model": 32, "n_layers": 2, "n_heads": 4, "max_seq_len": 32}
    return ModelConfig(**{**base, **overrides})


def test_chunked_cross_entropy_equals_the_full_one() -> None:
    torch.manual_seed(0)
    n, d, padded, vocab = 300, 32, 128, 100
    hidden = torch.randn(n, d, requires_grad=True)
    weight = torch.randn(padded, d, requires_grad=True)
    targets = torch.randint(0, vocab, (n,))
    targets[::7] = -100  # ignored positions

    loss = linear_cross_entropy(hidden, weight, targets, vocab, chunk_rows=37)  # 9 chunks, the last short
    loss.backward()
    chunked = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    full = F.cross_entropy((hidden @ weight.t())[:, :vocab], targets)  # the padded columns left out
    full.backward()
    torch.testing.assert_close(loss, full, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(chunked[0], hidden.grad, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(chunked[1], weight.grad, atol=1e-6, rtol=1e-5)
    assert not chunked[1][vocab:].any()  # padded rows get no gradient
    with torch.no_grad():
        torch.testing.assert_close(linear_cross_entropy(hidden, weight, targets, vocab, 50), full)

    # Scaled like any loss (gradient accumulation), and under bf16 autocast close to the fp32 loss.
    hidden.grad = weight.grad = None
    (linear_cross_entropy(hidden, weight, targets, vocab, 64) / 4).backward()
    torch.testing.assert_close(hidden.grad * 4, chunked[0], atol=1e-6, rtol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = linear_cross_entropy(hidden, weight, targets, vocab, 64)
    assert low.dtype == torch.float32 and abs(low.item() - full.item()) < 0.05 * full.item()


def test_model_loss_and_gradients_equal_cross_entropy_of_its_logits() -> None:
    torch.manual_seed(0)
    model = Transformer(_config(n_kv_heads=2, tie_embeddings=True))
    idx, targets = torch.randint(0, 97, (3, 16)), torch.randint(0, 97, (3, 16))
    _, loss = model(idx, targets)
    loss.backward()
    ours = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    logits, _ = model(idx)
    reference = F.cross_entropy(logits.reshape(-1, 97), targets.reshape(-1))
    reference.backward()
    torch.testing.assert_close(loss, reference, atol=1e-6, rtol=1e-6)
    for name, param in model.named_parameters():
        torch.testing.assert_close(ours[name], param.grad, atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("n_kv_heads", [1, 2])
def test_grouped_query_attention_equals_repeated_keys_and_values(n_kv_heads: int) -> None:
    torch.manual_seed(0)
    config = _config(n_kv_heads=n_kv_heads)
    attention = Attention(config, 0).eval()
    model = Transformer(config)
    x = torch.randn(2, 12, 32)
    cos, sin = model.rotary(0, 12)

    def repeated(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, t, _ = x.shape
        q = attention.wq(x).view(b, t, 4, 8).transpose(1, 2)
        k = attention.wk(x).view(b, t, n_kv_heads, 8).transpose(1, 2)
        v = attention.wv(x).view(b, t, n_kv_heads, 8).transpose(1, 2)
        q, k = apply_rotary(q, cos[:t], sin[:t]), apply_rotary(k, cos[:t], sin[:t])
        k, v = k.repeat_interleave(4 // n_kv_heads, 1), v.repeat_interleave(4 // n_kv_heads, 1)
        causal = torch.ones(t, t, dtype=torch.bool).tril() if mask is None else mask
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=causal)
        return attention.wo(y.transpose(1, 2).reshape(b, t, 32))

    with torch.no_grad():
        torch.testing.assert_close(attention(x, cos, sin), repeated(x, None), atol=1e-6, rtol=1e-5)
        cache = model.new_kv_cache(2)  # the masked path: a chunk after cached positions
        attention(x[:, :5], cos[:5], sin[:5], cache, 0)
        chunk = attention(x[:, 5:], cos[5:12], sin[5:12], cache, 5)
    torch.testing.assert_close(chunk, repeated(x, None)[:, 5:], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("tied", [True, False])
def test_meta_device_init_equals_the_plain_init(tied: bool) -> None:
    config = _config(n_kv_heads=2, tie_embeddings=tied)
    plain = Transformer(config)
    plain.init_weights(torch.Generator().manual_seed(3))
    built = build_model(config, "cpu", torch.Generator().manual_seed(3))
    assert not any(t.is_meta for t in [*built.parameters(), *built.buffers()])
    assert (built.lm_head.weight is built.tok_emb.weight) == tied
    expected = {**plain.state_dict(), "cos": plain.rotary.cos, "sin": plain.rotary.sin}
    got = {**built.state_dict(), "cos": built.rotary.cos, "sin": built.rotary.sin}
    assert expected.keys() == got.keys()
    for name, tensor in expected.items():
        assert torch.equal(tensor, got[name]), name
    assert built.num_parameters() == plain.num_parameters()
    assert abs(built.tok_emb.weight.std().item() - 0.02) < 3e-3


def test_vocabulary_is_padded_to_a_multiple_of_64() -> None:
    config = PRESETS["gpt2-124m"].with_overrides(vocab_size=50257)
    assert config.padded_vocab_size == 50304
    with torch.device("meta"):
        model = Transformer(config)
    assert model.lm_head.weight.shape == (50304, 768)
    assert matmul_params(config) - matmul_params(config.with_overrides(vocab_multiple=1)) == 47 * 768
    old = {k: v for k, v in config.to_dict().items() if k != "vocab_multiple"}
    assert ModelConfig.from_dict(old).padded_vocab_size == 50257  # configs saved without the key


def test_peak_table_matches_device_names_exactly() -> None:
    assert gpu_peak("NVIDIA L40", "bf16") == pytest.approx(181.05e12)  # not the L4's
    assert gpu_peak("NVIDIA L4", "bf16") == 121e12
    assert gpu_peak("NVIDIA L40S", "fp32") == 183e12
    assert gpu_peak("NVIDIA H100 80GB HBM3", "bf16") == pytest.approx(989.4e12)
    assert gpu_peak("NVIDIA H100 NVL", "bf16") == gpu_peak("NVIDIA H200 NVL", "bf16") == 835.5e12
    assert gpu_peak("NVIDIA H100 PCIe", "bf16") == gpu_peak("NVIDIA H800 PCIe", "bf16") == 756e12
    assert gpu_peak("NVIDIA H200", "bf16") == gpu_peak("NVIDIA H800", "bf16") == pytest.approx(989.4e12)
    assert gpu_peak("NVIDIA B200", "bf16") == 2250e12
    assert gpu_peak("AMD Instinct MI300X", "bf16") == pytest.approx(1307.4e12)
    assert gpu_peak("NVIDIA  A100-SXM4-80GB ", "fp32") == 156e12  # whitespace does not matter
    for unknown in ("NVIDIA H100 NVL 2", "NVIDIA H10", "Tesla T4", ""):
        assert gpu_peak(unknown, "bf16") is None
    assert all(bf16 >= fp32 for bf16, fp32 in GPU_PEAKS.values())
