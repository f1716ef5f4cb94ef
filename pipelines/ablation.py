"""Corpus variants of a finished run for a data-quality ablation (`gristmill ablate`, flows/ablate.py).

A variant is a selection of the run's documents made from what the run stored (signals/ `keep` and
`reasons`, dedup/removed.parquet, documents/ and clean/); no signal is recomputed:

| variant | documents | text |
|---|---|---|
| `raw` | every readable document (documents/) | as ingested |
| `policy` | kept by the policy | cleaned (clean/) |
| `policy+dedup` | the final corpus: kept and not removed by dedup | cleaned |
| `-GROUP` | the final corpus plus the documents that only rules of GROUP dropped | cleaned |
| `-dedup` | the final corpus plus what dedup removed (= `policy`) | cleaned |
| `-cleaning` | the final corpus | as ingested (no C4 line cleaning) |

GROUP is a rule or reason name, a name prefix (`gopher`, `c4`, `fineweb`) or one of `RULE_GROUPS`.
Dedup only ever looked at kept documents, so documents a `-GROUP` variant re-admits were never
deduplicated.

Evaluation text is held out of every variant: a slice of the final corpus's validation split plus
any evaluation files, and every document that dedup found to be a near-duplicate of a held-out
document or whose text (as ingested or cleaned, whitespace collapsed) equals an evaluation text. A
variant's token shards hold its training documents as the train split and the held-out slice (the
same documents and text in every variant) as the validation split.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.config import TokenShardsConfig
from pipelines.corpus import (
    FinalCorpus,
    is_removed,
    removed_ids,
    signal_files,
    split_of,
    text_path,
    unit_hash,
)
from pipelines.io.inputs import list_inputs, local_input
from pipelines.quality.policy import LANG_NOT_ALLOWED, LOW_LANG_CONFIDENCE, Policy, load_policy
from pipelines.readers import Document, read_file
from pipelines.run import RunDir
from pipelines.run.files import parquet_file, read_table, write_parquet
from pipelines.run.layout import RunLayout
from pipelines.stages.token_shards import write_token_shards

BASE_VARIANTS = ("raw", "policy", "policy+dedup")
DEFAULT_VARIANTS = BASE_VARIANTS
REPETITION_SIGNALS = re.compile(r"^(dup_|top_\d+gram)")
RULE_GROUPS = {
    "gopher_repetition": "Gopher repetition rules (signals dup_*, top_*gram_*)",
    "gopher_quality": "the other gopher_* rules",
    "quality_classifier": "rules on quality_score (the fastText quality classifier)",
    "language": f"{LANG_NOT_ALLOWED} and {LOW_LANG_CONFIDENCE}",
}
HELDOUT = "heldout"
EVAL_SCHEMA = pa.schema([("id", pa.string()), ("text", pa.large_string())])
SPLIT_SALT = "ablation-heldout:"


# ------------------------------------------------------------------------------------------ variants


@dataclass(frozen=True)
class Variant:
    """One corpus variant: which documents (policy, re-admitted reasons, dedup) and which text."""

    name: str
    description: str
    policy: bool = True  # leave out what the policy dropped ...
    readmit: frozenset[str] = frozenset()  # ... except documents whose every failed rule is one of these
    dedup: bool = True  # leave out what dedup removed
    cleaned: bool = True  # text after C4 line cleaning (clean/), else as ingested (documents/)

    @property
    def slug(self) -> str:
        """A folder and file name: `-c4` -> `no-c4`."""
        return "no-" + self.name[1:] if self.name.startswith("-") else self.name


def rule_group(name: str, policy: Policy) -> frozenset[str]:
    """The reasons a group name stands for in `policy` (ValueError when it names none)."""
    reasons = policy.reason_names
    if name in reasons:
        return frozenset([name])
    repetition = {r.name for r in policy.rules if REPETITION_SIGNALS.match(r.signal)}
    groups = {
        "gopher_repetition": repetition,
        "gopher_quality": {r.name for r in policy.rules if r.name.startswith("gopher")} - repetition,
        "quality_classifier": {r.name for r in policy.rules if r.signal == "quality_score"},
        "language": {LANG_NOT_ALLOWED, LOW_LANG_CONFIDENCE},
    }
    found = groups.get(name) or {r for r in reasons if r.startswith(f"{name}_")}
    if not found:
        prefixes = sorted({r.split("_")[0] for r in reasons})
        raise ValueError(
            f"variant -{name}: no rule or group of that name in the run's policy; groups: "
            f"{', '.join([*RULE_GROUPS, *prefixes])}, dedup, cleaning, or a rule name"
        )
    return frozenset(found)


def stored_policy(run: RunLayout) -> Policy | None:
    """The policy the run's signals stage applied (_policy.yaml), its rules free to name any
    stored signal column (plugins' too); None when the run has none."""
    files = signal_files(run)
    if not run.policy.exists() or not files:
        return None
    return load_policy(run.policy, parquet_file(files[0]).schema_arrow.names)


def variant(name: str, policy: Policy | None) -> Variant:
    """The variant a name on the command line means (ValueError for an unknown one)."""
    if name == "raw":
        return Variant(name, "every readable document, text as ingested", policy=False, dedup=False,
                       cleaned=False)  # fmt: skip
    if name == "policy":
        return Variant(name, "kept by the policy, before dedup", dedup=False)
    if name == "policy+dedup":
        return Variant(name, "the final corpus: kept by the policy, deduplicated")
    if name == "-dedup":
        return Variant(name, "the final corpus with dedup's removals put back", dedup=False)
    if name == "-cleaning":
        return Variant(name, "the final corpus, text without C4 line cleaning", cleaned=False)
    if name.startswith("-") and len(name) > 1:
        if policy is None:
            raise ValueError(f"variant {name}: the run has no policy (_policy.yaml)")
        readmit = rule_group(name[1:], policy)
        description = f"the final corpus plus documents dropped only by {', '.join(sorted(readmit))}"
        return Variant(name, description, readmit=readmit)
    raise ValueError(
        f"unknown variant {name!r}: raw, policy, policy+dedup, or -GROUP (-dedup, -cleaning, "
        f"-{', -'.join(RULE_GROUPS)}, a rule name or prefix)"
    )


class VariantMasks:
    """Which rows of each shard a variant holds before the evaluation exclusions (cached per shard)."""

    def __init__(self, run: RunLayout, variant: Variant) -> None:
        self.run, self.variant = run, variant
        self.removed = removed_ids(run) if variant.dedup else pa.array([], pa.string())
        self._shard: tuple[str, np.ndarray] | None = None

    def rows(self, shard: str) -> np.ndarray:
        """The policy part of the mask of a whole shard (all True without the policy or signals)."""
        if self._shard is None or self._shard[0] != shard:
            self._shard = (shard, self._policy_mask(shard))
        return self._shard[1]

    def _policy_mask(self, shard: str) -> np.ndarray:
        path = self.run.signals / shard
        if not self.variant.policy or not path.exists():
            return np.ones(parquet_file(self.run.documents / shard).metadata.num_rows, bool)
        table = read_table(path, columns=["keep", "reasons"])
        keep = table.column("keep").to_numpy(zero_copy_only=False)
        if not self.variant.readmit:
            return keep
        reasons = table.column("reasons").combine_chunks()
        readmit = pa.array(sorted(self.variant.readmit), pa.string())
        other = ~pc.is_in(pc.list_flatten(reasons), value_set=readmit).to_numpy(zero_copy_only=False)
        parents = pc.list_parent_indices(reasons).to_numpy()
        has_other = np.bincount(parents[other], minlength=len(keep)) > 0
        return keep | ~has_other

    def mask(self, shard: str, first_row: int, ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
        rows = self.rows(shard)[first_row : first_row + len(ids)].copy()
        return rows & ~is_removed(ids, self.removed) if self.variant.dedup else rows


class VariantSelection:
    """A variant as a `corpus.Selection`: train = its documents less the excluded ones, validation =
    the held-out documents (their final-corpus text, the same in every variant)."""

    def __init__(self, run: RunLayout, variant: Variant, heldout: pa.Array, excluded: pa.Array) -> None:
        self.run, self.variant, self.heldout, self.excluded = run, variant, heldout, excluded
        self.key = {
            "variant": variant.name,
            "readmit": sorted(variant.readmit),
            "heldout_sha256": _ids_sha256(heldout),
            "excluded_sha256": _ids_sha256(excluded),
        }
        self._masks: VariantMasks | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_masks": None}

    def splits(self, shard: str, first_row: int, ids: pa.Array | pa.ChunkedArray) -> list[str | None]:
        if self._masks is None:
            self._masks = VariantMasks(self.run, self.variant)
        member = self._masks.mask(shard, first_row, ids) & ~_isin(ids, self.excluded)
        held = _isin(ids, self.heldout)
        return ["validation" if h else "train" if m else None for h, m in zip(held, member, strict=True)]

    def text_file(self, shard: str, split: str) -> Path:
        if split == "validation" or self.variant.cleaned:
            return text_path(self.run, shard)
        return self.run.documents / shard


def _isin(ids: pa.Array | pa.ChunkedArray, values: pa.Array) -> np.ndarray:
    if not len(values):
        return np.zeros(len(ids), bool)
    return pc.is_in(ids, value_set=values).to_numpy(zero_copy_only=False)


def _ids_sha256(ids: pa.Array) -> str:
    return hashlib.sha256("\n".join(sorted(ids.to_pylist())).encode()).hexdigest()


# ------------------------------------------------------------------------------- evaluation texts


@dataclass
class EvalSet:
    """Texts a model is evaluated on, none of which any variant trains on."""

    name: str
    source: str
    ids: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    source_ids: list[str] = field(default_factory=list)  # the records' own ids (eval files)
    quarantined: int = 0

    @property
    def bytes(self) -> int:
        return sum(len(t.encode("utf-8")) for t in self.texts)

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "documents": len(self.texts), "bytes": self.bytes,
                "quarantined": self.quarantined}  # fmt: skip

    def write(self, path: Path) -> None:
        write_parquet(pa.table({"id": self.ids, "text": self.texts}, schema=EVAL_SCHEMA), path)


def heldout_set(run: RunLayout, validation_fraction: float, max_bytes: int) -> EvalSet:
    """A slice of the final corpus's validation split: its documents in a seeded order (a hash of the
    id) up to `max_bytes` of text."""
    if validation_fraction <= 0:
        raise ValueError("the run has no validation split (tokenize.validation_fraction is 0)")
    candidates = []
    for table in FinalCorpus(run).batches():
        ids, texts = table.column("id").to_pylist(), table.column("text").to_pylist()
        for doc_id, text in zip(ids, texts, strict=True):
            if text and split_of(doc_id, validation_fraction) == "validation":
                candidates.append((unit_hash(doc_id, SPLIT_SALT), doc_id, text))
    held = EvalSet(HELDOUT, f"validation split of the final corpus (fraction {validation_fraction:g})")
    size = 0
    for _, doc_id, text in sorted(candidates):
        if size >= max_bytes:
            break
        held.ids.append(doc_id)
        held.texts.append(text)
        size += len(text.encode("utf-8"))
    if not held.texts:
        raise ValueError(f"{run.root}: the final corpus's validation split is empty; nothing to evaluate on")
    held.source += f": {len(held.texts):,} of {len(candidates):,} documents"
    return held


def read_eval_sets(uris: list[str]) -> list[EvalSet]:
    """One evaluation set per given file or folder, read with the input readers (any input format);
    records that cannot be read are counted, not fatal."""
    sets = []
    for uri in uris:
        name = re.sub(r"[^A-Za-z0-9_.+-]+", "-", Path(uri.rstrip("/")).name.split(".")[0]) or "eval"
        if name == HELDOUT or name in {s.name for s in sets}:
            name = f"{name}-{len(sets) + 1}"
        found = EvalSet(name, uri)
        for path, source in list_inputs([uri]):
            for item in read_file(local_input(path), source):
                if isinstance(item, Document):
                    found.ids.append(item.id)
                    found.texts.append(item.text)
                    if item.source_id:
                        found.source_ids.append(item.source_id)
                else:
                    found.quarantined += 1
        if not found.texts:
            raise ValueError(f"--eval {uri}: no readable documents")
        found.source += f": {len(found.texts):,} documents"
        sets.append(found)
    return sets


def text_hash(text: str) -> bytes:
    """A hash of a text with its whitespace collapsed (what counts as "the same text")."""
    return hashlib.blake2b(" ".join(text.split()).encode("utf-8"), digest_size=16).digest()


def _column(path: Path, column: str) -> Iterator[Any]:
    """The values of one column of a Parquet file, row by row."""
    for batch in parquet_file(path).iter_batches(columns=[column]):
        yield from batch.column(column).to_pylist()


def _documents(run: RunLayout) -> Iterator[tuple[str, str | None, str, str]]:
    """(id, own id (else the id), text as ingested, text as later stages read it) of every document."""
    for shard in run.shards():
        raw = run.documents / shard
        has_own = "source_id" in parquet_file(raw).schema_arrow.names
        yield from zip(
            _column(raw, "id"),
            _column(raw, "source_id" if has_own else "id"),
            _column(raw, "text"),
            _column(text_path(run, shard), "text"),
            strict=True,
        )


def exclusions(run: RunLayout, eval_sets: list[EvalSet]) -> tuple[pa.Array, dict[str, int]]:
    """Ids no variant may train on, and how many for each reason (each document counted once):
    `heldout`, `duplicate_of_heldout` (dedup removed it as a near-duplicate of a held-out document),
    `same_id_as_eval`, `same_text_as_eval` (as ingested or cleaned, whitespace collapsed)."""
    heldout = {i for s in eval_sets if s.name == HELDOUT for i in s.ids}
    eval_ids = {i for s in eval_sets if s.name != HELDOUT for i in [*s.ids, *s.source_ids]}
    hashes = {text_hash(t) for s in eval_sets for t in s.texts}
    duplicates: set[str] = set()
    if run.removed.exists():
        removed = read_table(run.removed, columns=["id", "duplicate_of"])
        pairs = zip(removed.column("id").to_pylist(), removed.column("duplicate_of").to_pylist(), strict=True)
        duplicates = {doc_id for doc_id, of in pairs if of in heldout}
    excluded: list[str] = []
    counts: Counter[str] = Counter()
    for doc_id, own_id, text, clean in _documents(run):
        if doc_id in heldout:
            reason = "heldout"
        elif doc_id in duplicates:
            reason = "duplicate_of_heldout"
        elif doc_id in eval_ids or own_id in eval_ids:
            reason = "same_id_as_eval"
        elif text_hash(text or "") in hashes or (clean != text and text_hash(clean or "") in hashes):
            reason = "same_text_as_eval"
        else:
            continue
        excluded.append(doc_id)
        counts[reason] += 1
    return pa.array(excluded, pa.string()), {k: counts[k] for k in sorted(counts)}


# ---------------------------------------------------------------------------------- token streams


def write_variant(
    run: RunDir,
    variant: Variant,
    heldout: EvalSet,
    excluded: pa.Array,
    config: TokenShardsConfig,
    lineage: dict[str, Any],
    folder: Path,
    workers: int = 0,
) -> dict[str, Any]:
    """Tokenize a variant into `folder` with the run's tokenizer and the shard writer of the tokenize
    stage (kept when its plan is unchanged); return its manifest."""
    selection = VariantSelection(run, variant, pa.array(heldout.ids, pa.string()), excluded)
    lineage = {**lineage, "ablation_variant": variant.name}
    return write_token_shards(run, config, lineage, workers, resume=True, selection=selection, folder=folder)
