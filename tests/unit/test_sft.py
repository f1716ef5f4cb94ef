"""Instruction tuning (training/chat.py, sft_data.py, sft.py): the chat template against transformers'
apply_chat_template, loss only on the assistant's tokens, packing without attention across examples,
the grown vocabulary, and a run that validates, quarantines bad records, resumes exactly and chats.

Data: exchanges of tiny Shakespeare's dialogue (tests/support/dialogue.py), built mechanically."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from dialogue import records
from pretrained import shared_pretrained
from token_shards import TEXT
from tokenizers import Tokenizer

from training.chat import CHAT_TOKENS, END, add_chat_tokens, encode_chat, messages_of
from training.generate import load_checkpoint
from training.generate import main as generate_main
from training.sft import grow_vocabulary
from training.sft import main as sft_main
from training.sft_data import pack, read_examples

CONVERSATIONS = [
    [{"role": "user", "content": "Who is there?"}, {"role": "assistant", "content": " Nay, answer me."}],
    [
        {"role": "system", "content": "You are Hamlet.\n"},
        {"role": "user", "content": "  My lord,\n\nthe king."},
        {"role": "assistant", "content": "The king? 'tis\tso"},
        {"role": "user", "content": "Ay."},
        {"role": "assistant", "content": ""},
    ],
]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not TEXT.is_file():
        pytest.skip(f"{TEXT} is not available")
    return shared_pretrained(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Dialogue records and three bad lines (not JSON, not a conversation, no assistant content)."""
    lines = [json.dumps(r) for r in records(TEXT.read_text(encoding="utf-8"), limit=240, max_chars=200)]
    lines[5:5] = ["{not json", json.dumps({"text": "no roles"}), json.dumps({"prompt": "hi", "response": ""})]
    path = tmp_path_factory.mktemp("sft-data") / "dialogue.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _tokenizer(pretrained: Path) -> Tokenizer:
    tokenizer = load_checkpoint(pretrained).tokenizer
    add_chat_tokens(tokenizer)
    return tokenizer


def test_loss_only_on_assistant_tokens(pretrained: Path) -> None:
    tokenizer = _tokenizer(pretrained)
    assert [tokenizer.token_to_id(t) for t in CHAT_TOKENS] == list(range(1000, 1004))  # after the vocabulary
    encoded = encode_chat(tokenizer, messages_of({"prompt": "Who?", "response": "I, my lord."}), eot_id=0)
    scored = [i for i, s in zip(encoded.ids, encoded.scored, strict=True) if s]
    assert tokenizer.decode(scored[:-1]) == "I, my lord." and scored[-1] == tokenizer.token_to_id(END)
    assert encoded.ids[0] == 0 and not encoded.scored[0]


def test_packed_windows_never_attend_across_examples(pretrained: Path, data: Path) -> None:
    loaded = load_checkpoint(pretrained)
    tokenizer = _tokenizer(pretrained)
    model = grow_vocabulary(loaded.model, tokenizer.get_vocab_size()).eval()
    examples = read_examples([str(data)], tokenizer, 0, 128, validation_fraction=0.0).train[:12]
    windows = pack(examples, 128, pad_id=1)
    assert len(windows) < len(examples)  # several examples per window
    rows = np.arange(len(windows))
    inputs, targets, doc_ids = windows.batch(rows, packed=True)
    assert doc_ids is not None and int(doc_ids.max()) >= 1
    n_scored = windows.scored_targets(rows)
    assert n_scored == sum(sum(e.scored[1:]) for e in examples)
    with torch.no_grad():
        _, packed = model(inputs, targets, doc_ids=doc_ids)
        separate = 0.0
        for example in examples:  # each example alone, the plain causal way
            ids = torch.tensor([example.ids])
            logits, _ = model(ids[:, :-1])
            keep = torch.tensor(example.scored[1:])
            separate += F.cross_entropy(logits[0][keep], ids[0, 1:][keep], reduction="sum").item()
        _, unmasked = model(inputs, targets)  # without the document mask the loss changes
    assert float(packed) * n_scored == pytest.approx(separate, rel=1e-4)
    assert float(unmasked) * n_scored != pytest.approx(separate, rel=1e-4)


def test_new_token_rows_start_at_the_mean_embedding(pretrained: Path) -> None:
    model = load_checkpoint(pretrained).model
    grown = grow_vocabulary(model, model.config.vocab_size + 4)
    old = model.tok_emb.weight[: model.config.vocab_size]
    torch.testing.assert_close(grown.tok_emb.weight[: model.config.vocab_size], old)
    for row in range(model.config.vocab_size, model.config.vocab_size + 4):
        torch.testing.assert_close(grown.tok_emb.weight[row], old.mean(dim=0))
    assert grown.lm_head.weight is grown.tok_emb.weight
    ids = torch.randint(0, model.config.vocab_size, (1, 16))
    with torch.no_grad():
        torch.testing.assert_close(grown(ids)[0][..., : model.config.vocab_size], model(ids)[0])


def _sft_args(pretrained: Path, data: Path, output: Path, *extra: str) -> list[str]:
    return [
        "--checkpoint", str(pretrained), "--data", str(data), "--output", str(output), "--seq-len", "128",
        "--batch-size", "4", "--max-steps", "6", "--lr", "1e-3", "--warmup-steps", "1",
        "--validation-fraction", "0.1", "--eval-every", "3", "--eval-windows", "8", "--log-every", "1",
        "--save-every", "3", "--deterministic", *extra,
    ]  # fmt: skip


def _metrics(output: Path, kind: str) -> dict[int, float]:
    lines = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    key = "loss" if kind == "train" else "val_loss"
    return {r["step"]: r[key] for r in lines if r["type"] == kind}


@pytest.fixture(scope="module")
def tuned(pretrained: Path, data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("sft") / "out"
    assert sft_main(_sft_args(pretrained, data, output)) == 0
    return output


def test_sft_run_validates_sets_aside_bad_records_and_resumes_exactly(
    pretrained: Path, data: Path, tuned: Path, tmp_path: Path
) -> None:
    straight = _metrics(tuned, "train")
    assert sorted(straight) == [1, 2, 3, 4, 5, 6]
    assert sorted(_metrics(tuned, "val")) == [3, 6]
    quarantined = [json.loads(line) for line in (tuned / "quarantine.jsonl").read_text().splitlines()]
    assert [(q["line"], q["reason"]) for q in quarantined] == [
        (6, "malformed_json"), (7, "not_a_conversation"), (8, "no_assistant_tokens")
    ]  # fmt: skip
    config = json.loads((tuned / "step-000006" / "config.json").read_text())
    assert config["data"]["set_aside"] == {
        "malformed_json": 1,
        "not_a_conversation": 1,
        "no_assistant_tokens": 1,
    }
    assert config["tokenizer"]["vocab_size"] == 1004 and config["model"]["vocab_size"] == 1004
    resumed = tmp_path / "resumed"
    assert sft_main(_sft_args(pretrained, data, resumed, "--stop-at", "3")) == 0
    assert sft_main([*_sft_args(pretrained, data, resumed), "--resume"]) == 0
    assert _metrics(resumed, "train") == straight  # bitwise: the same windows, weights and RNG
    assert _metrics(resumed, "val") == _metrics(tuned, "val")


def test_chat_generation_and_exported_chat_template(
    tuned: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from transformers import AutoTokenizer

    from training.export import export_checkpoint

    args = ["--checkpoint", str(tuned), "--prompt", "Who is there?", "--max-new-tokens", "20", "--seed", "0"]
    assert generate_main([*args, "--chat", "--temperature", "0"]) == 0
    reply = capsys.readouterr().out
    assert reply.strip() and "Who is there?" not in reply  # only the assistant's words are printed
    loaded = load_checkpoint(tuned)
    out = export_checkpoint(str(tuned), tmp_path / "hf")
    hf = AutoTokenizer.from_pretrained(out)
    for messages in CONVERSATIONS:
        for prompt in (False, True):
            ours = encode_chat(loaded.tokenizer, messages, loaded.eot_id, add_generation_prompt=prompt).ids
            theirs = hf.apply_chat_template(messages, add_generation_prompt=prompt, return_dict=True)
            assert list(theirs["input_ids"]) == ours


BLOCKED = (
    "pipelines",
    "flows",
    "tokenizer",
    "prefect",
    "datatrove",
    "pydantic",
    "yaml",
    "torchao",
    "transformers",
)
ISOLATED = f"""
import sys

class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {BLOCKED!r}:
            raise ImportError(f"{{name}} is not part of the training install")

sys.meta_path.insert(0, Blocked())
import training.evaluate, training.parallel, training.quantize, training.sft, training.sft_data, training.chat
from training.sft import main
assert main(["--help"]) == 0
"""


def test_post_training_modules_import_with_the_training_install_only() -> None:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", ISOLATED], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[2])  # fmt: skip
    assert proc.returncode == 0 and "--checkpoint" in proc.stdout, proc.stderr[-3000:]
