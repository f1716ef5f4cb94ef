"""The report's pages as view models, rendered through the Jinja2 templates in templates/.

A page is a title and sections of blocks, each computed once here; page.html.j2 renders any page as
one self-contained HTML file, page.md.j2 as Markdown. Markdown shows text and tables (charts, cards
and collapsed examples are HTML only); a table or section shown in one format only names it in
`formats`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import jinja2

from pipelines.report import build, charts

Format = Literal["html", "md"]
BOTH: tuple[Format, ...] = ("html", "md")


def num(value: Any) -> str:
    """A table value: thousands separators, four significant digits, '–' when missing."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def pct(part: Any, whole: Any) -> str:
    return f"{100 * part / whole:.1f}%" if part is not None and whole else "–"


def share(value: float | None) -> str:
    """A share (0..1) as a percentage."""
    return "–" if value is None else f"{100 * value:.1f}%"


def signed(value: Any) -> str:
    """A change with its sign: +1,234 or -0.0123."""
    if value is None:
        return "–"
    return ("+" if value > 0 else "") + num(value) if value else "0"


def points(value: float | None) -> str:
    """A change of a share, in percentage points."""
    return "–" if value is None else f"{100 * value:+.1f} pp"


class Figure(str):
    """A formatted number in a table cell (right-aligned in HTML)."""


class Excerpt(str):
    """Document text in a table cell (none: empty), shown with its line breaks in HTML."""

    def __new__(cls, text: str | None) -> Excerpt:
        return super().__new__(cls, text or "")


@dataclass
class Text:
    """A paragraph; every second part is emphasised."""

    parts: list[str]
    kind: ClassVar[str] = "text"


@dataclass
class Table:
    """Rows of cells; cells that are not text are numbers (formatted, right-aligned in HTML)."""

    headers: list[str]
    rows: list[list[Any]]
    formats: tuple[Format, ...] = BOTH
    kind: ClassVar[str] = "table"


@dataclass
class Charts:
    """Inline SVG charts (HTML only), side by side when `grid`."""

    svgs: list[str]
    grid: bool = False
    kind: ClassVar[str] = "charts"


@dataclass
class Cards:
    """Headline figures (HTML only) as (value, label)."""

    items: list[tuple[str, str]]
    kind: ClassVar[str] = "cards"


@dataclass
class Details:
    """A collapsed block (HTML only): a bold title, a summary and tables under their headings."""

    title: str
    summary: str
    tables: list[tuple[str, Table]]
    kind: ClassVar[str] = "details"


Block = Text | Table | Charts | Cards | Details
Report = dict[str, Any]


@dataclass
class Section:
    """A heading (none when `title` is empty) and its blocks."""

    title: str
    blocks: list[Block]
    level: int = 2
    formats: tuple[Format, ...] = BOTH

    @property
    def anchor(self) -> str:
        """The id of the section's heading (the table of contents links to it)."""
        return re.sub(r"[^a-z0-9]+", "-", self.title.lower()).strip("-")


@dataclass
class Page:
    title: str
    sections: list[Section]


_ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).with_name("templates")),
    autoescape=jinja2.select_autoescape(["html.j2"]),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_ENV.filters.update(num=num, md_cell=lambda value: num(value).replace("|", "\\|").replace("\n", " "))
_ENV.tests["excerpt"] = lambda value: isinstance(value, Excerpt)
_ENV.tests["figure"] = lambda value: isinstance(value, Figure)


def render(page: Page, fmt: Format) -> str:
    """The page as one self-contained HTML file or as Markdown."""
    return _ENV.get_template(f"page.{fmt}.j2").render(page=page)


def _funnel_row(s: dict[str, Any]) -> list[Any]:
    keys = ("documents_in", "documents_out", "characters_out", "tokens_in", "tokens_out")
    docs_in, docs_out, chars, tokens_in, tokens_out = (s.get(k) for k in keys)
    kept = pct(docs_out, docs_in), pct(tokens_out, tokens_in)
    return [s["stage"], docs_in, docs_out, kept[0], chars, tokens_in, tokens_out, kept[1]]


def _threshold(rule: dict[str, Any]) -> str:
    if "allow" in rule:
        return "in " + ", ".join(rule["allow"])
    bounds = [(sign, rule.get(key)) for sign, key in (("≥", "min"), ("≤", "max"))]
    return " and ".join(f"{sign} {num(value)}" for sign, value in bounds if value is not None)


def _rule_row(r: dict[str, Any], unit: str, total: int | None, member: bool = False) -> list[Any]:
    name = f"· {r['rule']}" if member else r["rule"]
    signal, keeps = (r.get("signal") or "", _threshold(r)) if "members" not in r else ("", "")
    sizes = [r[unit], Figure(share(r.get("share"))), r[f"{unit}_alone"]]
    docs = [r["documents"], Figure(pct(r["documents"], total)), r["documents_alone"]]
    return [name, signal, keeps, *sizes, *docs]


def _named(doc_id: str, source_id: str | None) -> str:
    """A document's id, with the record's own id (its source_id) when it has one."""
    return f"{doc_id} (id {source_id})" if source_id else doc_id


def _examples(rule: dict[str, Any]) -> Details:
    def table(items: list[dict[str, Any]]) -> Table:
        rows = [
            [
                _named(i["id"], i.get("source_id")),
                i.get("value"),
                ", ".join(i.get("reasons") or []) or "kept",
                Excerpt(i.get("excerpt")),
            ]
            for i in items
        ]
        return Table(["id", rule.get("signal") or "value", "failed rules", "excerpt"], rows)

    tables = [("Dropped", table(rule["examples"]))]
    if rule["borderline"]:
        tables.append(("Kept, closest to the threshold", table(rule["borderline"])))
    summary = f"{len(rule['examples'])} dropped examples, {len(rule['borderline'])} borderline kept"
    return Details(rule["rule"], summary, tables)


def _rules_section(report: Report, total: int | None) -> Iterator[Section]:
    unit, rules = report["unit"], report["rules"]
    ranked = build.ranked_removals(report)
    rows = []
    for r in ranked:
        rows.append(_rule_row(r, unit, total))
        rows += [_rule_row(m, unit, total, member=True) for m in r.get("members", []) if m["documents"]]
    headers = ["rule", "signal", "keeps", f"{unit} removed", f"of input {unit}", f"{unit} (only this rule)"]
    table = Table([*headers, "documents", "of input documents", "documents (only this rule)"], rows)
    idle = [r["rule"] for r in rules if not r["documents"]]
    intro = (
        f'Rules ranked by the {unit} they remove, with the share of the filter\'s input; "only this rule" '
        f"counts what no other rule would have removed (what relaxing only this rule wins back). Rules of "
        f"one family are one row (what any of them removes), with their rules under it."
    )
    blocks: list[Block] = [Text([intro]), table]
    if idle:
        blocks.append(Text([f"{len(idle)} rules removed nothing and are not listed: {', '.join(idle)}."]))
    bars = charts.hbars(f"{unit.capitalize()} removed by each rule", [(r["rule"], r[unit]) for r in ranked])
    yield Section("Rules", [*blocks, Charts([bars])])
    shown = [r for r in rules if r["documents"]]
    yield Section("Examples", [_examples(r) for r in shown], level=3, formats=("html",))


def _sources_section(report: Report) -> Section:
    unit = report["unit"]
    rows = []
    for s in report["sources"]:
        docs = [s["documents_in"], s["documents_kept"], s["documents_out"]]
        sizes = [s[f"{unit}_in"], s[f"{unit}_kept"], s[f"{unit}_out"]]
        left = Figure(pct(docs[2], docs[0])), Figure(pct(sizes[2], sizes[0]))
        rows.append([s["source"], *docs, left[0], *sizes, left[1]])
    headers = ["input", "documents", "kept by the policy", "after dedup", "documents left"]
    table = Table([*headers, unit, f"{unit} kept by the policy", f"{unit} after dedup", f"{unit} left"], rows)
    intro = "The funnel per input (the folder or file it was named by), largest first."
    return Section("Funnel per input", [Text([intro]), table])


def _languages_section(report: Report) -> Section:
    unit, languages = report["unit"], report["languages"]
    top = languages["top"]
    rows = [
        [
            t["lang"],
            t["documents"],
            t["kept"],
            Figure(pct(t["kept"], t["documents"])),
            t.get(unit),
            t.get(f"kept_{unit}"),
            Figure(pct(t.get(f"kept_{unit}"), t.get(unit))),
        ]
        for t in top
    ]
    headers = ["language", "documents", "kept", "kept share", unit, f"kept {unit}", f"kept {unit} share"]
    blocks: list[Block] = [
        Charts([charts.hbars("Documents per language (top)", [(t["lang"], t["documents"]) for t in top])]),
        Table(headers, rows),
    ]
    by_rule = languages.get("by_rule")
    if by_rule and by_rule["rules"]:
        langs, size_in = by_rule["languages"], by_rule[f"{unit}_in"]
        cells = [
            [r["rule"], *(Figure(f"{num(v)} ({pct(v, n)})") for v, n in zip(r[unit], size_in, strict=True))]
            for r in by_rule["rules"]
        ]
        intro = (
            f"{unit.capitalize()} each rule removes in the {len(langs)} largest languages, and the share "
            f"of that language's {unit}:"
        )
        first = ["input", *(Figure(num(n)) for n in size_in)]
        blocks += [Text([intro]), Table(["rule", *langs], [first, *cells])]
    return Section(f"Languages ({languages['distinct']} detected)", blocks)


def _pair_texts(pair: dict[str, Any]) -> list[Excerpt]:
    return [Excerpt(pair.get("text")), Excerpt(pair.get("duplicate_of_text"))]


def _duplicates(d: dict[str, Any]) -> Section:
    summary = f"{num(d['removed'])} documents removed in {num(d['clusters'])} clusters"
    if "removed_exact" in d:
        summary += (
            f"; {num(d['removed_exact'])} exact duplicates after normalization, {num(d['removed_near'])} "
            f"near-duplicates, {num(d['removed_matching_earlier_runs'])} matching documents kept by "
            "earlier runs"
        )
    sizes = list(d["cluster_sizes"].items())
    blocks: list[Block] = [
        Text([summary + "."]),
        Charts([charts.hbars("Clusters by size (documents per cluster)", sizes)]),
        Table(["cluster size", "clusters"], [list(s) for s in sizes], formats=("md",)),
    ]
    if d.get("largest_clusters"):
        rows = [
            [c["survivor"], c["size"], c["removed"], c.get("min_similarity")] for c in d["largest_clusters"]
        ]
        blocks.append(Table(["kept document", "cluster size", "removed", "lowest similarity"], rows))
    headers = ["removed", "kept as", "kind", "similarity", "removed text", "kept text"]
    rows = [
        [
            _named(e["id"], e.get("source_id")),
            _named(e["duplicate_of"], e.get("duplicate_of_source_id")),
            e.get("kind", ""),
            e["similarity"],
            *_pair_texts(e),
        ]
        for e in d["examples"]
    ]
    return Section("Duplicates", [*blocks, Table(headers, rows, formats=("html",))])


def _ablation_section(a: dict[str, Any]) -> Section:
    """Variant -> tokens kept, bits per byte on each evaluation set, delta against the baseline with
    the seed spread, and the held-out loss against training tokens (ablation/results.json)."""
    s, base, sets = a["settings"], a["baseline"], [e["name"] for e in a["eval_sets"]]
    model = f"preset {s['preset']}, {num(s['parameters'])} parameters"
    schedule = f"{num(s['steps'])} steps of {s['batch_size']} × {s['seq_len']} tokens"
    evals = "; ".join(f"{e['name']} ({e['source']})" for e in a["eval_sets"])
    excluded = ", ".join(f"{k} {num(v)}" for k, v in a["excluded"].items()) or "none"
    lead = [
        f"The same model ({model}) trained on each variant with seeds {', '.join(map(str, s['seeds']))} and "
        f"exactly {num(s['training_tokens'])} training tokens ({schedule}); a variant smaller than that "
        f"repeats (epochs > 1). Evaluated on {evals}. Left out of every variant: {excluded}. Spread: "
        f"the largest minus the smallest value over the seeds; a variant is better or worse than {base} "
        "when the difference of the means exceeds the spread of either."
    ]
    headers = ["variant", "documents", "tokens kept", "epochs"]
    for name in sets:
        headers += [f"{name} bits/byte", "spread", f"vs {base}", ""]
    rows = []
    for v in a["variants"]:
        row = [v["name"], v["documents"], v["train_tokens"], v["epochs"]]
        for name in sets:
            e, baseline = v["eval"][name], v["name"] == base
            delta = "" if baseline else signed(e["delta_vs_baseline"])
            row += [e["bits_per_byte"], e["bits_per_byte_spread"], delta, "" if baseline else e["verdict"]]
        rows.append(row)
    blocks: list[Block] = [Text(lead), Table(headers, rows)]
    if a["failed"]:
        blocks.append(Text(["Failed: " + "; ".join(a["failed"]) + "."]))
    series = [(v["name"], [p[0] for p in v["curve"]], [p[1] for p in v["curve"]]) for v in a["variants"]]
    title = f"{sets[0]} loss (nats per token, mean over seeds) against training tokens"
    blocks.append(Charts([charts.lines(title, [line for line in series if line[1]])]))
    return Section("Data-quality ablation", blocks)


def _report_sections(report: Report) -> Iterator[Section]:
    unit, funnel, tokenizer = report["unit"], report["funnel"], report.get("tokenizer") or {}
    bpt, last = tokenizer.get("bytes_per_token"), funnel[-1]
    cards = [
        (num(funnel[0]["documents_out"]), "documents read"),
        (num(last["documents_out"]), "documents in the corpus"),
        (num(last.get("tokens_out") or last.get("characters_out")), f"{unit} in the corpus"),
        (num(sum(report["quarantine"].values())), "records quarantined"),
    ]
    headers = ["stage", "documents in", "documents out", "kept", "characters out", "tokens in", "tokens out"]
    funnel_blocks: list[Block] = [Table([*headers, "tokens kept"], [_funnel_row(s) for s in funnel])]
    if bpt:
        cards.append((f"{bpt:.2f}", "bytes per token (held-out text)"))
        vocab, heldout = tokenizer["vocab_size"], tokenizer["heldout_documents"]
        text = f"Tokenizer: {vocab:,} tokens, {bpt:.2f} bytes per token on {heldout:,} held-out (validation)"
        funnel_blocks.append(Text([text + " documents."]))
    lead = Text([f"Inputs: {', '.join(report['inputs'])}. Sizes are counted in ", unit, "."])
    bars = charts.hbars("Documents after each stage", [(s["stage"], s["documents_out"]) for s in funnel])
    yield Section("", [lead, Cards(cards)])
    yield Section("Funnel", [*funnel_blocks, Charts([bars])])
    if report.get("sources"):
        yield _sources_section(report)
    if report.get("rules"):
        total = next((s["documents_in"] for s in funnel if s["stage"] == "signals"), None)
        yield from _rules_section(report, total)
    if histograms := report.get("histograms"):
        fields = ("edges", "counts", "kept", "thresholds", "log_scale")
        plots = [
            charts.histogram(name + (" (log scale)" if h["log_scale"] else ""), *(h[k] for k in fields))
            for name, h in histograms.items()
        ]
        intro = "All documents (light) and kept documents (dark); policy thresholds in red."
        yield Section("Signals", [Text([intro]), Charts(plots, grid=True)], formats=("html",))
    if curves := report.get("curves"):
        plots = [
            charts.curve(
                f"{c['rule']} ({c['signal']} {c['side']})", c["thresholds"], c[f"kept_{unit}"], c["current"]
            )
            for c in curves.values()
        ]
        intro = (
            "Kept size of the corpus as one threshold moves and every other rule stays as it is; "
            "the red line is the current threshold."
        )
        yield Section(
            f"Thresholds: kept {unit}", [Text([intro]), Charts(plots, grid=True)], formats=("html",)
        )
    if report.get("languages"):
        yield _languages_section(report)
    if report.get("duplicates"):
        yield _duplicates(report["duplicates"])
    if report.get("ablation"):
        yield _ablation_section(report["ablation"])
    rows = [[k, v] for k, v in report["quarantine"].items()]
    yield Section(
        "Quarantine", [Table(["reason", "records"], rows) if rows else Text(["Nothing was quarantined."])]
    )
    rows = [
        [k, v["status"] or "", v["seconds"], v["documents"], v["documents_per_second"]]
        for k, v in report["stages"].items()
    ]
    yield Section("Stages", [Table(["stage", "status", "seconds", "documents", "documents/s"], rows)])


def report_page(report: Report) -> Page:
    """The run's report; a section is added with one more `yield` in `_report_sections`."""
    return Page(f"gristmill report — run {report['run_id']}", list(_report_sections(report)))


def _value(value: Any) -> str:
    """A setting's value in a change table."""
    if value is None:
        return "–"
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "[]"
    return num(value)


def _changes_table(changes: list[dict[str, Any]], before: str, after: str, none: str) -> Block:
    if not changes:
        return Text([none])
    rows = [[c["setting"], _value(c["before"]), _value(c["after"])] for c in changes]
    return Table(["setting", before, after], rows)


def _flip_details(title: str, examples: dict[str, list[dict[str, Any]]], before: str, after: str) -> Details:
    def table(items: list[dict[str, Any]]) -> Table:
        rows = [
            [
                i["id"],
                ", ".join(i["reasons_before"]) or "kept",
                ", ".join(i["reasons_after"]) or "kept",
                Excerpt(i.get("excerpt")),
            ]
            for i in items
        ]
        return Table(["id", f"failed rules ({before})", f"failed rules ({after})", "excerpt"], rows)

    dropped, kept = examples.get("newly_dropped", []), examples.get("newly_kept", [])
    tables = [
        (heading, table(items))
        for heading, items in (("Newly dropped", dropped), ("Newly kept", kept))
        if items
    ]
    return Details(title, f"{len(dropped)} newly dropped, {len(kept)} newly kept examples", tables)


def whatif_page(cmp: dict[str, Any], run_id: str, policy: str, unit: str) -> Page:
    """A what-if: what changed between the run's policy and another, the totals, the rules whose
    results changed, and documents whose keep/drop flipped."""
    docs_in, size_in = cmp["documents_in"], cmp[f"{unit}_in"]

    def total(label: str, before: int | None, after: int, whole: int) -> list[Any]:
        change = None if before is None else after - before
        return [
            label,
            before,
            Figure(pct(before, whole)),
            after,
            Figure(pct(after, whole)),
            Figure(signed(change)),
        ]

    totals = [
        total("kept documents", cmp["kept_documents_before"], cmp["kept_documents_after"], docs_in),
        total(f"kept {unit}", cmp[f"kept_{unit}_before"], cmp[f"kept_{unit}_after"], size_in),
        total("newly dropped documents", None, cmp["newly_dropped"], docs_in),
        total(f"newly dropped {unit}", None, cmp[f"newly_dropped_{unit}"], size_in),
        total("newly kept documents", None, cmp["newly_kept"], docs_in),
        total(f"newly kept {unit}", None, cmp[f"newly_kept_{unit}"], size_in),
    ]
    totals_headers = ["", "run's policy", "of input", policy, "of input", "change"]
    rows = [
        [
            r["rule"],
            r["in"],
            r["documents_before"],
            r["documents_after"],
            Figure(signed(r["documents_change"])),
            r[f"{unit}_before"],
            r[f"{unit}_after"],
            Figure(signed(r[f"{unit}_change"])),
            Figure(share(r["share_before"])),
            Figure(share(r["share_after"])),
        ]
        for r in cmp["rules"]
    ]
    headers = ["rule", "in", "documents before", "documents after", "documents change"]
    headers += [f"{unit} before", f"{unit} after", f"{unit} change", "share before", "share after"]
    lead = Text(
        [
            f"Inputs to the policy: {num(docs_in)} documents, {num(size_in)} {unit}. Before: the run's "
            f"policy; after: {policy}."
        ]
    )
    unchanged = Text([f"{cmp['unchanged_rules']} rules with unchanged results are not shown."])
    examples = [
        _flip_details(r["rule"], r["examples"], "run's policy", policy)
        for r in cmp["rules"]
        if r["examples"]["newly_dropped"] or r["examples"]["newly_kept"]
    ]
    sections = [
        Section("", [lead]),
        Section(
            "Policy changes",
            [_changes_table(cmp["changes"], "run's policy", policy, "The policies are equal.")],
        ),
        Section("Totals", [Table(totals_headers, totals)]),
        Section(
            "Rules that changed",
            [Table(headers, rows) if rows else Text(["No rule's result changed."]), unchanged],
        ),
        Section(
            "Examples",
            examples or [Text(["No document changed between keep and drop."])],
            level=3,
            formats=("html",),
        ),
    ]
    return Page(f"gristmill what-if — run {run_id} with {policy}", sections)


DIFF_TABLES = {
    "Stages": ("stages", "stage", "stage", {"documents out": num, "keep rate": share, "bytes out": num}),
    "Rules": ("rules", "rule", "rule", {"drop rate": share, "bytes share": share}),
    "Language shares": ("languages", "language", "lang", {"share": share}),
    "Signals": ("signals", "signal", "signal", {"median": num, "mean": num}),
    "Quarantine": ("quarantine", "reason", "reason", {"records": num}),
}
"""Per table of the diff: its list in the diff, first column (header, field), value columns and how a
value is shown (shares as percentages, their changes in percentage points)."""


def diff_page(diff: dict[str, Any]) -> Page:
    """A run-to-run diff: config and policy changes, then the rows whose figures changed (`other → this`
    and the change), then documents whose keep/drop flipped."""
    other, this = diff["against"], diff["run"]

    def cells(values: list[Any], fmt: Any) -> list[Any]:
        change = values[2]
        shown = points(change) if fmt is share else signed(change)
        return [Figure(f"{fmt(values[0])} → {fmt(values[1])}"), Figure(shown)]

    lead = Text(
        [
            f"Each figure: {other} → {this}, then the change. Sizes are UTF-8 bytes: each run trains its own "
            f"tokenizer, so token counts do not compare across runs. Duplicates removed: "
            f"{num(diff['duplicates_removed'][0])} → {num(diff['duplicates_removed'][1])}."
        ]
    )
    sections = [
        Section("", [lead]),
        Section(
            "Config changes",
            [
                _changes_table(
                    diff.get("config_changes", []),
                    other,
                    this,
                    "The configs are equal (run id and output aside).",
                )
            ],
        ),
        Section(
            "Policy changes",
            [_changes_table(diff.get("policy_changes", []), other, this, "The policies are equal.")],
        ),
    ]
    for title, (key, header, field, values) in DIFF_TABLES.items():
        rows = [
            [row[field], *(c for v, fmt in values.items() for c in cells(row[v.replace(" ", "_")], fmt))]
            for row in diff[key]
        ]
        headers = [header, *(h for v in values for h in (v, f"{v} change"))]
        unchanged = diff.get(f"unchanged_{key}", 0)
        blocks: list[Block] = [Table(headers, rows)] if rows else [Text(["Nothing changed."])]
        if unchanged:
            blocks.append(Text([f"{unchanged} unchanged rows are not shown."]))
        sections.append(Section(title, blocks))
    examples = [_flip_details(rule, ex, other, this) for rule, ex in diff.get("examples", {}).items()]
    intro = Text(["Documents in both runs (same id) whose keep/drop differs, by the rule that dropped them."])
    sections.append(Section("Examples", [intro, *examples], level=3, formats=("html",)))
    return Page(f"gristmill diff — {other} → {this}", sections)
