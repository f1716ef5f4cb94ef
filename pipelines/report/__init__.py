"""The filter report of a run: report.html (self-contained), report.md, report.json.

`write_report` aggregates a run; `write_whatif` re-applies another policy to the stored signals;
`write_diff` compares two runs. All three read only stored outputs, never recompute signals.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pipelines.corpus import signal_files
from pipelines.quality.policy import load_policy
from pipelines.report import build, compare, render
from pipelines.report.data import READS, load_run
from pipelines.run import RunDir
from pipelines.run.files import parquet_file, write_atomic, write_json

__all__ = ["build_report", "summary_lines", "write_diff", "write_report", "write_whatif"]


def build_report(run: RunDir, workers: int = 0) -> dict[str, Any]:
    return build.build(load_run(run, workers))


def write_report(run: RunDir, workers: int = 0) -> dict[str, Any]:
    """Build the report and write report.json, report.md and report.html."""
    report = build_report(run, workers)
    run.report.mkdir(parents=True, exist_ok=True)
    write_json(run.report / "report.json", report)
    _write_page(render.report_page(report), run.report / "report.md", run.report / "report.html")
    return report


def _write_page(page: render.Page, md: Path, html: Path) -> None:
    write_atomic(md, render.render(page, "md"))
    write_atomic(html, render.render(page, "html"))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "other"


def write_whatif(run: RunDir, policy_path: str | Path, workers: int = 0) -> tuple[dict[str, Any], list[Path]]:
    """Apply another policy to the run's stored signals; write report/whatif-<policy>.{json,md,html}."""
    data = load_run(run, workers, text_sizes=False)
    if data.signals is None:
        raise ValueError(f"{run.root} has no signals to re-apply a policy to")
    comparison = compare.policy_comparison(data, load_policy(policy_path, data.signals.column_names))
    stem = f"whatif-{_slug(Path(policy_path).stem)}"
    name = Path(policy_path).name
    paths = [run.report / f"{stem}.{ext}" for ext in ("json", "md", "html")]
    write_json(paths[0], comparison)
    _write_page(render.whatif_page(comparison, str(data.record.get("run_id")), name, data.unit), *paths[1:])
    return comparison, paths


def write_diff(run: RunDir, other: RunDir, workers: int = 0) -> tuple[dict[str, Any], list[Path]]:
    """Compare two runs; write report/diff-<other run>.{json,md,html} into this run: config and policy
    changes first, then the figures that changed and documents whose keep/drop flipped."""
    for opened in (run, other):
        opened.fetch(READS)
    this_report = _existing_or_built(run, workers)
    other_report = _existing_or_built(other, workers)
    diff = compare.run_comparison(this_report, other_report)
    this_record, other_record = run.record.load(), other.record.load()
    diff["config_changes"] = compare.setting_changes(
        other_record.get("config") or {}, this_record.get("config") or {}, skip=("run_id", "output")
    )
    policies = [
        load_policy(r.policy, _stored_signals(r)) if r.policy.exists() else None for r in (other, run)
    ]
    diff["policy_changes"] = compare.policy_changes(*policies)
    both = signal_files(run) and signal_files(other)
    diff["examples"] = compare.flipped_between_runs(run, other) if both else {}
    stem = f"diff-{_slug(str(other_report.get('run_id') or other.root.name))}"
    paths = [run.report / f"{stem}.{ext}" for ext in ("json", "md", "html")]
    write_json(paths[0], diff)
    _write_page(render.diff_page(diff), *paths[1:])
    return diff, paths


def _stored_signals(run: RunDir) -> list[str]:
    """The columns of a run's signals/ (so a policy may name its plugin columns)."""
    files = signal_files(run)
    return parquet_file(files[0]).schema_arrow.names if files else []


def _existing_or_built(run: RunDir, workers: int) -> dict[str, Any]:
    path = run.report / "report.json"
    if path.exists():
        return json.loads(path.read_text())
    return write_report(run, workers)


def summary_lines(report: dict[str, Any]) -> list[str]:
    """A one-screen summary of a run for the console."""
    lines = [f"gristmill run {report['run_id']}"]
    for step in report["funnel"]:
        docs_in = f"{step['documents_in']:,}" if step.get("documents_in") is not None else ""
        size = step.get("tokens_out") if step.get("tokens_out") is not None else step.get("characters_out")
        extra = f"  {size:,} {report['unit'] if step.get('tokens_out') is None else 'tokens'}" if size else ""
        lines.append(f"  {step['stage']:<9} {docs_in:>10} -> {step['documents_out']:>10,} documents{extra}")
    if report.get("rules"):
        unit = report["unit"]
        lines.append(f"  removed by the policy (largest first, {unit} and share of the filter's input):")
        for row in build.ranked_removals(report)[:6]:
            share = f"{100 * row['share']:.1f}%" if row.get("share") is not None else "–"
            size, docs = f"{row[unit]:>12,} {unit}", f"{row['documents']:,} documents"
            lines.append(f"    {row['rule']:<44} {size} {share:>6}  {docs}")
    if report.get("duplicates"):
        d = report["duplicates"]
        lines.append(f"  dedup:   {d['removed']:,} removed in {d['clusters']:,} clusters")
    if report["quarantine"]:
        lines.append("  quarantine: " + ", ".join(f"{k}={v:,}" for k, v in report["quarantine"].items()))
    return lines
