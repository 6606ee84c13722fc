"""The results of a run: medians and ratios per scenario, the printed tables, the JSON file, and
the "latest results" block of benchmarks/README.md.

Ratios are TPS ratios: tenantgate TPS / PgBouncer TPS and tenantgate TPS / direct TPS (1.00 =
as fast; 0.50 = half the throughput); where the minimal relay ran (scenarios a and d) also
relay / PgBouncer, relay / direct and tenantgate / relay. For the idle scenario the ratio is of
bytes per client.
"""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

from benchmarks.idle import IdleResult
from benchmarks.pgbench import RunResult
from benchmarks.scenarios import Scenario

README_BEGIN = "<!-- latest-results:begin (written by benchmarks/run.py) -->"
README_END = "<!-- latest-results:end -->"


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def summarize_runs(runs: list[RunResult]) -> dict:
    """Medians over the repetitions of one scenario on one target, and what went wrong."""
    bad = [r for r in runs if not r.clean]
    problems = sorted({r.error or _abort_text(r) for r in bad})
    return {
        "tps": _median([r.tps for r in runs]),
        "p50_ms": _median([r.p50_ms for r in runs]),
        "p99_ms": _median([r.p99_ms for r in runs]),
        "cache_hit_ratio": _median([r.cache_hit_ratio for r in runs]),
        "runs": len(runs),
        "failed_runs": len(bad),
        "failed_tx": sum(r.failed_tx for r in runs),
        "aborted_clients": sum(r.aborted_clients for r in runs),
        "problems": problems,
        "all_runs": [r.to_json() for r in runs],
    }


def _abort_text(run: RunResult) -> str:
    detail = next((line for line in run.stderr_tail if re.search(r"client \d+ .*aborted", line)),
                  "")
    detail = re.sub(r"^pgbench: error: client \d+ (script \d+ )?aborted in command \d+ "
                    r"(query \d+)?:?\s*", "", detail)
    parts = [f"{run.aborted_clients} clients aborted" if run.aborted_clients else "",
             f"{run.failed_tx} failed tx" if run.failed_tx else ""]
    return ", ".join(p for p in parts if p) + (f": {detail}" if detail else "")


def scenario_entry(scenario: Scenario, by_target: dict[str, list[RunResult]] | None = None,
                   idle: dict[str, IdleResult] | None = None, note: str = "") -> dict:
    """The JSON entry of one scenario, ratios included."""
    entry = {"key": scenario.key, "title": scenario.title, "kind": scenario.kind,
             "skip_reason": scenario.skip_reason or None, "note": note or None,
             "pgbouncer_mode": scenario.pgbouncer_mode, "targets": {}}
    by_target = {t: runs for t, runs in (by_target or {}).items() if runs}
    if by_target:
        entry["targets"] = {t: summarize_runs(r) for t, r in by_target.items()}
        tps = {t: s["tps"] for t, s in entry["targets"].items()}
        p50 = {t: s["p50_ms"] for t, s in entry["targets"].items()}
        entry["ratios"] = {
            "tenantgate/pgbouncer": _ratio(tps.get("tenantgate"), tps.get("pgbouncer")),
            "tenantgate/direct": _ratio(tps.get("tenantgate"), tps.get("direct")),
            "pgbouncer/direct": _ratio(tps.get("pgbouncer"), tps.get("direct"))}
        if "relay" in tps:  # the minimal Python relay ran (scenarios a and d)
            entry["ratios"].update({
                "relay/pgbouncer": _ratio(tps.get("relay"), tps.get("pgbouncer")),
                "relay/direct": _ratio(tps.get("relay"), tps.get("direct")),
                "tenantgate/relay": _ratio(tps.get("tenantgate"), tps.get("relay"))})
        if p50.get("direct") is not None:
            entry["added_p50_ms_vs_direct"] = {
                t: round(v - p50["direct"], 3) for t, v in p50.items()
                if t != "direct" and v is not None}
    if idle:
        entry["targets"] = {t: r.to_json() for t, r in idle.items()}
        per = {t: r.bytes_per_client for t, r in idle.items()}
        entry["ratios"] = {"tenantgate/pgbouncer": _ratio(per.get("tenantgate"),
                                                          per.get("pgbouncer"))}
    return entry


def summary_line(entries: list[dict]) -> str:
    """One line on scenario (a) for the README: tenantgate against PgBouncer and, when the
    relay ran, against the minimal relay; "" when (a) has no ratios."""
    entry = next((e for e in entries if e["key"] == "a" and e.get("ratios")), None)
    if entry is None:
        return ""
    ratios, targets = entry["ratios"], entry["targets"]
    failed = any(s["failed_runs"] for s in targets.values())
    parts = [f"tenantgate/pgbouncer {_num(ratios.get('tenantgate/pgbouncer'), '.2f')}"]
    if "relay" in targets:
        parts += [f"relay/pgbouncer {_num(ratios.get('relay/pgbouncer'), '.2f')}",
                  f"tenantgate/relay {_num(ratios.get('tenantgate/relay'), '.2f')} (the share "
                  "of a minimal framing Python relay's TPS that tenantgate reaches)"]
    return ("(a) pgbench -S, 16 clients, TPS ratios: " + "; ".join(parts)
            + (" — some runs had failures" if failed else "") + ".")


# -- tables -----------------------------------------------------------------------------------

def _num(value: float | None, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def _failed_text(summary: dict) -> str:
    if not summary["failed_runs"]:
        return "0"
    return f"{summary['failed_runs']}/{summary['runs']} runs"


def throughput_table(entries: list[dict], labels: dict[str, str]) -> str:
    """Scenario, target, TPS, p50, p99, failed, ×PgBouncer, ×direct, note (markdown table)."""
    rows = [("scenario", "target", "TPS", "p50 ms", "p99 ms", "failed", "×PgBouncer", "×direct",
             "note")]
    for entry in entries:
        label = f"{entry['key']} {labels[entry['key']]}"
        if entry["kind"] == "skipped":
            rows.append((label, "—", "—", "—", "—", "—", "—", "—", entry["skip_reason"]))
            continue
        if entry["kind"] != "pgbench":
            continue
        ratios = entry.get("ratios", {})
        for target, s in entry["targets"].items():
            vs_pgb = ratios.get(f"{target}/pgbouncer")  # tenantgate and relay rows
            vs_direct = ratios.get(f"{target}/direct") if target != "direct" else None
            targets = entry["targets"]
            rows.append((label, target, _num(s["tps"], ",.0f"), _num(s["p50_ms"], ".3f"),
                         _num(s["p99_ms"], ".3f"), _failed_text(s),
                         _marked(vs_pgb, targets.get("pgbouncer"), s),
                         _marked(vs_direct, targets.get("direct"), s),
                         _target_note(entry, target, s)))
    return _markdown(rows)


def _marked(ratio: float | None, reference: dict | None, own: dict) -> str:
    """A ratio; in parentheses when either side had failed runs (it compares unlike runs)."""
    text = _num(ratio, ".2f")
    if ratio is not None and (own["failed_runs"] or (reference or {}).get("failed_runs")):
        return f"({text})"
    return text


def _target_note(entry: dict, target: str, summary: dict) -> str:
    notes = []
    added = entry.get("added_p50_ms_vs_direct", {}).get(target)
    direct_tps = entry["targets"].get("direct", {}).get("tps")
    if entry["key"] == "d" and added is not None and summary["tps"] and direct_tps:
        mean = 1000 / summary["tps"] - 1000 / direct_tps  # one client: mean latency = 1/TPS
        notes.append(f"added per query vs direct: {added:+.3f} ms p50, {mean:+.3f} ms mean")
    if entry["key"].startswith("f") and summary.get("cache_hit_ratio") is not None:
        notes.append(f"analysis cache hits {summary['cache_hit_ratio']:.2%}")
    if target == "direct" and entry.get("note"):
        notes.append(entry["note"])
    if target == "pgbouncer" and entry.get("pgbouncer_mode") == "session":
        notes.append("session mode (no prepared statements in transaction mode before 1.21)")
    vs_relay = entry.get("ratios", {}).get("tenantgate/relay")
    if target == "tenantgate" and vs_relay is not None:
        notes.append(f"×relay {_marked(vs_relay, entry['targets'].get('relay'), summary)}")
    notes += summary["problems"][:1]
    return "; ".join(notes)[:160]


def idle_table(entries: list[dict]) -> str:
    rows = [("scenario", "target", "clients ok", "RSS before MB", "RSS after MB",
             "bytes/client", "×PgBouncer", "login s", "errors")]
    for entry in entries:
        if entry["kind"] != "idle":
            continue
        ratio = entry.get("ratios", {}).get("tenantgate/pgbouncer")
        for target, r in entry["targets"].items():
            mb = (lambda v: _num(v / 1e6 if v is not None else None, ".1f"))
            rows.append((f"{entry['key']} idle", target,
                         f"{r['clients_ok']:,}/{r['clients_wanted']:,}", mb(r["rss_before"]),
                         mb(r["rss_after"]), _num(r["bytes_per_client"], ",.0f"),
                         _num(ratio if target == "tenantgate" else None, ".2f"),
                         _num(r["login_seconds"], ".1f"),
                         str(r["errors"]) + (f" ({r['first_error']})" if r["first_error"] else "")))
    return _markdown(rows) if len(rows) > 1 else ""


def _markdown(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    numeric = {2, 3, 4, 5, 6, 7}  # right-aligned columns in both tables

    def line(row):
        cells = [c.rjust(w) if i in numeric else c.ljust(w)
                 for i, (c, w) in enumerate(zip(row, widths))]
        return "| " + " | ".join(cells) + " |"
    sep = "|" + "|".join("-" * (w + 1) + (":" if i in numeric else "-")
                         for i, w in enumerate(widths)) + "|"
    return "\n".join([line(rows[0]), sep, *(line(r) for r in rows[1:])])


# -- files -----------------------------------------------------------------------------------

def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")


def update_readme(readme: Path, block: str) -> bool:
    """Replace the text between the README markers with `block`; False if there are none."""
    try:
        text = readme.read_text()
    except OSError:
        return False
    start, end = text.find(README_BEGIN), text.find(README_END)
    if start < 0 or end < start:
        return False
    readme.write_text(text[:start + len(README_BEGIN)] + "\n" + block.rstrip() + "\n"
                      + text[end:])
    return True
