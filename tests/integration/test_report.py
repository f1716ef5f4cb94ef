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
from stage_helpers import run_stages

from pipelines.corpus import text_path
from pipelines.quality.policy import load_policy
from pipelines.run import RunDir
from tokenizer import load

REPO = Path(__file__).resolve().parents[2]
GRISTMILL = Path(sys.executable).parent / "gristmill"
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


def _build(root: Path, inputs: list[Path], policy: Path | None = None) -> RunDir:
    """A real run through the stage functions (the same ones the flow calls), without Prefect."""
    run = RunDir(root).create()
    files = [str(p) for p in inputs]
    run.record.start(root.name, {}, files)
    signals = {"policy": str(policy) if policy else None}
    tokenizer = {"vocab_size": 1024, "sample_chars": 10_000_000}
    stages = ("ingest", "signals", "dedup", "tokenizer", "tokenize", "report")
    run_stages(run, *stages, inputs=files, signals=signals, tokenizer=tokenizer, workers=2)
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunDir, RunDir, Path]:
    work = tmp_path_factory.mktemp("report")
    sample = REPO / "data" / "sample"
    first = _build(work / "first", [sample / "web.jsonl.zst", sample / "spam.jsonl.zst"])
    second = _build(work / "second", [sample / "web.jsonl.zst", sample / "udhr.jsonl.zst"])
    return first, second, work


def _signals(run: RunDir) -> list[dict]:
    return pq.read_table(run.signals).to_pylist()


def _tokens_by_id(run: RunDir) -> dict[str, int]:
    """Token counts computed here, independently of the report code, on the text later stages read."""
    tokenizer = load(run.tokenizer / "tokenizer.json")
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
            assert rule["rule"] in example["reasons"] and example["excerpt"]
        for example in rule["borderline"]:
            assert example["reasons"] == []
    funnel = {s["stage"]: s for s in report["funnel"]}
    kept = [r for r in rows if r["keep"]]
    assert funnel["signals"]["documents_out"] == len(kept)
    assert funnel["signals"]["tokens_out"] == sum(tokens[r["id"]] for r in kept)
    manifest = json.loads((run.tokens / "manifest.json").read_text())
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
    policy = load_policy(run.signals / "_policy.yaml").model_dump()
    for rule in policy["rules"]:
        if rule["signal"] == "word_count" and rule["min"] is not None:
            rule["min"] = rule["min"] * 4
    stricter = tmp_path / "stricter.yaml"
    stricter.write_text(yaml.safe_dump(policy))
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
    assert ingest["documents_out"] == [a["funnel"][0]["documents_out"], b["funnel"][0]["documents_out"]]
    assert {x["lang"] for x in diff["languages"]} >= {"en", "de"}
    assert "diff" in (second.report / "diff-first.md").read_text()


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
    assert "<h2>Examples &amp; more</h2>" in html and '<td class="n">1235</td>' in html
    assert "| <b>doc</b> | <script>alert(1)</script> line \\| two | 1235 |" in md.splitlines()
