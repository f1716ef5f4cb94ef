"""Held-out evaluation (training/evaluate.py, `gristmill eval`): the token stream as training sees
documents, windows that score every token once without context across them, loss, perplexity and
bits per byte, and the CLI on inputs in the pipeline's formats."""

from __future__ import annotations

import gzip
import itertools
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from pretrained import held_out_texts, shared_pretrained
from token_shards import TEXT

from flows.cli import main as cli_main
from training.evaluate import evaluate_checkpoint, evaluate_texts, evaluation_windows, token_stream
from training.generate import load_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not TEXT.is_file():
        pytest.skip(f"{TEXT} is not available")
    return shared_pretrained(tmp_path_factory.getbasetemp())


def test_stream_is_documents_between_end_of_text_and_windows_score_each_token_once(checkpoint: Path) -> None:
    tokenizer = load_checkpoint(checkpoint).tokenizer
    texts = ["First doc.", "", "quotes <|endoftext|> literally", "last one"]
    stream = token_stream(tokenizer, texts, eot_id=0)
    cuts = [i for i, t in enumerate(stream.tolist()) if t == 0]
    assert len(cuts) == len(texts) + 1 and cuts[0] == 0 and cuts[-1] == len(stream) - 1  # one per boundary
    decoded = [tokenizer.decode(stream[a + 1 : b].tolist()) for a, b in itertools.pairwise(cuts)]
    assert decoded == texts  # the literal special-token text stayed text
    inputs, targets = evaluation_windows(stream, seq_len=4, pad_id=0)
    scored = targets[targets != -100]
    assert scored.tolist() == stream[1:].tolist()  # every token after the first, once, in order
    assert inputs.reshape(-1)[: len(stream) - 1].tolist() == stream[:-1].tolist()
    assert inputs.shape == targets.shape == (math.ceil((len(stream) - 1) / 4), 4)


def test_loss_is_the_sum_over_independent_windows(checkpoint: Path) -> None:
    loaded = load_checkpoint(checkpoint)
    model, tokenizer = loaded.model, loaded.tokenizer
    texts = held_out_texts(3, 1500)
    seq_len = 48
    result = evaluate_texts(model, tokenizer, texts, seq_len, "cpu", batch_size=5, eot_id=loaded.eot_id)
    stream = torch.from_numpy(token_stream(tokenizer, texts, loaded.eot_id))
    nats, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(stream) - 1, seq_len):  # each window on its own: no shared context
            x = stream[start : start + seq_len][None]
            y = stream[start + 1 : start + seq_len + 1][None]
            logits, _ = model(x[:, : y.shape[1]])
            nats += F.cross_entropy(logits[0].double(), y[0], reduction="sum").item()
            count += y.shape[1]
    assert result["tokens"] == count == len(stream) - 1
    assert result["loss"] == pytest.approx(nats / count, rel=1e-6)
    n_bytes = sum(len(t.encode()) for t in texts)
    assert result["bytes"] == n_bytes and result["documents"] == 3
    assert result["bits_per_byte"] == pytest.approx(nats / math.log(2) / n_bytes, rel=1e-6)
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]))
    one_by_one = evaluate_texts(model, tokenizer, texts, seq_len, "cpu", batch_size=1)
    assert one_by_one["loss"] == pytest.approx(result["loss"], rel=1e-6)  # padding never leaks


def test_trained_model_beats_its_initialization(checkpoint: Path) -> None:
    loaded = load_checkpoint(checkpoint)
    texts = [TEXT.read_text(encoding="utf-8")[-20000:]]
    trained = evaluate_texts(loaded.model, loaded.tokenizer, texts, 64, "cpu")
    torch.manual_seed(0)
    loaded.model.reset_parameters()
    untrained = evaluate_texts(loaded.model, loaded.tokenizer, texts, 64, "cpu")
    assert untrained["loss"] == pytest.approx(math.log(loaded.model.config.vocab_size), rel=0.05)
    assert trained["loss"] < untrained["loss"] - 1.0
    assert trained["bits_per_byte"] < untrained["bits_per_byte"]


def test_eval_cli_reads_the_pipeline_input_formats(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    texts = held_out_texts(4, 2000)
    data = tmp_path / "data"
    data.mkdir()
    lines = [json.dumps({"id": f"d{i}", "text": t}) for i, t in enumerate(texts[:3])]
    (data / "a.jsonl.gz").write_bytes(
        gzip.compress(("\n".join([lines[0], "{not json", *lines[1:]]) + "\n").encode())
    )
    (data / "b.txt").write_text(texts[3], encoding="utf-8")
    assert (
        cli_main(["eval", "--checkpoint", str(checkpoint), "--data", str(data), "--seq-len", "64", "--json"])
        == 0
    )
    printed = json.loads(capsys.readouterr().out)
    expected = evaluate_checkpoint(str(checkpoint), texts, 64)
    for key in ("loss", "bits_per_byte", "tokens", "bytes", "documents"):
        assert printed[key] == pytest.approx(expected[key], rel=1e-9), key
    assert printed["quarantined"] == {"malformed_json": 1}
    assert cli_main(["eval", "--checkpoint", str(checkpoint), "--data", str(data / "b.txt")]) == 0
    out = capsys.readouterr().out
    assert "bits per byte" in out and "perplexity" in out and "seq_len 128" in out  # the training --seq-len
