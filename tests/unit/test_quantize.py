"""Weight-only int8/int4 quantization with torchao (training/quantize.py): weight memory and held-out
loss against the unquantized model, generation and the Hugging Face export of quantized weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from pretrained import held_out_texts, shared_pretrained
from token_shards import TEXT

from training.evaluate import evaluate_texts
from training.generate import load_checkpoint
from training.generate import main as generate_main
from training.quantize import quantize_model, weight_bytes


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not TEXT.is_file():
        pytest.skip(f"{TEXT} is not available")
    return shared_pretrained(tmp_path_factory.getbasetemp())


def test_quantized_weights_are_smaller_and_lose_little(checkpoint: Path) -> None:
    texts = held_out_texts(2, 1500)
    reference = load_checkpoint(checkpoint)
    n_params = reference.model.num_parameters()
    assert weight_bytes(reference.model) == 4 * n_params  # fp32, the tied embedding counted once
    bf16_bytes = 2 * n_params
    base = evaluate_texts(reference.model, reference.tokenizer, texts, 64, "cpu")["loss"]
    results = {}
    for mode in ("int8", "int4"):
        loaded = load_checkpoint(checkpoint, quantize=mode)
        model = loaded.model
        assert model.lm_head.weight is model.tok_emb.weight  # still one tensor for both
        assert type(model.blocks[0].attn.wq.weight).__name__ != "Parameter"  # a torchao tensor
        loss = evaluate_texts(model, loaded.tokenizer, texts, 64, "cpu")["loss"]
        results[mode] = (weight_bytes(model), loss)
    int8_bytes, int8_loss = results["int8"]
    int4_bytes, int4_loss = results["int4"]
    assert int8_bytes < 0.55 * bf16_bytes  # the -45% target, against 16-bit weights
    assert int4_bytes < 0.75 * int8_bytes
    assert abs(int8_loss - base) / base < 0.01
    assert abs(int4_loss - base) / base < 0.05


def test_quantized_generation_and_bad_mode(checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--checkpoint", str(checkpoint), "--prompt", "ROMEO:", "--max-new-tokens", "12", "--seed", "0"]
    assert generate_main([*args, "--quantize", "int8", "--temperature", "0"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ROMEO:") and len(out) > len("ROMEO:\n")
    model = load_checkpoint(checkpoint).model
    with pytest.raises(ValueError, match="int3"):
        quantize_model(model, "int3")


def test_quantized_export_loads_quantized_in_transformers(checkpoint: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from training.export import main as export_main

    assert export_main(["--checkpoint", str(checkpoint), "--output", str(tmp_path / "fp32")]) == 0
    assert (
        export_main(["--checkpoint", str(checkpoint), "--output", str(tmp_path / "q"), "--quantize", "int8"])
        == 0
    )
    fp32_size = (tmp_path / "fp32" / "model.safetensors").stat().st_size
    assert (tmp_path / "q" / "model.safetensors").stat().st_size < 0.5 * fp32_size
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "q").eval()
    assert (
        json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]["quant_method"]
        == "torchao"
    )
    assert type(hf.model.layers[0].self_attn.q_proj.weight).__name__ == "Int8Tensor"
    ours = load_checkpoint(checkpoint).model
    ids = torch.randint(0, ours.config.vocab_size, (1, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference, _ = ours(ids)
        theirs = hf(ids).logits
    assert (theirs - reference).abs().max() < 0.05 * reference.abs().max()
    assert (theirs.argmax(-1) == reference.argmax(-1)).float().mean() > 0.9
