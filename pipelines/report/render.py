"""The report's pages as view models, rendered through the Jinja2 templates in templates/.

A page is a title and sections of blocks, each computed once here; page.html.j2 renders any page as
one self-contained HTML file, page.md.j2 as Markdown. Markdown shows text and tables (charts, cards
and collapsed examples are HTML only); a table or section shown in one format only names it in
`formats`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import jinja2

from pipelines.report import charts

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


def render(page: Page, fmt: Format) -> str:
    """The page as one self-contained HTML file or as Markdown."""
    return _ENV.get_template(f"page.{fmt}.j2").render(page=page)


def _funnel_row(s: dict[str, Any]) -> list[Any]:
    keys = ("documents_in", "documents_out", "characters_out", "tokens_in", "tokens_out")
    docs_in, docs_out, chars, tokens_in, tokens_out = (s.get(k) for k in keys)
    kept = pct(docs_out, docs_in), pct(tokens_out, tokens_in)
    return [s["stage"], docs_in, docs_out, kept[0], chars, tokens_in, tokens_out, kept[1]]


def _threshold(rule: dict[str, Any]) -> str:
    bounds = [(sign, rule.get(key)) for sign, key in (("≥", "min"), ("≤", "max"))]
    return " and ".join(f"{sign} {num(value)}" for sign, value in bounds if value is not None)


def _rule_row(r: dict[str, Any], unit: str, total: int | None) -> list[Any]:
    n, removed = r["documents"], (r["documents_alone"], r[unit], r[f"{unit}_alone"])
    return [r["rule"], r.get("signal") or "", _threshold(r), n, pct(n, total), *removed]


def _named(doc_id: str, source_id: str | None) -> str:
    """A document's id, with the record's own id (its source_id) when it has one."""
    return f"{doc_id} (id {source_id})" if source_id else doc_id


def _examples(rule: dict[str, Any]) -> Details:
    def table(items: list[dict[str, Any]]) -> Table:
        rows = [
            [_named(i["id"], i.get("source_id")), i.get("value"), ", ".join(i.get("reasons") or []) or "kept",
             Excerpt(i.get("excerpt"))]
            for i in items
        ]
        return Table(["id", rule.get("signal") or "value", "failed rules", "excerpt"], rows)

    tables = [("Dropped", table(rule["examples"]))]
    if rule["borderline"]:
        tables.append(("Kept, closest to the threshold", table(rule["borderline"])))
    summary = f"{len(rule['examples'])} dropped examples, {len(rule['borderline'])} borderline kept"
    return Details(rule["rule"], summary, tables)


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
        [_named(e["id"], e.get("source_id")), _named(e["duplicate_of"], e.get("duplicate_of_source_id")),
         e.get("kind", ""), e["similarity"], *_pair_texts(e)]
        for e in d["examples"]
    ]
    return Section("Duplicates", [*blocks, Table(headers, rows, formats=("html",))])


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
    if rules := report.get("rules"):
        total = next((s["documents_in"] for s in funnel if s["stage"] == "signals"), None)
        headers = ["rule", "signal", "keeps", "documents", "of filter input", "documents (only this rule)"]
        rows = [_rule_row(r, unit, total) for r in rules]
        table = Table([*headers, unit, f"{unit} (only this rule)"], rows)
        intro = (
            "Documents and tokens each rule removes overall, and those it alone removes (no other rule "
            "would have dropped them)."
        )
        bars = charts.hbars("Documents failing each rule", [(r["rule"], r["documents"]) for r in rules])
        yield Section("Rules", [Text([intro]), table, Charts([bars])])
        yield Section("Examples", [_examples(r) for r in rules], level=3, formats=("html",))
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
    if languages := report.get("languages"):
        top = languages["top"]
        bars = charts.hbars("Documents per language (top)", [(t["lang"], t["documents"]) for t in top])
        rows = [[t["lang"], t["documents"], t["kept"], pct(t["kept"], t["documents"])] for t in top]
        table = Table(["language", "documents", "kept", "kept share"], rows)
        yield Section(f"Languages ({languages['distinct']} detected)", [Charts([bars]), table])
    if report.get("duplicates"):
        yield _duplicates(report["duplicates"])
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


def whatif_page(cmp: dict[str, Any], run_id: str, policy: str, unit: str) -> Page:
    """A what-if comparison: the run's policy against another policy."""
    totals = [
        ["kept documents", cmp["kept_documents_before"], cmp["kept_documents_after"]],
        [f"kept {unit}", cmp[f"kept_{unit}_before"], cmp[f"kept_{unit}_after"]],
        ["newly dropped documents", None, cmp["newly_dropped"]],
        ["newly kept documents", None, cmp["newly_kept"]],
    ]
    rules = [
        [r["rule"], r["documents_before"], r["documents_after"], r[f"{unit}_before"], r[f"{unit}_after"]]
        for r in cmp["rules"]
    ]
    headers = ["rule", "documents before", "documents after", f"{unit} before", f"{unit} after"]
    sections = [
        Section("Totals", [Table(["", "run's policy", policy], totals)]),
        Section("Per rule", [Table(headers, rules)]),
    ]
    return Page(f"gristmill what-if — run {run_id} with {policy}", sections)


DIFF_TABLES = {
    "Stages": ("stages", "stage", "stage", ["documents out", "keep rate", "tokens out"]),
    "Drop rate per rule": ("rules", "rule", "rule", ["drop rate"]),
    "Language shares": ("languages", "language", "lang", ["share"]),
    "Signals": ("signals", "signal", "signal", ["median", "mean"]),
    "Quarantine": ("quarantine", "reason", "reason", ["records"]),
}
"""Per section of the diff: its list in the diff, first column (header, field), value columns."""


def diff_page(diff: dict[str, Any]) -> Page:
    """A run-to-run diff; each value cell reads `other run → this run`."""

    def pair(values: list[Any]) -> str:
        return f"{num(values[0])} → {num(values[1])}"

    lead = [f". Duplicates removed: {pair(diff['duplicates_removed'])}."]
    sections = [Section("", [Text(["Each cell: ", diff["against"], " → ", diff["run"], *lead])])]
    for title, (key, header, field, values) in DIFF_TABLES.items():
        rows = [[row[field], *(pair(row[v.replace(" ", "_")]) for v in values)] for row in diff[key]]
        sections.append(Section(title, [Table([header, *values], rows)]))
    return Page(f"gristmill diff — {diff['against']} → {diff['run']}", sections)
