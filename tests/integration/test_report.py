"""The filter report: values against the stored signals, what-if, diff, and the page in real Chromium."""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from stage_helpers import build

from pipelines.config import RunConfig
from pipelines.corpus import text_path
from pipelines.quality.policy import load_policy
from pipelines.report.data import DocumentTokens, token_shards_by_input
from pipelines.run import RunDir
from tokenizer import load

REPO = Path(__file__).resolve().parents[2]
GRISTMILL = Path(sys.executable).parent / "gristmill"
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


def _build_run(root: Path, inputs: list[Path], policy: Path | None = None) -> RunDir:
    """A real run through the stage functions (the same ones the flow calls), without Prefect."""
    run = RunDir(root).create()
    files = [str(p) for p in inputs]
    signals = {"policy": str(policy) if policy else None}
    tokenizer = {"vocab_size": 1024, "sample_chars": 10_000_000}
    config = RunConfig.model_validate(
        {"inputs": files, "signals": signals, "tokenizer": tokenizer, "executor": {"workers": 2}}
    )
    run.record.start(root.name, config.model_dump(mode="json"), files)
    build(run, config)
    return run


def _stricter(path: Path, factor: int = 4) -> Path:
    """The default policy with gopher_min_words' minimum multiplied by `factor`."""
    policy = load_policy(None).model_dump()
    for rule in policy["rules"]:
        if rule["name"] == "gopher_min_words":
            rule["min"] = rule["min"] * factor
    path.write_text(yaml.safe_dump(policy))
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunDir, RunDir, Path]:
    work = tmp_path_factory.mktemp("report")
    sample = REPO / "data" / "sample"
    # short messages that quote the end-of-text token: the pipeline encodes it as text, so must the report
    quotes = work / "quotes.jsonl"
    lines = [json.dumps({"text": f"reply {i} <|endoftext|> ok"}) + "\n" for i in range(3)]
    quotes.write_text("".join(lines), encoding="utf-8")
    first = _build_run(work / "first", [sample / "web.jsonl.zst", sample / "spam.jsonl.zst", quotes])
    stricter = _stricter(work / "min-words-200.yaml")
    second = _build_run(work / "second", [sample / "web.jsonl.zst", sample / "udhr.jsonl.zst"], stricter)
    return first, second, work


def _signals(run: RunDir) -> list[dict]:
    return pq.read_table(run.signals).to_pylist()


def _tokens_by_id(run: RunDir) -> dict[str, int]:
    """Token counts computed here, independently of the report code, on the text later stages read."""
    tokenizer = load(run.tokenizer / "tokenizer.json", literal_special_tokens=True)
    docs = [
        row
        for path in sorted(run.documents.glob("*.parquet"))
        for row in pq.read_table(text_path(run, path.name), columns=["id", "text"]).to_pylist()
    ]
    encoded = tokenizer.encode_batch([d["text"] for d in docs], add_special_tokens=False)
    return {d["id"]: len(e.ids) for d, e in zip(docs, encoded, strict=True)}


def test_report_json_matches_the_stored_signals(runs: tuple) -> None:
    run, _, _ = runs
    report = json.loads((run.report / "report.json").read_text())
    rows = _signals(run)
    tokens = _tokens_by_id(run)
    assert report["unit"] == "tokens"
    for rule in report["rules"]:
        failing = [r for r in rows if rule["rule"] in r["reasons"]]
        alone = [r for r in failing if r["reasons"] == [rule["rule"]]]
        assert rule["documents"] == len(failing), rule["rule"]
        assert rule["documents_alone"] == len(alone)
        assert rule["tokens"] == sum(tokens[r["id"]] for r in failing)
        assert rule["tokens_alone"] == sum(tokens[r["id"]] for r in alone)
        for example in rule["examples"]:
            assert rule["rule"] in example["reasons"] and example["excerpt"] is not None  # "": no text left
        for example in rule["borderline"]:
            assert example["reasons"] == []
    funnel = {s["stage"]: s for s in report["funnel"]}
    kept = [r for r in rows if r["keep"]]
    assert funnel["signals"]["documents_out"] == len(kept)
    assert funnel["signals"]["tokens_out"] == sum(tokens[r["id"]] for r in kept)
    manifest = json.loads(run.manifest.read_text())
    assert funnel["dedup"]["tokens_out"] == manifest["totals"]["tokens"] == funnel["tokenize"]["tokens_out"]
    removed = pq.read_table(run.dedup / "removed.parquet").num_rows
    assert (
        report["duplicates"]["removed"]
        == removed
        == funnel["dedup"]["documents_in"] - funnel["dedup"]["documents_out"]
    )
    for name, hist in report["histograms"].items():
        finite = [r[name] for r in rows if r[name] is not None and np.isfinite(r[name])]
        assert sum(hist["counts"]) == len(finite), name
        assert sum(hist["kept"]) == sum(1 for r in kept if r[name] is not None and np.isfinite(r[name]))
    langs = {t["lang"]: t["documents"] for t in report["languages"]["top"]}
    assert langs["en"] == sum(1 for r in rows if r["lang"] == "en")


def test_report_counts_tokenize_only_what_the_token_shards_lack(runs: tuple) -> None:
    """The final corpus's counts come from the token shards; only the other documents are tokenized."""
    run, _, _ = runs
    manifest = json.loads(run.manifest.read_text())
    mapping = token_shards_by_input(run)
    step = DocumentTokens(str(run.root), mapping)
    tokens = _tokens_by_id(run)
    in_shards = {
        doc_id
        for path in run.tokens.glob("*-0*.parquet")
        for doc_id in pq.read_table(path, columns=["id"]).column("id").to_pylist()
    }
    assert len(in_shards) == manifest["totals"]["documents"] > 0
    total_tokenized = 0
    for index, name in enumerate(run.shards()):
        counts = step.process(index)
        table = pq.read_table(step.output(index)).to_pylist()
        assert all(row["n_tokens"] == tokens[row["id"]] for row in table)
        assert counts["tokenized"] == sum(row["id"] not in in_shards for row in table), name
        total_tokenized += counts["tokenized"]
    assert total_tokenized < len(tokens) - manifest["totals"]["documents"] + 1
    assert token_shards_by_input(_with_other_tokenizer(run)) == {}


def _with_other_tokenizer(run: RunDir) -> RunDir:
    """A copy of `run` whose tokenizer is not the one its token shards were made with."""
    other = run.root.with_name(run.root.name + "-other-tokenizer")
    if not other.exists():
        shutil.copytree(run.root, other)
        path = other / "tokenizer" / "tokenizer.json"
        path.write_text(path.read_text() + "\n")
    return RunDir(other)


def test_rules_rank_by_tokens_with_shares_families_sources_and_languages(runs: tuple) -> None:
    run, _, _ = runs
    report = json.loads((run.report / "report.json").read_text())
    rows, tokens = _signals(run), _tokens_by_id(run)
    total = sum(tokens.values())
    assert [r["tokens"] for r in report["rules"]] == sorted(
        (r["tokens"] for r in report["rules"]), reverse=True
    )
    for rule in report["rules"]:
        assert rule["share"] == pytest.approx(rule["tokens"] / total, abs=1e-6)
    low_conf = next(r for r in report["rules"] if r["rule"] == "low_lang_confidence")
    assert low_conf["signal"] == "lang_score" and low_conf["min"] == 0.5
    (ngram,) = report["rule_groups"]
    assert len(ngram["rules"]) == 9 and all("gram" in name for name in ngram["rules"])
    failing = [r for r in rows if set(r["reasons"]) & set(ngram["rules"])]
    alone = [r for r in failing if set(r["reasons"]) <= set(ngram["rules"])]
    assert ngram["documents"] == len(failing) and ngram["documents_alone"] == len(alone)
    assert ngram["tokens"] == sum(tokens[r["id"]] for r in failing)
    # the funnel per input: one row per input file, adding up to the signals stage
    documents = {
        d["id"]: d["source"]
        for p in sorted(run.documents.glob("0*.parquet"))
        for d in pq.read_table(p, columns=["id", "source"]).to_pylist()
    }
    by_source = {s["source"]: s for s in report["sources"]}
    assert {Path(s).name for s in by_source} == {"web.jsonl.zst", "spam.jsonl.zst", "quotes.jsonl"}
    for source, entry in by_source.items():
        mine = [r for r in rows if documents[r["id"]] == source]
        assert entry["documents_in"] == len(mine)
        assert entry["documents_kept"] == sum(r["keep"] for r in mine)
        assert entry["tokens_in"] == sum(tokens[r["id"]] for r in mine)
    signals = next(s for s in report["funnel"] if s["stage"] == "signals")
    assert sum(s["tokens_in"] for s in report["sources"]) == signals["tokens_in"] == total
    # languages with tokens, and the language x rule table
    en = next(t for t in report["languages"]["top"] if t["lang"] == "en")
    assert en["tokens"] == sum(tokens[r["id"]] for r in rows if r["lang"] == "en")
    assert en["kept_tokens"] == sum(tokens[r["id"]] for r in rows if r["lang"] == "en" and r["keep"])
    table = report["languages"]["by_rule"]
    column = table["languages"].index("en")
    for entry in table["rules"]:
        if entry["rule"] in {r["rule"] for r in report["rules"]}:
            expected = sum(
                tokens[r["id"]] for r in rows if r["lang"] == "en" and entry["rule"] in r["reasons"]
            )
            assert entry["tokens"][column] == expected, entry["rule"]
    assert any(e["rule"].startswith("Gopher n-gram repetition") for e in table["rules"])
    # the report stage is writing the report: it is not shown as running
    assert "report" not in report["stages"]


def test_threshold_curves_pass_through_the_current_threshold(runs: tuple) -> None:
    run, _, _ = runs
    report = json.loads((run.report / "report.json").read_text())
    kept_tokens = next(s for s in report["funnel"] if s["stage"] == "signals")["tokens_out"]
    assert report["curves"]
    for curve in report["curves"].values():
        at_current = curve["kept_tokens"][curve["thresholds"].index(curve["current"])]
        assert at_current == kept_tokens, curve["rule"]
        steps = list(itertools.pairwise(curve["kept_tokens"]))
        # raising a minimum can only drop documents; raising a maximum can only keep more
        assert all(a >= b for a, b in steps) if curve["side"] == "min" else all(a <= b for a, b in steps)


def test_whatif_reapplies_another_policy_without_recomputing_signals(runs: tuple, tmp_path: Path) -> None:
    run, _, _ = runs
    stricter = _stricter(tmp_path / "stricter.yaml")
    before = {p: p.stat().st_mtime_ns for p in run.signals.glob("*.parquet")}
    result = subprocess.run(
        [str(GRISTMILL), "report", str(run.root), "--policy", str(stricter)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert before == {p: p.stat().st_mtime_ns for p in run.signals.glob("*.parquet")}
    whatif = json.loads((run.report / "whatif-stricter.json").read_text())
    expected = load_policy(stricter).apply(pq.read_table(run.signals))
    assert whatif["kept_documents_after"] == sum(expected.column("keep").to_pylist())
    assert whatif["kept_documents_before"] == sum(r["keep"] for r in _signals(run))
    assert whatif["kept_documents_after"] < whatif["kept_documents_before"]
    assert (run.report / "whatif-stricter.html").exists() and "what-if" in result.stdout
    # it leads with what changed in the policy, and lists only the rules whose results changed
    assert whatif["changes"] == [{"setting": "rules.gopher_min_words.min", "before": 50.0, "after": 200.0}]
    (changed,) = whatif["rules"]
    assert changed["rule"] == "gopher_min_words" and whatif["unchanged_rules"] == len(policy_reasons(run)) - 1
    assert changed["documents_change"] == changed["documents_after"] - changed["documents_before"] > 0
    dropped = changed["examples"]["newly_dropped"]
    assert 0 < len(dropped) <= 5 and not changed["examples"]["newly_kept"]
    rows = {r["id"]: r for r in _signals(run)}
    for example in dropped:
        assert rows[example["id"]]["keep"] and example["reasons_before"] == []
        assert example["reasons_after"] == ["gopher_min_words"] and example["excerpt"]
    md = (run.report / "whatif-stricter.md").read_text()
    assert "rules.gopher_min_words.min" in md and "%" in md and "0.2051" not in md


def policy_reasons(run: RunDir) -> list[str]:
    return load_policy(run.policy).reason_names


def test_whatif_and_diff_are_separate_reports(runs: tuple, tmp_path: Path) -> None:
    first, second, _ = runs
    command = [str(GRISTMILL), "report", str(second.root), "--against", str(first.root)]
    result = subprocess.run(
        [*command, "--policy", str(_stricter(tmp_path / "p.yaml"))],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0 and "--policy" in result.stderr and "--against" in result.stderr


def test_diff_between_two_runs(runs: tuple) -> None:
    first, second, _ = runs
    result = subprocess.run(
        [str(GRISTMILL), "report", str(second.root), "--against", str(first.root)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    diff = json.loads((second.report / "diff-first.json").read_text())
    a = json.loads((first.report / "report.json").read_text())
    b = json.loads((second.report / "report.json").read_text())
    ingest = next(s for s in diff["stages"] if s["stage"] == "ingest")
    a_in, b_in = a["funnel"][0]["documents_out"], b["funnel"][0]["documents_out"]
    assert ingest["documents_out"] == [a_in, b_in, b_in - a_in]
    assert {x["lang"] for x in diff["languages"]} >= {"en", "de"}
    assert "diff" in (second.report / "diff-first.md").read_text()
    # config and policy changes lead; sizes are bytes; only changed rows, each with its change
    settings = {c["setting"] for c in diff["config_changes"]}
    assert {"inputs", "signals.policy"} <= settings and not settings & {"run_id", "output"}
    assert diff["policy_changes"] == [
        {"setting": "rules.gopher_min_words.min", "before": 50.0, "after": 200.0}
    ]
    assert diff["unit"] == "bytes" and all("tokens_out" not in s for s in diff["stages"])
    signals = next(s for s in diff["stages"] if s["stage"] == "signals")
    a_signals = next(s for s in a["funnel"] if s["stage"] == "signals")
    assert signals["bytes_out"][0] == a_signals["bytes_out"]
    for row in diff["rules"]:
        assert row["drop_rate"][0] != row["drop_rate"][1] or row["bytes_share"][0] != row["bytes_share"][1]
    assert diff["unchanged_rules"] > 0
    # documents of web.jsonl.zst are in both runs: the stricter minimum newly drops some of them
    flipped = diff["examples"]["gopher_min_words"]["newly_dropped"]
    kept_before = {r["id"] for r in _signals(first) if r["keep"]}
    assert flipped and all(
        e["id"] in kept_before and "gopher_min_words" in e["reasons_after"] for e in flipped
    )
    page = (second.report / "diff-first.md").read_text()
    assert "Config changes" in page and "pp" in page


@pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="needs Debian's chromium and chromium-driver (make test installs them)",
)
def test_report_renders_in_headless_chromium(runs: tuple) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    run, _, work = runs
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,2000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.get((run.report / "report.html").resolve().as_uri())
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == [], errors
        report = json.loads((run.report / "report.json").read_text())
        charts = driver.find_elements(By.CSS_SELECTOR, "svg.chart")
        assert len(charts) >= len(report["histograms"]) + len(report["curves"])
        assert all(c.size["width"] > 0 and c.size["height"] > 0 for c in charts)
        assert driver.find_elements(By.CSS_SELECTOR, "line.threshold")
        headings = [h.text for h in driver.find_elements(By.TAG_NAME, "h2")]
        for section in ("Funnel", "Rules", "Signals", "Duplicates", "Quarantine", "Stages"):
            assert any(h.startswith(section) for h in headings), (section, headings)
        assert len(driver.find_elements(By.TAG_NAME, "table")) >= 5
        # a table of contents links to every section
        links = {
            a.get_attribute("href").rsplit("#", 1)[1] for a in driver.find_elements(By.CSS_SELECTOR, ".toc a")
        }
        ids = {h.get_attribute("id") for h in driver.find_elements(By.TAG_NAME, "h2")}
        assert links == ids and len(ids) >= 8 and all(ids)
        # every chart's title is above it, and no label of any chart leaves its viewBox
        for figure in driver.find_elements(By.TAG_NAME, "figure"):
            caption = figure.find_element(By.TAG_NAME, "figcaption").rect
            svg = figure.find_element(By.TAG_NAME, "svg").rect
            assert caption["y"] + caption["height"] <= svg["y"] + 1, figure.text
        outside = driver.execute_script(
            """const out = [];
            for (const svg of document.querySelectorAll("svg.chart")) {
              const box = svg.viewBox.baseVal;
              for (const t of svg.querySelectorAll("text")) {
                const b = t.getBBox();
                if (b.x < box.x - 0.5 || b.y < box.y - 0.5 || b.x + b.width > box.x + box.width + 0.5 ||
                    b.y + b.height > box.y + box.height + 0.5) {
                  out.push([svg.getAttribute("aria-label"), t.textContent]);
                }
              }
            }
            return out;"""
        )
        assert outside == []
        # threshold labels keep their digits (0.1 stays 0.1) and axes carry several ticks
        labels = driver.execute_script(
            "return [...document.querySelectorAll('svg.chart text[fill]')].map(t => t.textContent)"
        )
        assert "0.1" in labels and "0.3" in labels
        ticks = driver.execute_script(
            "return [...document.querySelectorAll('svg.chart')].map(s => s.querySelectorAll('text').length)"
        )
        assert min(ticks) >= 4
        # rules: ranked by tokens, with shares, rules that removed nothing left out (and counted)
        rules_table = driver.find_element(By.CSS_SELECTOR, "#rules ~ table")
        header = [th.text for th in rules_table.find_elements(By.TAG_NAME, "th")]
        assert header[3:5] == ["tokens removed", "of input tokens"]
        body = [
            [td.text for td in tr.find_elements(By.TAG_NAME, "td")]
            for tr in rules_table.find_elements(By.CSS_SELECTOR, "tbody tr")
        ]
        top = [row for row in body if not row[0].startswith("·")]
        sizes = [int(row[3].replace(",", "")) for row in top]
        assert sizes == sorted(sizes, reverse=True) and all(row[4].endswith("%") for row in body)
        assert all(row[6] != "0" for row in body)
        idle = [r["rule"] for r in report["rules"] if not r["documents"]]
        page_text = driver.find_element(By.TAG_NAME, "body").text
        assert idle and f"{len(idle)} rules removed nothing and are not listed" in page_text
        assert any(row[0].startswith("Gopher n-gram repetition") for row in body)
        low_conf = next(row for row in body if row[0] == "low_lang_confidence")
        assert low_conf[1:3] == ["lang_score", "≥ 0.5"]
        # examples are open, their excerpts visible
        details = driver.find_elements(By.TAG_NAME, "details")
        assert details and all(d.get_attribute("open") is not None for d in details)
        assert driver.find_element(By.CSS_SELECTOR, "details .excerpt").is_displayed()
        # the stages table does not show the report stage as running
        assert (
            "running"
            not in driver.find_element(By.ID, "stages")
            .find_element(By.XPATH, "following-sibling::table[1]")
            .text
        )
        # the funnel per input and the language x rule table
        assert driver.find_element(By.ID, "funnel-per-input").is_displayed()
        languages = driver.find_element(By.CSS_SELECTOR, "[id^=languages]")
        tables = languages.find_elements(By.XPATH, "following-sibling::table")
        assert any(t.find_element(By.TAG_NAME, "th").text == "rule" for t in tables)
        height = driver.execute_script("return document.body.scrollHeight")
        driver.set_window_size(1280, min(height, 12_000))
        screenshot = work / "report.png"
        assert driver.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 10_000
    finally:
        driver.quit()


def _html_tables(page: str) -> list[list[list[str]]]:
    """Every table of an HTML page as rows of cell texts (header row first)."""
    from html.parser import HTMLParser

    class Tables(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.tables: list[list[list[str]]] = []
            self.in_cell = False

        def handle_starttag(self, tag: str, attrs: list) -> None:
            if tag == "table":
                self.tables.append([])
            elif tag == "tr":
                self.tables[-1].append([])
            elif tag in ("td", "th"):
                self.tables[-1][-1].append("")
                self.in_cell = True

        def handle_endtag(self, tag: str) -> None:
            self.in_cell = self.in_cell and tag not in ("td", "th")

        def handle_data(self, data: str) -> None:
            if self.in_cell:
                self.tables[-1][-1][-1] += data

    parser = Tables()
    parser.feed(page)
    return parser.tables


def _md_tables(page: str) -> list[list[list[str]]]:
    """Every table of a Markdown page as rows of cell texts (header row first, no separator row)."""
    import re

    tables: list[list[list[str]]] = []
    previous = ""
    for line in page.splitlines():
        if line.startswith("| "):
            if not previous.startswith("|"):
                tables.append([])
            tables[-1].append([c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]])
        previous = line
    return tables


def test_markdown_shows_the_tables_of_the_html_page(runs: tuple) -> None:
    """One definition per section: a table both pages show has the same cells in both."""
    run, _, _ = runs
    html_tables = _html_tables((run.report / "report.html").read_text())
    md_tables = _md_tables((run.report / "report.md").read_text())
    assert {t[0][0] for t in md_tables} >= {"stage", "rule", "language", "kept document", "cluster size"}
    for table in md_tables:
        assert table in html_tables or table[0] == ["cluster size", "clusters"], table[0]


def test_html_escapes_document_text_and_markdown_keeps_tables_intact() -> None:
    from pipelines.report import render

    text = render.Excerpt("<script>alert(1)</script>\nline | two")
    table = render.Table(["id", "excerpt", "value"], [["<b>doc</b>", text, 1234.5678]])
    page = render.Page("run <x>", [render.Section("Examples & more", [table])])
    html, md = render.render(page, "html"), render.render(page, "md")
    assert "<script>" not in html and "<b>doc" not in html
    assert '<div class="excerpt">&lt;script&gt;alert(1)&lt;/script&gt;\nline | two</div>' in html
    assert '<h2 id="examples-more">Examples &amp; more</h2>' in html and '<td class="n">1235</td>' in html
    assert "| <b>doc</b> | <script>alert(1)</script> line \\| two | 1235 |" in md.splitlines()
