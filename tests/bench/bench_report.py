"""Report at scale: build time, what-if time, HTML size and browser load time at 10k and 1M documents.

Real signals of the bundled sample (computed by the signals stage) are tiled to N documents with new
ids, with short real texts; the report then runs on that run directory as on any other.

    .venv/bin/python -m pytest -q -s tests/bench/bench_report.py
    GRISTMILL_BENCH_REPORT_DOCS=200000 ...   (a smaller large size)
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml
from stage_helpers import run_stages

from pipelines.quality.policy import load_policy
from pipelines.report import write_report, write_whatif
from pipelines.run import RunDir

REPO = Path(__file__).resolve().parents[2]
LARGE = int(os.environ.get("GRISTMILL_BENCH_REPORT_DOCS", "1000000"))
SHARD_ROWS = 100_000


def _real_run(root: Path) -> RunDir:
    run = RunDir(root).create()
    run.start("real", {}, [str(REPO / "data" / "sample")])
    run_stages(run, "ingest", inputs=[str(REPO / "data" / "sample")])
    run_stages(run, "signals")
    return run


def _tiled_run(real: RunDir, root: Path, n_docs: int) -> RunDir:
    """A run directory of n_docs documents: the real signal rows repeated, each with a fresh id."""
    signals = pq.read_table(real.signals)
    docs = pq.read_table(real.documents, columns=["id", "source", "url", "text"])
    docs = docs.set_column(3, "text", pc.utf8_slice_codeunits(docs.column("text"), 0, 300))
    run = RunDir(root).create()
    run.start(root.name, {}, ["tiled"])
    shutil.copy(real.policy, run.policy)
    for shard, start in enumerate(range(0, n_docs, SHARD_ROWS)):
        rows = pa.array([i % signals.num_rows for i in range(start, min(start + SHARD_ROWS, n_docs))])
        ids = pa.array([f"tiled:{i}" for i in range(start, start + len(rows))])
        pq.write_table(signals.take(rows).set_column(0, "id", ids), run.signals / f"{shard:05d}.parquet")
        pq.write_table(docs.take(rows).set_column(0, "id", ids), run.documents / f"{shard:05d}.parquet")
    return run


def _load_seconds(html: Path) -> float | None:
    """Time until the load event in headless Chromium (None when it is not installed)."""
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_path):
        return None
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        driver.get(html.resolve().as_uri())
        ms = driver.execute_script(
            "const t = performance.getEntriesByType('navigation')[0]; return t.loadEventEnd - t.startTime;"
        )
        return ms / 1000
    finally:
        driver.quit()


def test_report_scales_to_a_million_documents(tmp_path: Path) -> None:
    real = _real_run(tmp_path / "real")
    policy = load_policy(real.policy).model_dump()
    for rule in policy["rules"]:
        if rule["signal"] == "word_count" and rule["min"] is not None:
            rule["min"] *= 2
    stricter = tmp_path / "stricter.yaml"
    stricter.write_text(yaml.safe_dump(policy))
    rows = []
    for n_docs in (10_000, LARGE):
        run = _tiled_run(real, tmp_path / f"tiled-{n_docs}", n_docs)
        start = time.perf_counter()
        write_report(run)
        build_s = time.perf_counter() - start
        start = time.perf_counter()
        write_whatif(run, stricter)
        whatif_s = time.perf_counter() - start
        html = run.report / "report.html"
        rows.append((n_docs, build_s, whatif_s, html.stat().st_size / 1e6, _load_seconds(html)))
    print("\nreport at scale (characters as size unit; no tokenizer in these runs)")
    print(f"{'documents':>10} {'build s':>8} {'what-if s':>9} {'html MB':>8} {'load s':>7}")
    for n_docs, build_s, whatif_s, size, load_s in rows:
        load = f"{load_s:7.2f}" if load_s is not None else "    n/a"
        print(f"{n_docs:>10,} {build_s:8.1f} {whatif_s:9.1f} {size:8.2f} {load}")
    small, large = rows
    print(f"html size ratio {large[3] / small[3]:.2f}x for {LARGE // 10_000}x the documents")
    assert large[3] < 2 * small[3] + 0.5, "the HTML must hold aggregates and samples, not every document"
