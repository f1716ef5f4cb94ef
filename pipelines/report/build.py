"""Aggregate a run into a JSON-able report: funnel, rules, histograms, curves, languages, duplicates."""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import Any

import numpy as np

from pipelines.corpus import is_removed
from pipelines.quality.policy import Policy
from pipelines.report.data import RunData, as_float, dedup_section, signal_columns, texts_of

EXAMPLES_PER_RULE = 5
BORDERLINE_PER_RULE = 3
HISTOGRAM_BINS = 30
CURVE_POINTS = 41
TOP_LANGUAGES = 25


def build(data: RunData) -> dict[str, Any]:
    """The whole report of a run."""
    report: dict[str, Any] = {
        "run_id": data.record.get("run_id"),
        "inputs": data.record.get("inputs", []),
        "unit": data.unit,
        "stages": stage_timings(data),
        "quarantine": data.quarantine,
        "funnel": funnel(data),
    }
    if data.signals is not None:
        failures = data.policy.failures(data.signals) if data.policy else {}
        report["rules"] = rules(data, failures)
        report["histograms"] = histograms(data)
        report["curves"] = curves(data, failures)
        report["languages"] = languages(data)
    if data.removed is not None:
        report["duplicates"] = duplicates(data)
    tokenizer = data.record.get("stages", {}).get("tokenizer", {}).get("summary", {})
    if tokenizer.get("vocab_size"):  # bytes per token: measured on held-out (validation) text
        report["tokenizer"] = {
            k: tokenizer.get(k) for k in ("vocab_size", "bytes_per_token", "heldout_documents")
        }
    return report


def stage_timings(data: RunData) -> dict[str, dict[str, Any]]:
    """Status, seconds and documents per second of every stage."""
    out = {}
    for name, stage in data.record.get("stages", {}).items():
        summary = stage.get("summary", {})
        seconds = stage.get("seconds")
        docs = summary.get("documents")
        out[name] = {
            "status": stage.get("status"),
            "seconds": seconds,
            "documents": docs,
            "documents_per_second": round(docs / seconds, 1) if docs and seconds else None,
        }
    return out


def funnel(data: RunData) -> list[dict[str, Any]]:
    """Documents, characters and tokens into and out of every stage."""
    steps: list[dict[str, Any]] = [
        {"stage": "ingest", "documents_out": data.documents_in, "quarantined": sum(data.quarantine.values())}
    ]
    if data.signals is None:
        return steps
    keep = data.signals.column("keep").to_numpy(zero_copy_only=False)
    chars = data.signals.column("n_chars").to_numpy(zero_copy_only=False).astype(np.int64)
    tokens = data.tokens
    steps[0].update(characters_out=int(chars.sum()), tokens_out=_sum(tokens))
    steps.append(
        {
            "stage": "signals",
            "documents_in": len(keep),
            "documents_out": int(keep.sum()),
            "characters_in": int(chars.sum()),
            "characters_out": int(chars[keep].sum()),
            "tokens_in": _sum(tokens),
            "tokens_out": _sum(tokens, keep),
        }
    )
    if data.removed is not None:
        survive = keep & ~is_removed(data.signals.column("id"), data.removed.column("id").combine_chunks())
        steps.append(
            {
                "stage": "dedup",
                "documents_in": int(keep.sum()),
                "documents_out": int(survive.sum()),
                "characters_in": int(chars[keep].sum()),
                "characters_out": int(chars[survive].sum()),
                "tokens_in": _sum(tokens, keep),
                "tokens_out": _sum(tokens, survive),
            }
        )
    if data.manifest is not None:
        totals = data.manifest["totals"]
        steps.append(
            {
                "stage": "tokenize",
                "documents_in": steps[-1]["documents_out"],
                "documents_out": totals["documents"],
                "tokens_out": totals["tokens"],
                "splits": {
                    s: {k: v[k] for k in ("documents", "tokens")} for s, v in data.manifest["splits"].items()
                },
            }
        )
    return steps


def _sum(values: np.ndarray | None, mask: np.ndarray | None = None) -> int | None:
    if values is None:
        return None
    return int(values[mask].sum() if mask is not None else values.sum())


def _stable_order(ids: list[str]) -> list[str]:
    """A seeded, reproducible shuffle (so examples do not all come from the first input file)."""
    return sorted(ids, key=lambda i: hashlib.sha256(i.encode()).digest())


def rules(data: RunData, failures: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Per rule: documents and tokens it removes overall and alone, examples, borderline kept documents."""
    if not failures:
        return []
    signals, sizes = data.signals, data.sizes()
    ids = signals.column("id").to_numpy(zero_copy_only=False)
    matrix = np.stack(list(failures.values()), axis=1)
    n_failed = matrix.sum(axis=1)
    keep = n_failed == 0
    definitions = {r.name: r for r in data.policy.rules} if data.policy else {}
    out, wanted = [], set()
    for name, mask in failures.items():
        alone = mask & (n_failed == 1)
        rule = definitions.get(name)
        entry: dict[str, Any] = {
            "rule": name,
            "signal": getattr(rule, "signal", None),
            "min": getattr(rule, "min", None),
            "max": getattr(rule, "max", None),
            "documents": int(mask.sum()),
            "documents_alone": int(alone.sum()),
            data.unit: int(sizes[mask].sum()),
            f"{data.unit}_alone": int(sizes[alone].sum()),
        }
        values = as_float(signals, entry["signal"]) if entry["signal"] else None
        entry["examples"] = [{"id": i} for i in _stable_order(list(ids[mask]))[:EXAMPLES_PER_RULE]]
        entry["borderline"] = [{"id": i} for i in _borderline(ids, keep, values, rule)]
        for example in entry["examples"] + entry["borderline"]:
            wanted.add(example["id"])
        out.append(entry)
    _attach_texts(data, out, wanted, ids)
    return sorted(out, key=lambda e: -e["documents"])


def _borderline(ids: np.ndarray, keep: np.ndarray, values: np.ndarray | None, rule: Any) -> list[str]:
    """Kept documents whose signal is nearest to the rule's threshold(s)."""
    if values is None or rule is None:
        return []
    distance = np.full(len(values), np.inf)
    for bound in (rule.min, rule.max):
        if bound is not None:
            distance = np.fmin(distance, np.abs(values - bound) / max(abs(bound), 1e-9))
    distance[~keep | np.isnan(distance)] = np.inf
    order = np.argsort(distance, kind="stable")[:BORDERLINE_PER_RULE]
    return [str(ids[i]) for i in order if np.isfinite(distance[i])]


def _attach_texts(data: RunData, entries: list[dict[str, Any]], wanted: set[str], ids: np.ndarray) -> None:
    """Add excerpts and every signal value to the sampled documents."""
    texts = texts_of(data.run, wanted)
    row_of = {i: n for n, i in enumerate(ids) if i in wanted}
    columns = signal_columns(data.signals)
    lang = data.signals.column("lang")
    reasons = data.signals.column("reasons")
    for entry in entries:
        for example in entry["examples"] + entry["borderline"]:
            row = row_of[example["id"]]
            example.update(texts.get(example["id"], {}))
            example["lang"] = lang[row].as_py()
            example["reasons"] = reasons[row].as_py()
            if entry["signal"]:
                example["value"] = data.signals.column(entry["signal"])[row].as_py()
            example["signals"] = {c: _round(data.signals.column(c)[row].as_py()) for c in columns}


def _round(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) else value


def histograms(data: RunData) -> dict[str, dict[str, Any]]:
    """A histogram of every signal (all and kept documents) with the policy's thresholds on it."""
    keep = data.signals.column("keep").to_numpy(zero_copy_only=False)
    thresholds: dict[str, list[float]] = {}
    for rule in data.policy.rules if data.policy else []:
        thresholds.setdefault(rule.signal, []).extend(v for v in (rule.min, rule.max) if v is not None)
    if data.policy:
        thresholds.setdefault("lang_score", []).append(data.policy.language.min_confidence)
    out = {}
    for column in signal_columns(data.signals):
        values = as_float(data.signals, column)
        finite = np.isfinite(values)
        if not finite.any():
            continue
        edges, log_scale = _edges(values[finite], thresholds.get(column, []))
        clipped = np.clip(values[finite], edges[0], edges[-1])
        counts, _ = np.histogram(clipped, edges)
        kept, _ = np.histogram(clipped[keep[finite]], edges)
        out[column] = {
            "edges": [float(e) for e in edges],
            "counts": counts.tolist(),
            "kept": kept.tolist(),
            "thresholds": thresholds.get(column, []),
            "log_scale": log_scale,
            "missing": int((~finite).sum()),
            "median": float(np.median(values[finite])),
            "mean": float(values[finite].mean()),
        }
    return out


def _edges(values: np.ndarray, thresholds: list[float]) -> tuple[np.ndarray, bool]:
    """Bins over the 0.5-99.5 percentile range, widened to show every threshold; log bins for long tails."""
    low, high = np.percentile(values, [0.5, 99.5])
    low, high = min([low, *thresholds]), max([high, *thresholds])
    if high <= low:
        high = low + 1.0
    if low > 0 and high / low > 1_000:
        return np.geomspace(low, high, HISTOGRAM_BINS + 1), True
    return np.linspace(low, high, HISTOGRAM_BINS + 1), False


SENTINEL = -1.2345e300  # a bound no policy uses: marks documents that follow a rule's own bound


def curves(data: RunData, failures: dict[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """Kept tokens (or characters) as one threshold moves while every other rule stays as it is.

    Documents whose language overrides the bound (or turns the rule off) keep their own outcome.
    """
    if not data.policy or not failures:
        return {}
    policy, sizes = data.policy, data.sizes()
    lang = data.signals.column("lang").to_numpy(zero_copy_only=False)
    matrix = np.stack(list(failures.values()), axis=1)
    names = list(failures)
    out = {}
    for rule in policy.rules:
        others_ok = ~np.delete(matrix, names.index(rule.name), axis=1).any(axis=1)
        values = as_float(data.signals, rule.signal)
        finite = values[np.isfinite(values)]
        low, high, enabled = policy.rule_bounds(rule, lang)
        for side, bound in (("min", rule.min), ("max", rule.max)):
            if bound is None or not len(finite):
                continue
            probe = policy.rule_bounds(rule.model_copy(update={side: SENTINEL}), lang)[
                0 if side == "min" else 1
            ]
            follows = probe == SENTINEL
            grid = np.unique(np.append(np.percentile(finite, np.linspace(0, 100, CURVE_POINTS)), bound))
            kept = []
            for t in grid:
                low_t = np.where(follows, t, low) if side == "min" else low
                high_t = np.where(follows, t, high) if side == "max" else high
                with np.errstate(invalid="ignore"):
                    fails = enabled & ((values < low_t) | (values > high_t))
                kept.append(int(sizes[others_ok & ~fails].sum()))
            out[f"{rule.name}.{side}"] = {
                "rule": rule.name,
                "signal": rule.signal,
                "side": side,
                "current": bound,
                "thresholds": [float(t) for t in grid],
                f"kept_{data.unit}": kept,
            }
    return out


def languages(data: RunData) -> dict[str, Any]:
    """Documents and kept documents per detected language."""
    langs = data.signals.column("lang").to_pylist()
    keep = data.signals.column("keep").to_pylist()
    all_counts = Counter(langs)
    kept_counts = Counter(lang for lang, k in zip(langs, keep, strict=True) if k)
    top = [lang for lang, _ in all_counts.most_common(TOP_LANGUAGES)]
    return {
        "distinct": len(all_counts),
        "top": [{"lang": lang, "documents": all_counts[lang], "kept": kept_counts[lang]} for lang in top],
    }


def duplicates(data: RunData) -> dict[str, Any]:
    """Cluster sizes, largest clusters and example pairs (dedup's summary, else removed.parquet)."""
    section = dedup_section(data.run)
    if section is not None:
        return section
    removed = data.removed
    survivors = Counter(removed.column("duplicate_of").to_pylist())
    pairs = removed.sort_by([("similarity", "ascending")]).to_pylist()
    examples = pairs[:: max(1, len(pairs) // 8)][:8]
    texts = texts_of(data.run, {p["id"] for p in examples} | {p["duplicate_of"] for p in examples}, 200)
    for pair in examples:
        pair["text"] = texts.get(pair["id"], {}).get("excerpt")
        pair["duplicate_of_text"] = texts.get(pair["duplicate_of"], {}).get("excerpt")
    return {
        "removed": removed.num_rows,
        "clusters": len(survivors),
        "cluster_sizes": {str(k): v for k, v in sorted(Counter(n + 1 for n in survivors.values()).items())},
        "examples": examples,
    }


def policy_comparison(data: RunData, other: Policy) -> dict[str, Any]:
    """What-if: apply another policy to the stored signals and compare with the run's own."""
    sizes = data.sizes()
    base = data.policy.failures(data.signals) if data.policy else {}
    new = other.failures(data.signals)
    base_keep = ~np.stack(list(base.values()), 1).any(1) if base else np.ones(data.signals.num_rows, bool)
    new_keep = ~np.stack(list(new.values()), 1).any(1) if new else np.ones(data.signals.num_rows, bool)
    rows = []
    for name in dict.fromkeys([*base, *new]):
        b = base.get(name)
        n = new.get(name)
        rows.append(
            {
                "rule": name,
                "documents_before": int(b.sum()) if b is not None else None,
                "documents_after": int(n.sum()) if n is not None else None,
                f"{data.unit}_before": int(sizes[b].sum()) if b is not None else None,
                f"{data.unit}_after": int(sizes[n].sum()) if n is not None else None,
            }
        )
    return {
        "kept_documents_before": int(base_keep.sum()),
        "kept_documents_after": int(new_keep.sum()),
        f"kept_{data.unit}_before": int(sizes[base_keep].sum()),
        f"kept_{data.unit}_after": int(sizes[new_keep].sum()),
        "newly_dropped": int((base_keep & ~new_keep).sum()),
        "newly_kept": int((~base_keep & new_keep).sum()),
        "rules": rows,
    }


def run_comparison(this: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """Diff of two built reports: counts and rates per stage and rule, languages, signals, quarantine."""

    def stage_rows(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
        return {s["stage"]: s for s in report["funnel"]}

    def rate(out: Any, into: Any) -> float | None:
        return round(out / into, 4) if out is not None and into else None

    stages = []
    a_stages, b_stages = stage_rows(this), stage_rows(other)
    for name in dict.fromkeys([*b_stages, *a_stages]):
        a, b = a_stages.get(name, {}), b_stages.get(name, {})
        stages.append(
            {
                "stage": name,
                "documents_out": [b.get("documents_out"), a.get("documents_out")],
                "keep_rate": [
                    rate(b.get("documents_out"), b.get("documents_in")),
                    rate(a.get("documents_out"), a.get("documents_in")),
                ],
                "tokens_out": [b.get("tokens_out"), a.get("tokens_out")],
            }
        )

    def rule_rates(report: dict[str, Any]) -> dict[str, float | None]:
        total = stage_rows(report).get("signals", {}).get("documents_in")
        return {r["rule"]: rate(r["documents"], total) for r in report.get("rules", [])}

    a_rules, b_rules = rule_rates(this), rule_rates(other)
    rules_diff = [
        {"rule": r, "drop_rate": [b_rules.get(r), a_rules.get(r)]}
        for r in dict.fromkeys([*b_rules, *a_rules])
    ]

    def lang_shares(report: dict[str, Any]) -> dict[str, float]:
        top = report.get("languages", {}).get("top", [])
        total = stage_rows(report).get("signals", {}).get("documents_in") or 1
        return {t["lang"]: round(t["documents"] / total, 4) for t in top}

    a_lang, b_lang = lang_shares(this), lang_shares(other)
    signals_diff = [
        {
            "signal": s,
            "median": [other.get("histograms", {}).get(s, {}).get("median"), h.get("median")],
            "mean": [other.get("histograms", {}).get(s, {}).get("mean"), h.get("mean")],
        }
        for s, h in this.get("histograms", {}).items()
    ]
    reasons = dict.fromkeys([*other.get("quarantine", {}), *this.get("quarantine", {})])
    return {
        "run": this.get("run_id"),
        "against": other.get("run_id"),
        "stages": stages,
        "rules": rules_diff,
        "languages": [
            {"lang": lang, "share": [b_lang.get(lang, 0.0), a_lang.get(lang, 0.0)]}
            for lang in dict.fromkeys([*b_lang, *a_lang])
        ],
        "signals": signals_diff,
        "quarantine": [
            {
                "reason": r,
                "records": [other.get("quarantine", {}).get(r, 0), this.get("quarantine", {}).get(r, 0)],
            }
            for r in reasons
        ],
        "duplicates_removed": [
            other.get("duplicates", {}).get("removed"),
            this.get("duplicates", {}).get("removed"),
        ],
    }
