"""Aggregate a run into a JSON-able report: funnel, rules, histograms, curves, languages, duplicates."""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from types import SimpleNamespace
from typing import Any

import numpy as np

from pipelines.corpus import is_removed
from pipelines.quality.policy import LANG_NOT_ALLOWED, LOW_LANG_CONFIDENCE, Policy
from pipelines.report.data import RunData, as_float, dedup_section, signal_columns, texts_of

EXAMPLES_PER_RULE = 5
BORDERLINE_PER_RULE = 3
HISTOGRAM_BINS = 30
CURVE_POINTS = 41
TOP_LANGUAGES = 25
TOP_SOURCES = 30
LANGUAGE_COLUMNS = 8  # languages (by input size) in the language x rule table
# Rules whose signals match one pattern are one family: they remove largely the same documents, so the
# report also shows them as one row (the union of what they remove).
FAMILIES = (("Gopher n-gram repetition", re.compile(r"(top|dup)_\d+gram_char_fraction")),)


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
        report["rule_groups"] = rule_groups(data, failures, report["rules"])
        report["sources"] = sources(data)
        report["histograms"] = histograms(data)
        report["curves"] = curves(data, failures)
        report["languages"] = languages(data, failures)
    if data.removed is not None:
        report["duplicates"] = duplicates(data)
    if data.ablation is not None:
        report["ablation"] = data.ablation
    tokenizer = data.record.get("stages", {}).get("tokenizer", {}).get("summary", {})
    if tokenizer.get("vocab_size"):  # bytes per token: measured on held-out (validation) text
        report["tokenizer"] = {
            k: tokenizer.get(k) for k in ("vocab_size", "bytes_per_token", "heldout_documents")
        }
    return report


def stage_timings(data: RunData) -> dict[str, dict[str, Any]]:
    """Status, seconds and documents per second of every finished or failed stage (the report stage,
    which is writing this report, is left out while it runs)."""
    out = {}
    for name, stage in data.record.get("stages", {}).items():
        if name == "report" and stage.get("status") == "running":
            continue
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


def final_mask(data: RunData) -> np.ndarray:
    """Documents kept by the policy and not removed by dedup."""
    keep = data.signals.column("keep").to_numpy(zero_copy_only=False)
    if data.removed is None:
        return keep
    return keep & ~is_removed(data.signals.column("id"), data.removed.column("id").combine_chunks())


def funnel(data: RunData) -> list[dict[str, Any]]:
    """Documents, characters, UTF-8 bytes and tokens into and out of every stage."""
    steps: list[dict[str, Any]] = [
        {"stage": "ingest", "documents_out": data.documents_in, "quarantined": sum(data.quarantine.values())}
    ]
    if data.signals is None:
        return steps
    keep = data.signals.column("keep").to_numpy(zero_copy_only=False)
    chars = data.signals.column("n_chars").to_numpy(zero_copy_only=False).astype(np.int64)
    tokens, nbytes = data.tokens, data.bytes
    steps[0].update(characters_out=int(chars.sum()), tokens_out=_sum(tokens))
    steps.append(
        {
            "stage": "signals",
            "documents_in": len(keep),
            "documents_out": int(keep.sum()),
            "characters_in": int(chars.sum()),
            "characters_out": int(chars[keep].sum()),
            "bytes_in": _sum(nbytes),
            "bytes_out": _sum(nbytes, keep),
            "tokens_in": _sum(tokens),
            "tokens_out": _sum(tokens, keep),
        }
    )
    if data.removed is not None:
        survive = final_mask(data)
        steps.append(
            {
                "stage": "dedup",
                "documents_in": int(keep.sum()),
                "documents_out": int(survive.sum()),
                "characters_in": int(chars[keep].sum()),
                "characters_out": int(chars[survive].sum()),
                "bytes_in": _sum(nbytes, keep),
                "bytes_out": _sum(nbytes, survive),
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
    return sorted(ids, key=_order_key)


def _order_key(doc_id: str) -> bytes:
    return hashlib.sha256(doc_id.encode()).digest()[:8]


def order_keys(ids: np.ndarray) -> np.ndarray:
    """`_stable_order`'s key of every id as uint64, computed once for a whole table."""
    return np.frombuffer(b"".join(map(_order_key, ids)), dtype=">u8").astype(np.uint64)


def first_rows_in_order(keys: np.ndarray, mask: np.ndarray, k: int) -> np.ndarray:
    """The rows of the first `k` ids under `mask` in `_stable_order` (`keys`: their `order_keys`),
    without sorting all of them."""
    rows = np.flatnonzero(mask)
    if len(rows) > k:
        rows = rows[np.argpartition(keys[rows], k)[:k]]
    return rows[np.argsort(keys[rows], kind="stable")]


def first_in_order(ids: np.ndarray, keys: np.ndarray, mask: np.ndarray, k: int) -> list[str]:
    """The first `k` ids under `mask` in `_stable_order`."""
    return [str(ids[r]) for r in first_rows_in_order(keys, mask, k)]


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 6) if whole else None


def rule_definition(policy: Policy | None, name: str) -> Any:
    """The signal and bounds of a rule, the language section's two rules included (or None)."""
    if policy is None:
        return None
    if name == LOW_LANG_CONFIDENCE:
        return SimpleNamespace(signal="lang_score", min=policy.language.min_confidence, max=None, allow=None)
    if name == LANG_NOT_ALLOWED:
        return SimpleNamespace(signal="lang", min=None, max=None, allow=policy.language.allow)
    return next((r for r in policy.rules if r.name == name), None)


def rules(data: RunData, failures: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Per rule, ranked by the size it removes: documents and tokens it removes overall and alone, their
    share of the filter's input, examples and borderline kept documents."""
    if not failures:
        return []
    signals, sizes, unit = data.signals, data.sizes(), data.unit
    total = int(sizes.sum())
    nbytes = data.bytes if data.bytes is not None else np.zeros(len(sizes), np.int64)
    ids = signals.column("id").to_numpy(zero_copy_only=False)
    keys = order_keys(ids)
    matrix = np.stack(list(failures.values()), axis=1)
    n_failed = matrix.sum(axis=1)
    keep = n_failed == 0
    out, wanted = [], set()
    for name, mask in failures.items():
        alone = mask & (n_failed == 1)
        rule = rule_definition(data.policy, name)
        entry: dict[str, Any] = {
            "rule": name,
            "signal": getattr(rule, "signal", None),
            "min": getattr(rule, "min", None),
            "max": getattr(rule, "max", None),
            "documents": int(mask.sum()),
            "documents_alone": int(alone.sum()),
            unit: int(sizes[mask].sum()),
            f"{unit}_alone": int(sizes[alone].sum()),
            "share": _share(int(sizes[mask].sum()), total),
            "share_alone": _share(int(sizes[alone].sum()), total),
            "bytes": int(nbytes[mask].sum()),
        }
        if getattr(rule, "allow", None) is not None:
            entry["allow"] = rule.allow
        signal = entry["signal"] if entry["signal"] != "lang" else None
        values = as_float(signals, signal) if signal else None
        entry["examples"] = [{"id": i} for i in first_in_order(ids, keys, mask, EXAMPLES_PER_RULE)]
        entry["borderline"] = [{"id": i} for i in _borderline(ids, keep, values, rule)]
        for example in entry["examples"] + entry["borderline"]:
            wanted.add(example["id"])
        out.append(entry)
    _attach_texts(data, out, wanted, ids)
    return sorted(out, key=lambda e: (-e[unit], -e["documents"]))


def rule_groups(
    data: RunData, failures: dict[str, np.ndarray], entries: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Families of rules (FAMILIES) as single rows: what any of their rules removes, and what they alone
    remove (no rule outside the family would have)."""
    sizes, unit, names = data.sizes(), data.unit, list(failures)
    total = int(sizes.sum())
    out = []
    for title, pattern in FAMILIES:
        members = [e["rule"] for e in entries if e["signal"] and pattern.fullmatch(e["signal"])]
        if len(members) < 2:
            continue
        any_member = np.stack([failures[m] for m in members], axis=1).any(axis=1)
        others = [failures[n] for n in names if n not in members]
        outside = np.stack(others, axis=1).any(axis=1) if others else np.zeros(len(sizes), bool)
        alone = any_member & ~outside
        out.append(
            {
                "group": title,
                "rules": members,
                "documents": int(any_member.sum()),
                "documents_alone": int(alone.sum()),
                unit: int(sizes[any_member].sum()),
                f"{unit}_alone": int(sizes[alone].sum()),
                "share": _share(int(sizes[any_member].sum()), total),
                "share_alone": _share(int(sizes[alone].sum()), total),
            }
        )
    return out


def sources(data: RunData) -> list[dict[str, Any]]:
    """The funnel per input group (the folder or file an input was named by): documents and sizes read,
    kept by the policy and left after dedup."""
    if data.groups is None or not len(data.groups):
        return []
    sizes, unit = data.sizes(), data.unit
    keep = data.signals.column("keep").to_numpy(zero_copy_only=False)
    final = final_mask(data)
    out = []
    for group in sorted(set(data.groups.tolist())):
        mask = data.groups == group
        out.append(
            {
                "source": group,
                "documents_in": int(mask.sum()),
                "documents_kept": int((mask & keep).sum()),
                "documents_out": int((mask & final).sum()),
                f"{unit}_in": int(sizes[mask].sum()),
                f"{unit}_kept": int(sizes[mask & keep].sum()),
                f"{unit}_out": int(sizes[mask & final].sum()),
            }
        )
    out.sort(key=lambda e: -e[f"{unit}_in"])
    if len(out) > TOP_SOURCES:  # the smallest inputs in one row
        rest = out[TOP_SOURCES - 1 :]
        summed = {k: sum(e[k] for e in rest) for k in rest[0] if k != "source"}
        out = [*out[: TOP_SOURCES - 1], {"source": f"({len(rest)} other inputs)", **summed}]
    return out


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


def _family_masks(failures: dict[str, np.ndarray], data: RunData) -> dict[str, np.ndarray]:
    """The failure masks with each family of rules (FAMILIES) merged into one entry."""
    out, merged = {}, set()
    for title, pattern in FAMILIES:
        members = [
            name
            for name in failures
            if (rule := rule_definition(data.policy, name)) is not None and pattern.fullmatch(rule.signal)
        ]
        if len(members) >= 2:
            out[f"{title} ({len(members)} rules)"] = np.stack([failures[m] for m in members], 1).any(1)
            merged.update(members)
    return {**{n: m for n, m in failures.items() if n not in merged}, **out}


def languages(data: RunData, failures: dict[str, np.ndarray]) -> dict[str, Any]:
    """Documents and sizes, all and kept, per detected language; and the size each rule removes in the
    largest languages."""
    lang = data.signals.column("lang").to_numpy(zero_copy_only=False).astype(str)
    keep = data.signals.column("keep").to_numpy(zero_copy_only=False)
    sizes, unit = data.sizes(), data.unit
    codes, inverse = np.unique(lang, return_inverse=True)
    docs = np.bincount(inverse, minlength=len(codes))
    kept_docs = np.bincount(inverse, weights=keep, minlength=len(codes)).astype(np.int64)
    size = np.bincount(inverse, weights=sizes, minlength=len(codes)).astype(np.int64)
    kept_size = np.bincount(inverse, weights=sizes * keep, minlength=len(codes)).astype(np.int64)
    order = sorted(range(len(codes)), key=lambda i: (-docs[i], codes[i]))[:TOP_LANGUAGES]
    top = [
        {
            "lang": str(codes[i]),
            "documents": int(docs[i]),
            "kept": int(kept_docs[i]),
            unit: int(size[i]),
            f"kept_{unit}": int(kept_size[i]),
        }
        for i in order
    ]
    columns = [int(i) for i in np.argsort(-size, kind="stable")[:LANGUAGE_COLUMNS]]
    by_rule = []
    for name, mask in _family_masks(failures, data).items():
        removed = np.bincount(inverse, weights=sizes * mask, minlength=len(codes)).astype(np.int64)
        if mask.any():
            row = {"rule": name, unit: [int(removed[i]) for i in columns], "total": int(removed.sum())}
            by_rule.append(row)
    return {
        "distinct": len(codes),
        "top": top,
        "by_rule": {
            "languages": [str(codes[i]) for i in columns],
            f"{unit}_in": [int(size[i]) for i in columns],
            "rules": sorted(by_rule, key=lambda r: -r["total"]),
        },
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


def ranked_removals(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Rules and rule families (`rule_groups`) that removed something, largest first by size; a family
    row carries its rules under `members`, and its rules are not repeated on their own."""
    unit = report["unit"]
    grouped = {name for g in report.get("rule_groups", []) for name in g["rules"]}
    by_name = {r["rule"]: r for r in report.get("rules", [])}
    rows = [r for r in report.get("rules", []) if r["rule"] not in grouped]
    rows += [
        {**g, "rule": f"{g['group']} ({len(g['rules'])} rules)", "members": [by_name[n] for n in g["rules"]]}
        for g in report.get("rule_groups", [])
    ]
    return sorted((r for r in rows if r["documents"]), key=lambda r: (-r[unit], -r["documents"]))
