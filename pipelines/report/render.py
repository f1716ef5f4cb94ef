"""Render built reports as one self-contained HTML page and as Markdown."""

from __future__ import annotations

import html
from typing import Any

from pipelines.report import charts

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:1.5em auto;max-width:72em;color:#222;
padding:0 1em}
h1{font-size:1.5em}h2{margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}
td,th{border:1px solid #d5d5d5;padding:.25em .55em;
vertical-align:top;text-align:left}th{background:#eef2f8}td.n{text-align:right;font-variant-numeric:tabular-nums}
.grid{display:flex;flex-wrap:wrap;gap:.5em 1.5em}figure{margin:.3em 0}figcaption{font-size:.85em;color:#555}
.chart text{font-size:10px;fill:#333}.excerpt{white-space:pre-wrap;font-size:.85em;max-width:48em;color:#333}
.cards{display:flex;gap:1em;flex-wrap:wrap}.card{background:#f4f6fa;border-radius:6px;padding:.6em 1em}
.card b{display:block;font-size:1.3em}details{margin:.3em 0}summary{cursor:pointer}
"""


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def num(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def pct(part: Any, whole: Any) -> str:
    return f"{100 * part / whole:.1f}%" if part is not None and whole else "–"


def _cell(value: Any, numeric: bool) -> str:
    if isinstance(value, tuple):  # (pre-escaped HTML,)
        return f"<td>{value[0]}</td>"
    if numeric and not isinstance(value, str):
        return f'<td class="n">{esc(num(value))}</td>'
    return f"<td>{esc(value)}</td>"


def table(headers: list[str], rows: list[list[Any]], numeric_from: int = 1) -> str:
    """An HTML table; cells from column `numeric_from` on are right-aligned numbers."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(_cell(c, j >= numeric_from) for j, c in enumerate(row)) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def md_table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += [
        "| " + " | ".join(num(c).replace("|", "\\|").replace("\n", " ") for c in row) + " |" for row in rows
    ]
    return [*lines, ""]


def _page(title: str, sections: list[str]) -> str:
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
        f'content="width=device-width,initial-scale=1"><title>{esc(title)}</title><style>{STYLE}</style></head>'
        f"<body><h1>{esc(title)}</h1>" + "\n".join(s for s in sections if s) + "</body></html>\n"
    )


def _funnel_rows(report: dict[str, Any]) -> list[list[Any]]:
    return [
        [
            s["stage"],
            s.get("documents_in"),
            s.get("documents_out"),
            pct(s.get("documents_out"), s.get("documents_in")),
            s.get("characters_out"),
            s.get("tokens_in"),
            s.get("tokens_out"),
            pct(s.get("tokens_out"), s.get("tokens_in")),
        ]
        for s in report["funnel"]
    ]


FUNNEL_HEADERS = [
    "stage",
    "documents in",
    "documents out",
    "kept",
    "characters out",
    "tokens in",
    "tokens out",
    "tokens kept",
]


def _threshold(rule: dict[str, Any]) -> str:
    parts = []
    if rule.get("min") is not None:
        parts.append(f"≥ {num(rule['min'])}")
    if rule.get("max") is not None:
        parts.append(f"≤ {num(rule['max'])}")
    return " and ".join(parts)


def _rule_rows(report: dict[str, Any]) -> list[list[Any]]:
    unit = report["unit"]
    total = next((s["documents_in"] for s in report["funnel"] if s["stage"] == "filter"), None)
    return [
        [
            r["rule"],
            r.get("signal") or "",
            _threshold(r),
            r["documents"],
            pct(r["documents"], total),
            r["documents_alone"],
            r[unit],
            r[f"{unit}_alone"],
        ]
        for r in report.get("rules", [])
    ]


def _rule_headers(unit: str) -> list[str]:
    return [
        "rule",
        "signal",
        "keeps",
        "documents",
        "of filter input",
        "documents (only this rule)",
        unit,
        f"{unit} (only this rule)",
    ]


def _examples_html(rule: dict[str, Any]) -> str:
    def rows(items: list[dict[str, Any]]) -> list[list[Any]]:
        return [
            [
                item["id"],
                item.get("value"),
                ", ".join(item.get("reasons") or []) or "kept",
                (f'<div class="excerpt">{esc(item.get("excerpt"))}</div>',),
            ]
            for item in items
        ]

    headers = ["id", rule.get("signal") or "value", "failed rules", "excerpt"]
    out = f"<details><summary><b>{esc(rule['rule'])}</b>: {len(rule['examples'])} dropped examples"
    out += f", {len(rule['borderline'])} borderline kept</summary>"
    out += "<h4>Dropped</h4>" + table(headers, rows(rule["examples"]), numeric_from=1)
    if rule["borderline"]:
        out += "<h4>Kept, closest to the threshold</h4>" + table(
            headers, rows(rule["borderline"]), numeric_from=1
        )
    return out + "</details>"


def render_html(report: dict[str, Any]) -> str:
    """The run's report page."""
    unit = report["unit"]
    funnel = report["funnel"]
    first, last = funnel[0], funnel[-1]
    sections = [
        f"<p>Inputs: {esc(', '.join(report['inputs']))}. Sizes are counted in <b>{esc(unit)}</b>.</p>",
        '<div class="cards">'
        + "".join(
            f'<div class="card"><b>{esc(v)}</b>{esc(k)}</div>'
            for k, v in (
                ("documents read", num(first["documents_out"])),
                ("documents in the corpus", num(last["documents_out"])),
                (f"{unit} in the corpus", num(last.get("tokens_out") or last.get("characters_out"))),
                ("records quarantined", num(sum(report["quarantine"].values()))),
                *(
                    [("bytes per token (held-out text)", f"{report['tokenizer']['bytes_per_token']:.2f}")]
                    if (report.get("tokenizer") or {}).get("bytes_per_token")
                    else []
                ),
            )
        )
        + "</div>",
        "<h2>Funnel</h2>",
        table(FUNNEL_HEADERS, _funnel_rows(report)),
        charts.hbars("Documents after each stage", [(s["stage"], s["documents_out"]) for s in funnel]),
    ]
    if report.get("rules"):
        sections += [
            "<h2>Rules</h2>",
            "<p>Documents and tokens each rule removes overall, and those it alone removes (no other rule "
            "would have dropped them).</p>",
            table(_rule_headers(unit), _rule_rows(report)),
            charts.hbars(
                "Documents failing each rule", [(r["rule"], r["documents"]) for r in report["rules"]]
            ),
            "<h3>Examples</h3>",
            *(_examples_html(r) for r in report["rules"]),
        ]
    if report.get("histograms"):
        sections += [
            "<h2>Signals</h2>",
            "<p>All documents (light) and kept documents (dark); policy thresholds in red.</p>",
            '<div class="grid">',
        ]
        sections += [
            charts.histogram(
                name + (" (log scale)" if h["log_scale"] else ""),
                h["edges"],
                h["counts"],
                h["kept"],
                h["thresholds"],
                h["log_scale"],
            )
            for name, h in report["histograms"].items()
        ]
        sections.append("</div>")
    if report.get("curves"):
        sections += [
            f"<h2>Thresholds: kept {esc(unit)}</h2>",
            "<p>Kept size of the corpus as one threshold moves and every other rule stays as it is; "
            "the red line is the current threshold.</p>",
            '<div class="grid">',
        ]
        sections += [
            charts.curve(
                f"{c['rule']} ({c['signal']} {c['side']})", c["thresholds"], c[f"kept_{unit}"], c["current"]
            )
            for c in report["curves"].values()
        ]
        sections.append("</div>")
    if report.get("languages"):
        top = report["languages"]["top"]
        sections += [
            f"<h2>Languages ({report['languages']['distinct']} detected)</h2>",
            charts.hbars("Documents per language (top)", [(t["lang"], t["documents"]) for t in top]),
            table(
                ["language", "documents", "kept", "kept share"],
                [[t["lang"], t["documents"], t["kept"], pct(t["kept"], t["documents"])] for t in top],
            ),
        ]
    if report.get("duplicates"):
        sections += _duplicates_html(report["duplicates"])
    sections.append("<h2>Quarantine</h2>")
    sections.append(
        table(["reason", "records"], [[k, v] for k, v in report["quarantine"].items()])
        if report["quarantine"]
        else "<p>Nothing was quarantined.</p>"
    )
    sections += [
        "<h2>Stages</h2>",
        table(
            ["stage", "status", "seconds", "documents", "documents/s"],
            [
                [k, v["status"] or "", v["seconds"], v["documents"], v["documents_per_second"]]
                for k, v in report["stages"].items()
            ],
        ),
    ]
    return _page(f"gristmill report — run {report['run_id']}", sections)


def _duplicates_summary(d: dict[str, Any]) -> str:
    parts = [f"{num(d['removed'])} documents removed in {num(d['clusters'])} clusters"]
    if "removed_exact" in d:
        parts.append(
            f"{num(d['removed_exact'])} exact duplicates after normalization, "
            f"{num(d['removed_near'])} near-duplicates, {num(d['removed_matching_earlier_runs'])} "
            "matching documents kept by earlier runs"
        )
    return "; ".join(parts) + "."


def _duplicates_html(d: dict[str, Any]) -> list[str]:
    out = [
        "<h2>Duplicates</h2>",
        f"<p>{esc(_duplicates_summary(d))}</p>",
        charts.hbars("Clusters by size (documents per cluster)", list(d["cluster_sizes"].items())),
    ]
    if d.get("largest_clusters"):
        out.append(
            table(
                ["kept document", "cluster size", "removed", "lowest similarity"],
                [
                    [c["survivor"], c["size"], c["removed"], c.get("min_similarity")]
                    for c in d["largest_clusters"]
                ],
            )
        )
    out.append(
        table(
            ["removed", "kept as", "kind", "similarity", "removed text", "kept text"],
            [
                [
                    e["id"],
                    e["duplicate_of"],
                    e.get("kind", ""),
                    e["similarity"],
                    (f'<div class="excerpt">{esc(e.get("text"))}</div>',),
                    (f'<div class="excerpt">{esc(e.get("duplicate_of_text"))}</div>',),
                ]
                for e in d["examples"]
            ],
            numeric_from=3,
        )
    )
    return out


def render_markdown(report: dict[str, Any]) -> str:
    """The run's report as Markdown (tables only)."""
    unit = report["unit"]
    lines = [f"# gristmill report — run `{report['run_id']}`", "", f"Sizes in {unit}.", "", "## Funnel", ""]
    lines += md_table(FUNNEL_HEADERS, _funnel_rows(report))
    tokenizer = report.get("tokenizer") or {}
    if tokenizer.get("bytes_per_token"):
        lines += [
            f"Tokenizer: {tokenizer['vocab_size']:,} tokens, {tokenizer['bytes_per_token']:.2f} bytes per "
            f"token on {tokenizer['heldout_documents']:,} held-out (validation) documents.",
            "",
        ]
    if report.get("rules"):
        lines += ["## Rules", "", *md_table(_rule_headers(unit), _rule_rows(report))]
    if report.get("languages"):
        lines += ["## Languages (top)", ""]
        lines += md_table(
            ["language", "documents", "kept"],
            [[t["lang"], t["documents"], t["kept"]] for t in report["languages"]["top"]],
        )
    if report.get("duplicates"):
        d = report["duplicates"]
        lines += ["## Duplicates", "", _duplicates_summary(d), ""]
        lines += md_table(["cluster size", "clusters"], [[k, v] for k, v in d["cluster_sizes"].items()])
    lines += ["## Quarantine", ""]
    lines += (
        md_table(["reason", "records"], [[k, v] for k, v in report["quarantine"].items()])
        if report["quarantine"]
        else ["Nothing was quarantined.", ""]
    )
    lines += ["## Stages", ""]
    lines += md_table(
        ["stage", "status", "seconds", "documents/s"],
        [[k, v["status"], v["seconds"], v["documents_per_second"]] for k, v in report["stages"].items()],
    )
    return "\n".join(lines)


def _whatif_rows(cmp: dict[str, Any], unit: str) -> list[list[Any]]:
    return [
        [r["rule"], r["documents_before"], r["documents_after"], r[f"{unit}_before"], r[f"{unit}_after"]]
        for r in cmp["rules"]
    ]


def render_whatif(cmp: dict[str, Any], run_id: str, policy: str, unit: str, fmt: str) -> str:
    """A what-if comparison (policy of the run vs another policy) as HTML or Markdown."""
    headers = ["rule", "documents before", "documents after", f"{unit} before", f"{unit} after"]
    totals = [
        ["kept documents", cmp["kept_documents_before"], cmp["kept_documents_after"]],
        [f"kept {unit}", cmp[f"kept_{unit}_before"], cmp[f"kept_{unit}_after"]],
        ["newly dropped documents", None, cmp["newly_dropped"]],
        ["newly kept documents", None, cmp["newly_kept"]],
    ]
    title = f"gristmill what-if — run {run_id} with {policy}"
    if fmt == "md":
        return "\n".join(
            [
                f"# {title}",
                "",
                *md_table(["", "run's policy", policy], totals),
                *md_table(headers, _whatif_rows(cmp, unit)),
            ]
        )
    return _page(
        title,
        [
            "<h2>Totals</h2>",
            table(["", "run's policy", policy], totals),
            "<h2>Per rule</h2>",
            table(headers, _whatif_rows(cmp, unit)),
        ],
    )


def render_diff(diff: dict[str, Any], fmt: str) -> str:
    """A run-to-run diff as HTML or Markdown (each cell: other run → this run)."""

    def pair(values: list[Any]) -> str:
        return f"{num(values[0])} → {num(values[1])}"

    blocks = [
        (
            "Stages",
            ["stage", "documents out", "keep rate", "tokens out"],
            [
                [s["stage"], pair(s["documents_out"]), pair(s["keep_rate"]), pair(s["tokens_out"])]
                for s in diff["stages"]
            ],
        ),
        (
            "Drop rate per rule",
            ["rule", "drop rate"],
            [[r["rule"], pair(r["drop_rate"])] for r in diff["rules"]],
        ),
        (
            "Language shares",
            ["language", "share"],
            [[x["lang"], pair(x["share"])] for x in diff["languages"]],
        ),
        (
            "Signals",
            ["signal", "median", "mean"],
            [[s["signal"], pair(s["median"]), pair(s["mean"])] for s in diff["signals"]],
        ),
        (
            "Quarantine",
            ["reason", "records"],
            [[q["reason"], pair(q["records"])] for q in diff["quarantine"]],
        ),
    ]
    title = f"gristmill diff — {diff['against']} → {diff['run']}"
    if fmt == "md":
        lines = [f"# {title}", "", f"Duplicates removed: {pair(diff['duplicates_removed'])}", ""]
        for name, headers, rows in blocks:
            lines += [f"## {name}", "", *md_table(headers, rows)]
        return "\n".join(lines)
    sections = [
        f"<p>Each cell: <b>{esc(diff['against'])}</b> → <b>{esc(diff['run'])}</b>. Duplicates removed: "
        f"{esc(pair(diff['duplicates_removed']))}.</p>"
    ]
    for name, headers, rows in blocks:
        sections += [f"<h2>{esc(name)}</h2>", table(headers, rows, numeric_from=99)]
    return _page(title, sections)
