"""The filter report of a run: report.json, report.md and a self-contained report.html."""

from __future__ import annotations

import html
import json
from collections import Counter
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.filtering import read_signals, signal_files
from pipelines.ingest import document_files, quarantine_counts
from pipelines.rundir import RunDir, write_atomic, write_json

TOP_LANGUAGES = 20


def build_report(run: RunDir) -> dict[str, Any]:
    """Aggregate a run's outputs into one JSON-able report."""
    record = run.load()
    report: dict[str, Any] = {
        "run_id": record.get("run_id"),
        "inputs": record.get("inputs", []),
        "stages": {
            name: {k: v for k, v in stage.items() if k in ("status", "seconds")}
            for name, stage in record.get("stages", {}).items()
        },
    }
    docs_in = sum(pq.read_metadata(p).num_rows for p in document_files(run))
    quarantine = quarantine_counts(run)
    funnel = [{"stage": "ingest", "documents_out": docs_in, "quarantined": sum(quarantine.values())}]
    report["quarantine"] = dict(sorted(quarantine.items(), key=lambda kv: -kv[1]))
    if signal_files(run):
        signals = read_signals(run, ["lang", "keep", "reasons", "n_chars"])
        keep = signals.column("keep")
        kept = int(pc.sum(keep).as_py() or 0)
        chars_in = int(pc.sum(signals.column("n_chars")).as_py() or 0)
        chars_kept = int(pc.sum(pc.if_else(keep, signals.column("n_chars"), 0)).as_py() or 0)
        funnel.append(
            {
                "stage": "filter",
                "documents_in": signals.num_rows,
                "documents_out": kept,
                "characters_in": chars_in,
                "characters_out": chars_kept,
            }
        )
        report["drop_reasons"] = _drop_reasons(signals.column("reasons").to_pylist())
        langs = signals.column("lang").to_pylist()
        kept_list = keep.to_pylist()
        report["languages"] = {
            "all": dict(Counter(langs).most_common(TOP_LANGUAGES)),
            "kept": dict(
                Counter(lang for lang, k in zip(langs, kept_list, strict=True) if k).most_common(
                    TOP_LANGUAGES
                )
            ),
        }
    removed_path = run.dedup / "removed.parquet"
    if removed_path.exists():
        removed = pq.read_table(removed_path)
        before = funnel[-1]["documents_out"]
        funnel.append(
            {
                "stage": "dedup",
                "documents_in": before,
                "documents_out": before - removed.num_rows,
                "exact_duplicates": int(pc.sum(pc.equal(removed.column("similarity"), 1.0)).as_py() or 0),
            }
        )
        report["duplicate_examples"] = removed.slice(0, 10).to_pylist()
    manifest_path = run.tokens / "manifest.json"
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        funnel.append(
            {
                "stage": "tokenize",
                "documents_in": funnel[-1]["documents_out"],
                "documents_out": manifest["totals"]["documents"],
                "tokens_out": manifest["totals"]["tokens"],
                "splits": {
                    s: {"documents": v["documents"], "tokens": v["tokens"], "shards": len(v["shards"])}
                    for s, v in manifest["splits"].items()
                },
                "vocab_size": manifest["tokenizer"]["vocab_size"],
            }
        )
    report["funnel"] = funnel
    return report


def _drop_reasons(reasons: list[list[str]]) -> list[dict[str, Any]]:
    """Per rule: documents it drops in all, and documents it alone drops."""
    overall: Counter[str] = Counter()
    alone: Counter[str] = Counter()
    for rs in reasons:
        overall.update(rs)
        if len(rs) == 1:
            alone[rs[0]] += 1
    return [{"reason": r, "documents": n, "only_reason": alone[r]} for r, n in overall.most_common()]


def write_report(run: RunDir) -> dict[str, Any]:
    """Build the report and write report.json, report.md and report.html."""
    report = build_report(run)
    run.report.mkdir(parents=True, exist_ok=True)
    write_json(run.report / "report.json", report)
    write_atomic(run.report / "report.md", render_markdown(report))
    write_atomic(run.report / "report.html", render_html(report))
    return report


def _funnel_rows(report: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    rows = []
    for step in report["funnel"]:
        extra = {
            k: v for k, v in step.items() if k not in ("stage", "documents_in", "documents_out", "splits")
        }
        rows.append(
            (
                step["stage"],
                _fmt(step.get("documents_in", "")),
                _fmt(step["documents_out"]),
                ", ".join(f"{k}={_fmt(v)}" for k, v in extra.items()),
            )
        )
    return rows


def _fmt(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


def render_markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# gristmill report — run `{report['run_id']}`",
        "",
        "## Funnel",
        "",
        "| stage | documents in | documents out | details |",
        "|---|---:|---:|---|",
    ]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in _funnel_rows(report)]
    if report.get("drop_reasons"):
        lines += ["", "## Drop reasons", "", "| rule | documents | only this rule |", "|---|---:|---:|"]
        lines += [
            f"| {r['reason']} | {r['documents']:,} | {r['only_reason']:,} |" for r in report["drop_reasons"]
        ]
    lines += ["", "## Quarantine", ""]
    if report["quarantine"]:
        lines += ["| reason | records |", "|---|---:|"]
        lines += [f"| {k} | {v:,} |" for k, v in report["quarantine"].items()]
    else:
        lines.append("Nothing was quarantined.")
    if report.get("languages"):
        lines += ["", "## Languages (top)", "", "| language | documents | kept |", "|---|---:|---:|"]
        kept = report["languages"]["kept"]
        lines += [f"| {k} | {v:,} | {kept.get(k, 0):,} |" for k, v in report["languages"]["all"].items()]
    lines += ["", "## Stage timings", "", "| stage | status | seconds |", "|---|---|---:|"]
    lines += [f"| {k} | {v.get('status')} | {v.get('seconds', '')} |" for k, v in report["stages"].items()]
    return "\n".join(lines) + "\n"


def _bars(title: str, items: list[tuple[str, int]]) -> str:
    """A horizontal bar chart in inline SVG."""
    if not items:
        return ""
    top = max(v for _, v in items) or 1
    row, label_w, bar_w = 22, 170, 420
    parts = [
        f'<svg class="chart" role="img" aria-label="{html.escape(title)}" width="{label_w + bar_w + 80}" '
        f'height="{row * len(items) + 10}" xmlns="http://www.w3.org/2000/svg">'
    ]
    for i, (label, value) in enumerate(items):
        y = 5 + i * row
        width = max(1, round(bar_w * value / top))
        parts.append(
            f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end">{html.escape(label)}</text>'
            f'<rect x="{label_w}" y="{y + 3}" width="{width}" height="{row - 6}" fill="#4a7fb5"/>'
            f'<text x="{label_w + width + 6}" y="{y + 15}">{value:,}</text>'
        )
    parts.append("</svg>")
    return f"<h3>{html.escape(title)}</h3>" + "".join(parts)


def _table(headers: list[str], rows: list[tuple[Any, ...]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(report: dict[str, Any]) -> str:
    """One self-contained page (inline CSS and SVG, no scripts or external resources)."""
    sections = [
        f"<h1>gristmill report — run <code>{html.escape(str(report['run_id']))}</code></h1>",
        "<h2>Funnel</h2>",
        _table(["stage", "documents in", "documents out", "details"], _funnel_rows(report)),
        _bars("Documents after each stage", [(s["stage"], s["documents_out"]) for s in report["funnel"]]),
    ]
    if report.get("drop_reasons"):
        sections += [
            "<h2>Drop reasons</h2>",
            _table(
                ["rule", "documents", "only this rule"],
                [(r["reason"], r["documents"], r["only_reason"]) for r in report["drop_reasons"]],
            ),
            _bars(
                "Documents failing each rule", [(r["reason"], r["documents"]) for r in report["drop_reasons"]]
            ),
        ]
    sections.append("<h2>Quarantine</h2>")
    sections.append(
        _table(["reason", "records"], list(report["quarantine"].items()))
        if report["quarantine"]
        else "<p>Nothing was quarantined.</p>"
    )
    if report.get("languages"):
        sections += [
            "<h2>Languages</h2>",
            _bars("Documents per detected language (top)", list(report["languages"]["all"].items())),
        ]
    if report.get("duplicate_examples"):
        sections += [
            "<h2>Duplicate examples</h2>",
            _table(
                ["removed", "duplicate of", "similarity"],
                [
                    (d["id"], d["duplicate_of"], f"{d['similarity']:.3f}")
                    for d in report["duplicate_examples"]
                ],
            ),
        ]
    sections += [
        "<h2>Stage timings</h2>",
        _table(
            ["stage", "status", "seconds"],
            [(k, v.get("status"), v.get("seconds", "")) for k, v in report["stages"].items()],
        ),
    ]
    style = (
        "body{font-family:system-ui,sans-serif;margin:2em;max-width:60em;color:#222}"
        "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;"
        "text-align:left}th{background:#eef}.chart text{font-size:12px;fill:#222}"
    )
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>gristmill report '
        f"{html.escape(str(report['run_id']))}</title><style>{style}</style></head><body>"
        + "\n".join(sections)
        + "</body></html>\n"
    )


def summary_lines(report: dict[str, Any]) -> list[str]:
    """A one-screen summary of a run for the console."""
    lines = [f"gristmill run {report['run_id']}"]
    for stage, docs_in, docs_out, details in _funnel_rows(report):
        lines.append(f"  {stage:<9} {docs_in:>10} -> {docs_out:>10}  {details}")
    if report.get("drop_reasons"):
        lines.append(
            "  drops:   " + ", ".join(f"{r['reason']}={r['documents']:,}" for r in report["drop_reasons"][:8])
        )
    if report["quarantine"]:
        lines.append("  quarantine: " + ", ".join(f"{k}={v:,}" for k, v in report["quarantine"].items()))
    return lines
