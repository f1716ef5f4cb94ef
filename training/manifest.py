"""manifest.json of a token-shard run (docs/shard-format.md, format version 1) and its tokenizer."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from training import storage

FORMAT = "gristmill.tokens"
FORMAT_VERSION = 1
HASH_CHUNK = 8 << 20


class DataError(RuntimeError):
    """The manifest, a shard or the tokenizer does not match the shard contract."""


class IntegrityError(DataError):
    """A file's sha256 or size differs from the one recorded in the manifest."""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Manifest:
    """A parsed manifest.json and the directory (local or ``s3://``) its relative paths start from."""

    uri: str
    base_dir: str
    data: dict[str, Any]

    @property
    def tokenizer(self) -> dict[str, Any]:
        return self.data["tokenizer"]

    @property
    def eot_id(self) -> int:
        return int(self.tokenizer["eot_id"])

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer["vocab_size"])

    @property
    def dtype(self) -> str:
        return str(self.data["dtype"])

    @property
    def tokenizer_uri(self) -> str:
        return storage.join(self.base_dir, self.tokenizer["path"])

    def split(self, name: str) -> dict[str, Any]:
        splits = self.data["splits"]
        if name not in splits:
            raise DataError(f"manifest {self.uri} has no split {name!r} (has {sorted(splits)})")
        return splits[name]

    def has_split(self, name: str) -> bool:
        return name in self.data["splits"] and bool(self.data["splits"][name]["shards"])

    def shard_uri(self, shard: dict[str, Any]) -> str:
        return storage.join(self.base_dir, shard["path"])

    def fingerprint(self, split: str) -> str:
        """sha256 over the split's shard checksums: identifies the exact token stream."""
        digests = "\n".join(shard["sha256"] for shard in self.split(split)["shards"])
        return sha256_hex(digests.encode())


def load_manifest(uri: str) -> Manifest:
    """Read manifest.json (local or ``s3://``) and check its format name, version and required keys."""
    uri = storage.normalize(uri)
    try:
        data = json.loads(storage.read_bytes(uri))
    except storage.NotFound as exc:
        raise DataError(f"manifest not found: {uri}") from exc
    except json.JSONDecodeError as exc:
        raise DataError(f"{uri} is not valid JSON: {exc}") from exc
    if data.get("format") != FORMAT:
        raise DataError(f"{uri}: format is {data.get('format')!r}, expected {FORMAT!r}")
    if data.get("format_version") != FORMAT_VERSION:
        raise DataError(
            f"{uri}: format_version {data.get('format_version')!r} is not supported "
            f"(this reader understands version {FORMAT_VERSION})"
        )
    for key in ("tokenizer", "splits", "dtype"):
        if key not in data:
            raise DataError(f"{uri}: missing key {key!r}")
    for key in ("path", "sha256", "vocab_size", "eot_id"):
        if key not in data["tokenizer"]:
            raise DataError(f"{uri}: missing key tokenizer.{key}")
    if data["dtype"] not in ("uint16", "uint32"):
        raise DataError(f"{uri}: unsupported dtype {data['dtype']!r}")
    return Manifest(uri=uri, base_dir=storage.parent(uri), data=data)


def check_tokenizer(manifest: Manifest) -> bytes:
    """Return the tokenizer.json bytes after checking their sha256 and special-token ids."""
    from tokenizers import Tokenizer

    uri = manifest.tokenizer_uri
    try:
        data = storage.read_bytes(uri)
    except storage.NotFound as exc:
        raise DataError(f"tokenizer not found: {uri}") from exc
    expected = manifest.tokenizer["sha256"]
    if sha256_hex(data) != expected:
        raise IntegrityError(
            f"tokenizer {uri} has sha256 {sha256_hex(data)}, but the manifest expects {expected}: "
            "the shards were tokenized with a different tokenizer"
        )
    tokenizer = Tokenizer.from_str(data.decode("utf-8"))
    for token, token_id in manifest.tokenizer.get("special_tokens", {}).items():
        if tokenizer.token_to_id(token) != token_id:
            raise DataError(
                f"tokenizer {uri} maps {token!r} to {tokenizer.token_to_id(token)}, manifest says {token_id}"
            )
    return data


def verify_shard(manifest: Manifest, shard: dict[str, Any]) -> None:
    """Hash one shard (chunked ranged reads) against the manifest's sha256 and size."""
    uri = manifest.shard_uri(shard)
    total = storage.size(uri)
    if total != shard["bytes"]:
        raise IntegrityError(f"shard {uri} has {total} bytes, the manifest records {shard['bytes']}")
    digest = hashlib.sha256()
    for start in range(0, total, HASH_CHUNK):
        digest.update(storage.read_range(uri, start, min(HASH_CHUNK, total - start)))
    if digest.hexdigest() != shard["sha256"]:
        raise IntegrityError(
            f"shard {uri} has sha256 {digest.hexdigest()}, but the manifest records {shard['sha256']}: "
            "the file is corrupt or was changed after the manifest was written"
        )


def verify_shards(manifest: Manifest, split: str) -> None:
    """Hash every shard of a split against the manifest's sha256 and size.

    A full read of the split: training runs it (shards spread over the ranks) only with
    ``--verify-shards``; the streaming reader always checks sizes, row and token counts.
    """
    for shard in manifest.split(split)["shards"]:
        verify_shard(manifest, shard)
