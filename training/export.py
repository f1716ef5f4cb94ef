"""Export a checkpoint to the Hugging Face Llama format: ``python -m training.export``.

Writes ``model.safetensors``, ``config.json`` (LlamaForCausalLM), ``generation_config.json`` and the
tokenizer (tokenizer.json + tokenizer_config.json) so that ``transformers`` loads the directory with
``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained``. The weights map one to
one: our rotary embedding already uses the rotate-half layout of HF Llama (the two halves of each
head dimension pair up, ``cos``/``sin`` repeated), so q/k projections need no permutation; a tied
LM head becomes ``tie_word_embeddings``. safetensors and transformers are imported only here.

Documents were preceded by the end-of-text token in training, so it is also the BOS token of the
export: the exported tokenizer prepends it (``add_special_tokens=True``, the default), giving a
document the ids training saw, and generation stops at it. Embedding and head rows past the
vocabulary (padding, training/model.py) are left out.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, processors

from training.chat import CHAT_TEMPLATE, has_chat_tokens
from training.config import add_export_arguments
from training.model import Transformer, ntk_theta

_LAYER_MAP = {
    "attn.wq": "self_attn.q_proj",
    "attn.wk": "self_attn.k_proj",
    "attn.wv": "self_attn.v_proj",
    "attn.wo": "self_attn.o_proj",
    "mlp.w1": "mlp.gate_proj",
    "mlp.w3": "mlp.up_proj",
    "mlp.w2": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "mlp_norm": "post_attention_layernorm",
}


def hf_state_dict(model: Transformer, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Our parameters under HF Llama names (no ``lm_head.weight`` when the embedding is tied), the
    embedding and head cut to the vocabulary."""
    vocab = model.config.vocab_size
    out = {"model.embed_tokens.weight": model.tok_emb.weight[:vocab], "model.norm.weight": model.norm.weight}
    if not model.config.tie_embeddings:
        out["lm_head.weight"] = model.lm_head.weight[:vocab]
    for i, block in enumerate(model.blocks):
        for ours, theirs in _LAYER_MAP.items():
            module = block.get_submodule(ours)
            out[f"model.layers.{i}.{theirs}.weight"] = module.weight
    return {k: v.detach().to(dtype).contiguous().clone() for k, v in out.items()}


def hf_rope(model: Transformer) -> tuple[float, dict[str, Any] | None]:
    """(rope_theta, rope_scaling) of the HF config giving our rotary angles: linear and YaRN map to
    HF's ``linear`` and ``yarn`` types; NTK-aware scaling is a larger base (``rope_theta``)."""
    c = model.config
    scaling = c.rope_scaling
    if scaling is None or scaling["type"] == "ntk":
        return ntk_theta(c), None
    if scaling["type"] == "linear":
        return c.rope_theta, {"rope_type": "linear", "factor": scaling["factor"]}
    return c.rope_theta, {
        "rope_type": "yarn",
        "factor": scaling["factor"],
        "original_max_position_embeddings": scaling["original_max_seq_len"],
        "beta_fast": 32.0,
        "beta_slow": 1.0,
        "truncate": True,
    }


def hf_config(model: Transformer, eot_id: int, pad_id: int | None, dtype: torch.dtype) -> Any:
    from transformers import LlamaConfig

    c = model.config
    rope_theta, rope_scaling = hf_rope(model)
    return LlamaConfig(
        architectures=["LlamaForCausalLM"],
        vocab_size=c.vocab_size,
        hidden_size=c.d_model,
        intermediate_size=c.ffn_hidden,
        num_hidden_layers=c.n_layers,
        num_attention_heads=c.n_heads,
        num_key_value_heads=c.n_kv_heads,
        head_dim=c.head_dim,
        hidden_act="silu",
        max_position_embeddings=c.max_seq_len,
        rms_norm_eps=c.norm_eps,
        rope_theta=rope_theta,
        rope_scaling=rope_scaling,
        tie_word_embeddings=c.tie_embeddings,
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=eot_id,
        eos_token_id=eot_id,
        pad_token_id=pad_id,
        torch_dtype=str(dtype).removeprefix("torch."),
    )


def export_model(
    model: Transformer,
    tokenizer: Tokenizer,
    eot_id: int,
    output: str | Path,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write ``model`` and ``tokenizer`` as a Hugging Face Llama directory."""
    from safetensors.torch import save_file
    from transformers import GenerationConfig, PreTrainedTokenizerFast

    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    eot = tokenizer.id_to_token(eot_id)
    pad_token = "<|pad|>" if tokenizer.token_to_id("<|pad|>") is not None else None
    pad_id = tokenizer.token_to_id(pad_token) if pad_token else None
    save_file(hf_state_dict(model, dtype), str(out / "model.safetensors"), metadata={"format": "pt"})
    tokenizer = eot_first(tokenizer, eot_id)
    hf_config(model, eot_id, pad_id, dtype).save_pretrained(out)
    GenerationConfig(bos_token_id=eot_id, eos_token_id=eot_id, pad_token_id=pad_id).save_pretrained(out)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=eot,
        eos_token=eot,
        pad_token=pad_token,
        model_max_length=model.config.max_seq_len,
        chat_template=CHAT_TEMPLATE if has_chat_tokens(tokenizer) else None,
    )
    fast.save_pretrained(out)
    return out


def quantize_export(directory: str | Path, mode: str) -> Path:
    """Rewrite the Hugging Face model in ``directory`` with weight-only quantized weights:
    transformers' ``TorchAoConfig`` quantizes it on load and ``save_pretrained`` stores the torchao
    tensors in model.safetensors, with the ``quantization_config`` in config.json, so
    ``from_pretrained`` loads it quantized."""
    from transformers import AutoModelForCausalLM, TorchAoConfig

    from training.quantize import serializable_config

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(
        directory, quantization_config=TorchAoConfig(serializable_config(mode, torch.device(device)))
    )
    model.save_pretrained(directory)
    return Path(directory)


def eot_first(tokenizer: Tokenizer, eot_id: int) -> Tokenizer:
    """A copy of ``tokenizer`` that puts end-of-text before every encoded text (and pair), as the
    training stream has it before every document."""
    copy = Tokenizer.from_str(tokenizer.to_str())
    eot = tokenizer.id_to_token(eot_id)
    copy.post_processor = processors.TemplateProcessing(
        single=f"{eot} $A", pair=f"{eot} $A {eot} $B:1", special_tokens=[(eot, eot_id)]
    )
    return copy


def export_checkpoint(
    checkpoint: str,
    output: str | Path,
    dtype: torch.dtype = torch.float32,
    rope_scaling: str | None = None,
    rope_factor: float | None = None,
    quantize: str | None = None,
) -> Path:
    """Export a training checkpoint (or a training output's latest) to ``output``, with its rotary
    scaling (or ``rope_scaling`` by ``rope_factor``) and, with ``quantize``, int8/int4 weights."""
    from training.generate import load_checkpoint

    loaded = load_checkpoint(checkpoint, "cpu", rope_scaling, rope_factor)
    out = export_model(loaded.model, loaded.tokenizer, loaded.eot_id, output, dtype)
    return quantize_export(out, quantize) if quantize else out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.export", description=__doc__.split("\n\n")[0])
    return run(add_export_arguments(p).parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Export ``args.checkpoint`` to ``args.output`` in ``args.dtype``."""
    path = export_checkpoint(
        args.checkpoint,
        args.output,
        getattr(torch, args.dtype),
        args.rope_scaling,
        args.rope_factor,
        args.quantize,
    )
    print(f"exported {args.checkpoint} to {path}{f' ({args.quantize} weights)' if args.quantize else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
