"""What-if (another policy on the same stored signals) and run-to-run diff, as JSON-able dicts.

Both lead with what changed in the settings (policy rules and bounds; for a diff, the config), keep only
the rows whose figures changed, and show documents whose keep/drop flipped, per rule. A what-if counts
sizes in the run's own tokens; a diff compares UTF-8 bytes, because each run trains its own tokenizer.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow.compute as pc

from pipelines.quality.policy import Policy
from pipelines.report.build import EXAMPLES_PER_RULE, _share, _stable_order, first_rows_in_order, order_keys
from pipelines.report.data import RunData, texts_of
from pipelines.run import RunDir

Change = dict[str, Any]  # {"setting", "before", "after"}


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys; lists and scalars are leaves."""
    if not isinstance(value, dict):
        return {prefix: value}
    out: dict[str, Any] = {}
    for key, item in value.items():
        out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    return out


def setting_changes(
    before: dict[str, Any], after: dict[str, Any], skip: tuple[str, ...] = ()
) -> list[Change]:
    """Every dotted setting whose value differs between two nested dicts (missing: None)."""
    a, b = _flatten(before), _flatten(after)
    keys = [k for k in dict.fromkeys([*a, *b]) if not k.startswith(skip)]
    return [{"setting": k, "before": a.get(k), "after": b.get(k)} for k in keys if a.get(k) != b.get(k)]


def _policy_settings(policy: Policy | None) -> dict[str, Any]:
    """A policy as nested settings keyed by rule name (so a reordered rule list is no change)."""
    if policy is None:
        return {}
    dumped = policy.model_dump(mode="json")
    rules = {r.pop("name"): r for r in dumped.pop("rules")}
    return {**dumped, "rules": rules}


def policy_changes(before: Policy | None, after: Policy | None) -> list[Change]:
    """What differs between two policies: language section, rules (signal, bounds, languages), overrides."""
    return setting_changes(_policy_settings(before), _policy_settings(after))


def _keep(failures: dict[str, np.ndarray], rows: int) -> np.ndarray:
    return ~np.stack(list(failures.values()), 1).any(1) if failures else np.ones(rows, bool)


def _reasons(failures: dict[str, np.ndarray], row: int) -> list[str]:
    return [name for name, mask in failures.items() if mask[row]]


def policy_comparison(data: RunData, other: Policy) -> dict[str, Any]:
    """What-if: apply another policy to the stored signals and compare with the run's own."""
    sizes, unit, rows = data.sizes(), data.unit, data.signals.num_rows
    total_docs, total_size = rows, int(sizes.sum())
    base = data.policy.failures(data.signals) if data.policy else {}
    new = other.failures(data.signals)
    base_keep, new_keep = _keep(base, rows), _keep(new, rows)
    changes = policy_changes(data.policy, other)
    changed_names = {c["setting"].split(".")[1] for c in changes if c["setting"].startswith("rules.")}
    empty = np.zeros(rows, bool)
    order: list[tuple[np.ndarray, np.ndarray]] = []  # ids and their order keys, made when first needed
    table, unchanged = [], 0
    for name in dict.fromkeys([*base, *new]):
        b, n = base.get(name), new.get(name)
        if b is not None and n is not None and np.array_equal(b, n) and name not in changed_names:
            unchanged += 1
            continue
        bd, nd = (int(m.sum()) if m is not None else None for m in (b, n))
        bs, ns = (int(sizes[m].sum()) if m is not None else None for m in (b, n))
        b_fails, n_fails = empty if b is None else b, empty if n is None else n
        if not order:
            ids = data.signals.column("id").to_numpy(zero_copy_only=False)
            order.append((ids, order_keys(ids)))
        flipped = _flipped(data, base, new, base_keep, new_keep, b_fails, n_fails, order[0])
        table.append(
            {
                "rule": name,
                "in": "both" if b is not None and n is not None else ("run's policy" if n is None else "new"),
                "documents_before": bd,
                "documents_after": nd,
                "documents_change": (nd or 0) - (bd or 0),
                f"{unit}_before": bs,
                f"{unit}_after": ns,
                f"{unit}_change": (ns or 0) - (bs or 0),
                "share_before": _share(bs, total_size) if bs is not None else None,
                "share_after": _share(ns, total_size) if ns is not None else None,
                "examples": flipped,
            }
        )
    return {
        "changes": changes,
        "documents_in": total_docs,
        f"{unit}_in": total_size,
        "kept_documents_before": int(base_keep.sum()),
        "kept_documents_after": int(new_keep.sum()),
        f"kept_{unit}_before": int(sizes[base_keep].sum()),
        f"kept_{unit}_after": int(sizes[new_keep].sum()),
        "newly_dropped": int((base_keep & ~new_keep).sum()),
        "newly_kept": int((~base_keep & new_keep).sum()),
        f"newly_dropped_{unit}": int(sizes[base_keep & ~new_keep].sum()),
        f"newly_kept_{unit}": int(sizes[~base_keep & new_keep].sum()),
        "rules": sorted(table, key=lambda r: -abs(r[f"{unit}_change"])),
        "unchanged_rules": unchanged,
    }


def _flipped(
    data: RunData,
    base: dict[str, np.ndarray],
    new: dict[str, np.ndarray],
    base_keep: np.ndarray,
    new_keep: np.ndarray,
    base_fails: np.ndarray,
    new_fails: np.ndarray,
    order: tuple[np.ndarray, np.ndarray],
) -> dict[str, list[dict[str, Any]]]:
    """Up to EXAMPLES_PER_RULE documents this rule newly drops (kept before) and newly keeps (this rule
    among the reasons it was dropped before), with both policies' reasons and an excerpt. `order`: the
    ids and their `order_keys`."""
    ids, keys = order
    picked: dict[str, list[str]] = {}
    row_of: dict[str, int] = {}
    for kind, mask in (
        ("newly_dropped", base_keep & ~new_keep & new_fails),
        ("newly_kept", ~base_keep & new_keep & base_fails),
    ):
        rows = first_rows_in_order(keys, mask, EXAMPLES_PER_RULE)
        row_of.update({str(ids[r]): int(r) for r in rows})
        picked[kind] = [str(ids[r]) for r in rows]
    texts = texts_of(data.run, set(row_of))
    return {
        kind: [
            {
                "id": i,
                "reasons_before": _reasons(base, row_of[i]),
                "reasons_after": _reasons(new, row_of[i]),
                "excerpt": texts.get(i, {}).get("excerpt"),
            }
            for i in chosen
        ]
        for kind, chosen in picked.items()
    }


def _rate(out: Any, into: Any) -> float | None:
    return round(out / into, 6) if out is not None and into else None


def _changed(row: dict[str, Any], keys: list[str]) -> bool:
    return any(row[k][0] != row[k][1] for k in keys)


def _with_change(pair: list[Any]) -> list[Any]:
    """[other, this, this - other] (the change is None when a side is missing)."""
    a, b = pair
    return [a, b, (b - a) if a is not None and b is not None else None]


def run_comparison(this: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """Diff of two built reports, `other → this`: only the rows whose figures changed. Sizes are UTF-8
    bytes (each run trains its own tokenizer, so their token counts do not compare)."""

    def stage_rows(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
        return {s["stage"]: s for s in report["funnel"] if s["stage"] != "tokenize"}

    a_stages, b_stages = stage_rows(this), stage_rows(other)
    stages = []
    for name in dict.fromkeys([*b_stages, *a_stages]):
        a, b = a_stages.get(name, {}), b_stages.get(name, {})
        row = {
            "stage": name,
            "documents_out": _with_change([b.get("documents_out"), a.get("documents_out")]),
            "keep_rate": _with_change(
                [
                    _rate(b.get("documents_out"), b.get("documents_in")),
                    _rate(a.get("documents_out"), a.get("documents_in")),
                ]
            ),
            "bytes_out": _with_change([b.get("bytes_out"), a.get("bytes_out")]),
        }
        stages.append(row)

    def rule_rates(report: dict[str, Any]) -> dict[str, tuple[float | None, float | None]]:
        signals = stage_rows(report).get("signals", {})
        docs, size = signals.get("documents_in"), signals.get("bytes_in")
        return {
            r["rule"]: (_rate(r["documents"], docs), _rate(r.get("bytes"), size))
            for r in report.get("rules", [])
        }

    a_rules, b_rules = rule_rates(this), rule_rates(other)
    rules_diff = []
    for r in dict.fromkeys([*b_rules, *a_rules]):
        b, a = b_rules.get(r, (None, None)), a_rules.get(r, (None, None))
        rules_diff.append(
            {"rule": r, "drop_rate": _with_change([b[0], a[0]]), "bytes_share": _with_change([b[1], a[1]])}
        )

    def lang_shares(report: dict[str, Any]) -> dict[str, float]:
        top = report.get("languages", {}).get("top", [])
        total = stage_rows(report).get("signals", {}).get("documents_in") or 1
        return {t["lang"]: round(t["documents"] / total, 6) for t in top}

    a_lang, b_lang = lang_shares(this), lang_shares(other)
    a_hist, b_hist = this.get("histograms", {}), other.get("histograms", {})
    signals_diff = [
        {
            "signal": s,
            "median": _with_change([b_hist.get(s, {}).get("median"), a_hist.get(s, {}).get("median")]),
            "mean": _with_change([b_hist.get(s, {}).get("mean"), a_hist.get(s, {}).get("mean")]),
        }
        for s in dict.fromkeys([*b_hist, *a_hist])
    ]
    a_q, b_q = this.get("quarantine", {}), other.get("quarantine", {})
    tables = {
        "stages": (stages, ["documents_out", "keep_rate", "bytes_out"]),
        "rules": (rules_diff, ["drop_rate", "bytes_share"]),
        "languages": (
            [
                {"lang": x, "share": _with_change([b_lang.get(x, 0.0), a_lang.get(x, 0.0)])}
                for x in dict.fromkeys([*b_lang, *a_lang])
            ],
            ["share"],
        ),
        "signals": (signals_diff, ["median", "mean"]),
        "quarantine": (
            [
                {"reason": r, "records": _with_change([b_q.get(r, 0), a_q.get(r, 0)])}
                for r in dict.fromkeys([*b_q, *a_q])
            ],
            ["records"],
        ),
    }
    out: dict[str, Any] = {"run": this.get("run_id"), "against": other.get("run_id"), "unit": "bytes"}
    for key, (rows, values) in tables.items():
        changed = [row for row in rows if _changed(row, values)]
        out[key] = changed
        out[f"unchanged_{key}"] = len(rows) - len(changed)
    out["duplicates_removed"] = _with_change(
        [other.get("duplicates", {}).get("removed"), this.get("duplicates", {}).get("removed")]
    )
    return out


def flipped_between_runs(this: RunDir, other: RunDir) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Per rule, up to EXAMPLES_PER_RULE documents present in both runs (same id) that this rule newly
    drops in `this` (kept in `other`) and newly keeps (dropped by it in `other`, kept in `this`)."""
    from pipelines.corpus import read_signals

    columns = ["id", "keep", "reasons"]
    a, b = read_signals(this, columns), read_signals(other, columns)
    position = pc.index_in(a.column("id"), value_set=b.column("id").combine_chunks())
    valid = position.is_valid().to_numpy(zero_copy_only=False)
    a_keep = a.column("keep").to_numpy(zero_copy_only=False)
    b_keep = np.zeros(len(a_keep), bool)
    where = np.flatnonzero(valid)
    b_rows = position.combine_chunks().drop_null().to_numpy()
    b_keep[where] = b.column("keep").to_numpy(zero_copy_only=False)[b_rows]
    flipped = np.flatnonzero(valid & (a_keep != b_keep))
    a_reasons, b_reasons = a.column("reasons"), b.column("reasons")
    b_row_of = dict(zip(where.tolist(), b_rows.tolist(), strict=True))
    ids = a.column("id")
    by_rule: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for row in flipped.tolist():
        entry = {
            "id": ids[row].as_py(),
            "reasons_before": b_reasons[b_row_of[row]].as_py(),
            "reasons_after": a_reasons[row].as_py(),
        }
        kind, rules = (
            ("newly_kept", entry["reasons_before"])
            if a_keep[row]
            else ("newly_dropped", entry["reasons_after"])
        )
        for rule in rules:
            by_rule.setdefault(rule, {"newly_dropped": [], "newly_kept": []})[kind].append(entry)
    wanted = set()
    for kinds in by_rule.values():
        for kind, entries in kinds.items():
            order = {i: n for n, i in enumerate(_stable_order([e["id"] for e in entries]))}
            kinds[kind] = sorted(entries, key=lambda e: order[e["id"]])[:EXAMPLES_PER_RULE]
            wanted.update(e["id"] for e in kinds[kind])
    texts = texts_of(this, wanted)
    for kinds in by_rule.values():
        for entries in kinds.values():
            for e in entries:
                e["excerpt"] = texts.get(e["id"], {}).get("excerpt")
    return dict(sorted(by_rule.items()))


__all__ = [
    "flipped_between_runs",
    "policy_changes",
    "policy_comparison",
    "run_comparison",
    "setting_changes",
]
