"""The chat template: role tokens added to the tokenizer, and conversations to token ids.

A conversation is rendered as ``<|endoftext|>`` (documents follow one in pretraining) and, per
message, its role token, its content and ``<|end|>``; a generation prompt ends with
``<|assistant|>``. Every role marker is a special token of its own, so the content of each message
is one text segment between special tokens: that is exactly how ``transformers`` tokenizes the
rendered :data:`CHAT_TEMPLATE` (added tokens split the text, each piece is encoded on its own), so
``apply_chat_template`` and :func:`encode_chat` give the same ids. Special-token strings inside a
message's content are encoded as ordinary text, as in the token shards.

Training on a conversation scores only what the assistant says: the content of its messages and
the ``<|end|>`` that closes them (so the model learns to stop).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tokenizers import AddedToken, Tokenizer

__all__ = [
    "CHAT_TEMPLATE",
    "CHAT_TOKENS",
    "END",
    "ROLES",
    "ChatError",
    "EncodedChat",
    "add_chat_tokens",
    "encode_chat",
    "has_chat_tokens",
    "messages_of",
]

ROLES = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}
END = "<|end|>"
CHAT_TOKENS = (*ROLES.values(), END)

# Jinja, as transformers' apply_chat_template renders it (bos_token is <|endoftext|> in our exports).
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role: ' + message['role']) }}"
    "{% endif %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


class ChatError(ValueError):
    """A record that is not a conversation this template can render."""


@dataclass
class EncodedChat:
    """Token ids of a conversation and, per id, whether training scores it (as a target)."""

    ids: list[int]
    scored: list[bool]


def has_chat_tokens(tokenizer: Tokenizer) -> bool:
    return all(tokenizer.token_to_id(token) is not None for token in CHAT_TOKENS)


def add_chat_tokens(tokenizer: Tokenizer) -> list[int]:
    """Add the role and end tokens as special tokens (those not there yet); return their ids in
    :data:`CHAT_TOKENS` order. New ids follow the existing vocabulary."""
    missing = [t for t in CHAT_TOKENS if tokenizer.token_to_id(t) is None]
    if missing:
        tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in missing])
    return [int(tokenizer.token_to_id(t)) for t in CHAT_TOKENS]


def messages_of(record: dict[str, Any]) -> list[dict[str, str]]:
    """The messages of a JSONL record: ``messages`` (a list of ``{"role", "content"}``) or a
    ``prompt``/``response`` pair (one user and one assistant message). Raises :class:`ChatError`."""
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            raise ChatError("messages must be a non-empty list")
        out = []
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or not isinstance(message.get("content"), str):
                raise ChatError(f"message {i} needs a string content")
            if message.get("role") not in ROLES:
                role = message.get("role")
                raise ChatError(f"message {i} has role {role!r}, not one of {', '.join(ROLES)}")
            out.append({"role": message["role"], "content": message["content"]})
    elif "prompt" in record and "response" in record:
        if not isinstance(record["prompt"], str) or not isinstance(record["response"], str):
            raise ChatError("prompt and response must be strings")
        out = [
            {"role": "user", "content": record["prompt"]},
            {"role": "assistant", "content": record["response"]},
        ]
    else:
        raise ChatError("a record needs `messages` or `prompt` and `response`")
    return out


def encode_chat(
    tokenizer: Tokenizer,
    messages: Sequence[dict[str, str]],
    eot_id: int,
    add_generation_prompt: bool = False,
) -> EncodedChat:
    """Ids of the rendered conversation (the tokenizer must have the chat tokens), with the
    assistant's content and closing ``<|end|>`` marked as scored."""
    if not has_chat_tokens(tokenizer):
        raise ChatError("the tokenizer has no chat tokens (training.chat.add_chat_tokens)")
    end = tokenizer.token_to_id(END)
    literal = tokenizer.encode_special_tokens
    tokenizer.encode_special_tokens = True
    try:
        contents = tokenizer.encode_batch([m["content"] for m in messages], add_special_tokens=False)
    finally:
        tokenizer.encode_special_tokens = literal
    ids, scored = [eot_id], [False]
    for message, content in zip(messages, contents, strict=True):
        assistant = message["role"] == "assistant"
        ids += [tokenizer.token_to_id(ROLES[message["role"]]), *content.ids, end]
        scored += [False, *[assistant] * len(content.ids), assistant]
    if add_generation_prompt:
        ids.append(tokenizer.token_to_id(ROLES["assistant"]))
        scored.append(False)
    return EncodedChat(ids, scored)
