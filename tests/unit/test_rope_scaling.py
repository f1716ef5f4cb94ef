"""Longer context by rotary scaling (training/model.py): linear position interpolation, NTK-aware and
YaRN frequencies, the Hugging Face export with the matching rope parameters (logits compared with
transformers), generation beyond the trained context, and a short long-context fine-tune from a
checkpoint pretrained at 128 tokens that lowers the loss at 512 below extrapolation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from pretrained import shared_pretrained, validation_texts
from token_shards import TEXT

from training.evaluate import evaluate_checkpoint
from training.generate import load_checkpoint
from training.generate import main as generate_main
from training.model import ModelConfig, Transformer, make_rope_scaling, rope_attention_factor, rope_inv_freq
from training.train import main as train_main


def _config(scaling: dict | None) -> ModelConfig:
    return ModelConfig(vocab_size=97, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=128,
                       vocab_multiple=1, rope_scaling=scaling)  # fmt: skip


def test_scaled_frequencies() -> None:
    plain = rope_inv_freq(_config(None))
    linear = rope_inv_freq(_config({"type": "linear", "factor": 4}))
    torch.testing.assert_close(linear, plain / 4)
    ntk = rope_inv_freq(_config({"type": "ntk", "factor": 4}))
    assert ntk[0] == plain[0] and (ntk[1:] < plain[1:]).all()  # a larger base: low frequencies slow down most
    yarn_cfg = _config({"type": "yarn", "factor": 4, "original_max_seq_len": 32})
    yarn = rope_inv_freq(yarn_cfg)
    assert yarn[0] == plain[0]  # the fastest rotation (many turns in 32 positions) is kept
    torch.testing.assert_close(yarn[2:], plain[2:] / 4)  # the slow ones (HF's correction range) interpolated
    assert rope_attention_factor(yarn_cfg) == pytest.approx(0.1 * math.log(4) + 1)
    with pytest.raises(ValueError, match="original_max_seq_len"):
        make_rope_scaling("yarn", 4)
    with pytest.raises(ValueError, match="one of"):
        make_rope_scaling("dynamic", 4)


@pytest.mark.parametrize(
    "scaling",
    [
        {"type": "linear", "factor": 4},
        {"type": "ntk", "factor": 4},
        {"type": "yarn", "factor": 4, "original_max_seq_len": 32},
    ],
    ids=lambda s: s["type"],
)
def test_export_matches_transformers_with_scaling(scaling: dict, tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models
    from transformers import AutoModelForCausalLM

    from training.export import export_model

    torch.manual_seed(0)
    model = Transformer(_config(scaling)).eval()
    tokenizer = Tokenizer(
        models.WordLevel({f"t{i}": i for i in range(97)} | {"<|endoftext|>": 0}, unk_token="t1")
    )
    out = export_model(model, tokenizer, 0, tmp_path / "hf")
    rope = json.loads((out / "config.json").read_text())["rope_parameters"]
    assert rope["rope_type"] == {"ntk": "default"}.get(scaling["type"], scaling["type"])
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.randint(0, 97, (2, 128), generator=torch.Generator().manual_seed(0))
    unscaled = Transformer(_config(None)).eval()
    unscaled.load_state_dict(model.state_dict())
    with torch.no_grad():
        ours, _ = model(ids)
        theirs = hf(ids).logits
        plain, _ = unscaled(ids)
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)
    assert (plain - ours).abs().max() > 1e-3  # 10x the tolerance: scaling changes the logits


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not TEXT.is_file():
        pytest.skip(f"{TEXT} is not available")
    return shared_pretrained(tmp_path_factory.getbasetemp())


def test_long_context_fine_tune_beats_extrapolation(
    pretrained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = pretrained.parent
    texts = validation_texts(root)
    extrapolated = evaluate_checkpoint(str(pretrained), texts, 512)
    assert extrapolated["seq_len"] == 512
    fine_tuned = root / "long"
    args = [
        "--data", str(root / "run" / "tokens" / "manifest.json"), "--output", str(fine_tuned),
        "--resume-from", str(pretrained), "--seq-len", "512", "--rope-scaling", "yarn", "--rope-factor", "4",
        "--batch-size", "4", "--max-steps", "10", "--lr", "1e-3", "--warmup-steps", "2",
        "--eval-every", "0", "--save-every", "0", "--no-trace", "--log-every", "10",
    ]  # fmt: skip
    assert train_main(args) == 0
    loaded = load_checkpoint(fine_tuned)
    assert loaded.model.config.rope_scaling == {"type": "yarn", "factor": 4.0, "original_max_seq_len": 128}
    assert loaded.model.config.max_seq_len == 512 and loaded.trained_seq_len == 128
    interpolated = evaluate_checkpoint(str(fine_tuned), texts, 512)
    assert interpolated["tokens"] == extrapolated["tokens"]
    assert interpolated["loss"] < extrapolated["loss"]
    capsys.readouterr()
    prompt = ["--checkpoint", str(pretrained), "--prompt", "ROMEO:", "--max-new-tokens", "5", "--seed", "0"]
    assert generate_main([*prompt, "--rope-scaling", "linear", "--rope-factor", "4"]) == 0
    assert capsys.readouterr().out.startswith("ROMEO:")
    assert load_checkpoint(pretrained, rope_scaling="linear", rope_factor=4).model.config.max_seq_len == 512
