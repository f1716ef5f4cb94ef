"""Every path of a run directory, and which stage writes which folder.

```
<run>/run.json                      pipelines.run.record
      _inputs.json _splits.json _shards.json        stages.ingest (shard -> input file and block)
      _policy.yaml                  stages.signals    (the policy that produced `keep`)
      documents/ NNNNN.parquet      stages.ingest     (+ _parts/ while it runs)
      quarantine/ NNNNN.jsonl       stages.ingest
      clean/ NNNNN.parquet          stages.signals    (C4 line cleaning: the text later stages read)
      signals/ NNNNN.parquet        stages.signals
      dedup/ signatures/ bands/     stages.dedup      (per shard)
             removed.parquet clusters.parquet summary.json   pipelines.dedup.cluster
      tokenizer/                    stages.tokenizer_training
      tokens/ <split>-NNNNN.parquet stages.token_shards (+ _plan.json, _manifest.json written last)
      report/                       stages.report     (+ _doc_tokens/: token counts per shard)
      ablation/ variants/ eval/ metrics/ results.json   flows.ablate (`gristmill ablate`, not a stage)
```
Shard `i` of every per-shard stage is documents shard `i` (records of one input file, `ingest.shard_mb` of
it at most); its files are named `shard_name(i)`.

Every data folder (documents/, clean/, signals/, dedup/signatures/, dedup/bands/, tokens/) reads as one
dataset with `pyarrow.dataset` and `datasets.load_dataset("parquet", data_dir=...)`: it holds data files
only, or metadata files whose names start with `_` (which pyarrow skips) beside shards named after their
split (which `datasets` then reads alone, as in tokens/). A run's own metadata lives at its root.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from pipelines.errors import UserError

STAGES = ("ingest", "signals", "dedup", "tokenizer", "tokenize", "report")
# The folders each stage writes, in stage order.
STAGE_FOLDERS = {
    "ingest": ("documents", "quarantine"),
    "signals": ("signals", "clean"),
    "dedup": ("dedup",),
    "tokenizer": ("tokenizer",),
    "tokenize": ("tokens",),
    "report": ("report",),
}
# The outputs a user opens, per stage (published as the stage's output locations).
STAGE_OUTPUTS = {
    "ingest": ("documents/", "quarantine/"),
    "signals": ("signals/", "clean/"),
    "dedup": ("dedup/removed.parquet", "dedup/clusters.parquet", "dedup/summary.json"),
    "tokenizer": ("tokenizer/tokenizer.json",),
    "tokenize": ("tokens/_manifest.json",),
    "report": ("report/report.html", "report/report.md", "report/report.json"),
}
# Files a shard writes next to its completion marker (same stem), by the marker's folder.
SHARD_COMPANIONS = {
    "documents": ("quarantine",),
    "documents/_parts": ("documents/_parts",),  # NNNNN.parquet, NNNNN.quarantine.jsonl beside NNNNN.json
    "signals": ("clean",),
    "dedup/signatures": ("dedup/bands",),
}
# Files that say "this stage's outputs are complete": written (and uploaded) after every data file.
COMMIT_NAMES = ("manifest.json", "summary.json")
MANIFEST_NAME = "_manifest.json"  # the token-shard manifest, in the shards' folder (docs/shard-format.md)


def token_shard_name(split: str, index: int) -> str:
    """The file name of token shard `index` of `split` (`train-00003.parquet`)."""
    return f"{split}-{index:05d}.parquet"


STAGE_COMMIT_FILES = {"tokenize": (f"tokens/{MANIFEST_NAME}",)}
# Files at the run's root each stage writes (deleted with its folders when the stage starts afresh).
STAGE_FILES = {"ingest": ("_inputs.json", "_splits.json", "_shards.json"), "signals": ("_policy.yaml",)}
# Regenerable intermediate data (tagged for the bucket's lifecycle rule, infra/terraform/s3.tf).
INTERMEDIATE_PREFIXES = ("documents/", "clean/", "dedup/signatures/", "dedup/bands/")


RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
RUN_ID_RULE = "1 to 128 letters, digits, '.', '_' or '-', starting with a letter or digit"


def check_run_id(run_id: str) -> str:
    """`run_id` if it is one safe path component (RUN_ID_RULE), else UserError."""
    if not isinstance(run_id, str) or not RUN_ID.fullmatch(run_id):
        raise UserError(f"invalid run id {run_id!r}: a run id is {RUN_ID_RULE}")
    return run_id


def shard_name(index: int) -> str:
    """The stem of shard `index`'s files in every per-shard folder."""
    return f"{index:05d}"


def is_commit_file(rel: str) -> bool:
    """manifest.json, summary.json, `_*` metadata files and run.json: written after the data files."""
    name = rel.rsplit("/", 1)[-1]
    return rel == "run.json" or name in COMMIT_NAMES or name.startswith("_")


class RunLayout:
    """The paths of one run directory (a local folder: the run, or an S3 run's mirror)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.run_json = root / "run.json"
        self.documents = root / "documents"
        self.inputs = root / "_inputs.json"
        self.splits = root / "_splits.json"
        self.parts = self.documents / "_parts"
        self.shards_plan = root / "_shards.json"
        self.quarantine = root / "quarantine"
        self.clean = root / "clean"
        self.signals = root / "signals"
        self.policy = root / "_policy.yaml"
        self.dedup = root / "dedup"
        self.signatures = self.dedup / "signatures"
        self.bands = self.dedup / "bands"
        self.removed = self.dedup / "removed.parquet"
        self.clusters = self.dedup / "clusters.parquet"
        self.dedup_summary = self.dedup / "summary.json"
        self.tokenizer = root / "tokenizer"
        self.tokenizer_json = self.tokenizer / "tokenizer.json"
        self.tokenizer_meta = self.tokenizer / "tokenizer.meta.json"
        self.tokens = root / "tokens"
        self.token_plan = self.tokens / "_plan.json"
        self.manifest = self.tokens / MANIFEST_NAME
        self.report = root / "report"
        self.doc_tokens = self.report / "_doc_tokens"
        self.doc_tokens_key = self.report / "_doc_tokens.json"  # what the cached counts were made with
        self.ablation = root / "ablation"
        self.ablation_results = self.ablation / "results.json"

    def create(self) -> None:
        """Make the folders of every stage."""
        for folders in STAGE_FOLDERS.values():
            for folder in folders:
                (self.root / folder).mkdir(parents=True, exist_ok=True)

    def shards(self) -> list[str]:
        """The names of the run's shards (`NNNNN.parquet` of documents/), in shard order: those on disk and
        those _shards.json lists (an S3 run's mirror holds only what was fetched)."""
        names = {p.name for p in self.documents.glob("[0-9]*.parquet")}
        if self.shards_plan.exists():
            planned = len(json.loads(self.shards_plan.read_text()))
            names.update(f"{shard_name(i)}.parquet" for i in range(planned))
        return sorted(names)

    def stage_files(self, stage: str) -> list[Path]:
        """Every file a stage wrote (what a stage that starts afresh deletes first)."""
        return [
            path
            for folder in STAGE_FOLDERS[stage]
            for path in sorted((self.root / folder).rglob("*"))
            if path.is_file()
        ] + [path for name in STAGE_FILES.get(stage, ()) if (path := self.root / name).is_file()]
