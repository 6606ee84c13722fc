"""`tenantgate audit verify|report`: check an audit trail, and summarise what a tenant did.

    tenantgate audit verify FILE... [--key-env VAR] [--open-ok] [--pubkey PEM]
        exit 0 when every file verifies (and the files chain together), else print
        `FILE:LINE: reason` for each bad file and exit 1; 2 for usage errors (no key).
    tenantgate audit report --tenant T [--since ISO] [--until ISO] [--format md|html|json] FILE...
        connections, statement kinds, refusals by rule (with statement shapes, never
        literals), bypass activity, configuration changes, and whether the chain verified.

The HMAC key is read from the environment variable named by --key-env
(default TENANTGATE_AUDIT_KEY), never from the command line.
`add_audit_commands(subparsers)` hooks both into the main `tenantgate` parser.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import html
import json
import os
import re
import sys
from collections.abc import Iterable
from typing import Any

from proxy.observability.audit import read_entries, shape_of, verify_files

DEFAULT_KEY_ENV = "TENANTGATE_AUDIT_KEY"
SHAPES_PER_RULE = 20


def add_audit_commands(subparsers: Any) -> argparse.ArgumentParser:
    """Add `audit verify` and `audit report` to an argparse subparsers object."""
    audit = subparsers.add_parser("audit", help="verify the audit trail, or report on a tenant")
    commands = audit.add_subparsers(dest="audit_command", required=True)

    check = commands.add_parser("verify", help="check the HMAC chain; FILE:LINE errors, exit 1")
    check.add_argument("files", nargs="+", metavar="FILE",
                       help="audit files of one trail (rotated ones too, any order)")
    _key_options(check)
    check.set_defaults(func=run_verify)

    report = commands.add_parser("report", help="what one tenant did, from the audit trail")
    report.add_argument("files", nargs="+", metavar="FILE")
    report.add_argument("--tenant", required=True, help="tenant name ('*': every tenant)")
    report.add_argument("--since", type=_when, help="ISO time (UTC unless it has an offset)")
    report.add_argument("--until", type=_when, help="ISO time, exclusive")
    report.add_argument("--format", choices=("md", "html", "json"), default="md")
    _key_options(report)
    report.set_defaults(func=run_report)
    return audit


def _key_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("--key-env", default=DEFAULT_KEY_ENV, metavar="VAR",
                         help=f"environment variable holding the HMAC key "
                              f"(default {DEFAULT_KEY_ENV})")
    command.add_argument("--open-ok", action="store_true",
                         help="accept a newest file without a final checkpoint (still written)")
    command.add_argument("--pubkey", metavar="PEM",
                         help="Ed25519 public key: also check the checkpoint signatures")


def _when(text: str) -> datetime.datetime:
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO date or time: {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.timezone.utc)


def _public_key(args: argparse.Namespace) -> Any:
    if not args.pubkey:
        return None
    from proxy.observability.audit import load_public_key
    return load_public_key(args.pubkey)


# --- verify -------------------------------------------------------------------------------------

def run_verify(args: argparse.Namespace) -> int:
    key = os.environ.get(args.key_env)
    if not key:
        print(f"tenantgate: environment variable {args.key_env} is not set "
              "(it must hold the audit HMAC key)", file=sys.stderr)
        return 2
    try:
        public_key = _public_key(args)
    except (OSError, ValueError) as exc:
        print(f"tenantgate: {exc}", file=sys.stderr)
        return 2
    results = verify_files(args.files, key, open_ok=args.open_ok, public_key=public_key)
    for result in results:
        if result.ok:
            print(f"{result.path}: ok ({_describe(result)})")
        else:
            print(_problem(result), file=sys.stderr)
    return 0 if all(result.ok for result in results) else 1


def _describe(result: Any) -> str:
    text = f"{result.entries} entries, seq {result.first_seq}-{result.last_seq}"
    return text + ("" if result.closed else f"; not closed: {result.open_reason}")


def _problem(result: Any) -> str:
    line = result.first_bad_line
    where = result.path if line is None else f"{result.path}:{line}"
    return f"{where}: {result.reason}"


# --- report -------------------------------------------------------------------------------------

def run_report(args: argparse.Namespace) -> int:
    key = os.environ.get(args.key_env)
    try:
        public_key = _public_key(args)
    except (OSError, ValueError) as exc:
        print(f"tenantgate: {exc}", file=sys.stderr)
        return 2
    try:
        report = build_report(args.files, args.tenant, since=args.since, until=args.until,
                              key=key, key_env=args.key_env, open_ok=args.open_ok,
                              public_key=public_key)
    except OSError as exc:
        print(f"tenantgate: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 1
    render = {"md": render_markdown, "html": render_html, "json": render_json}[args.format]
    sys.stdout.write(render(report))
    return 0


def build_report(paths: list[str], tenant: str, *, since: datetime.datetime | None = None,
                 until: datetime.datetime | None = None, key: str | bytes | None = None,
                 key_env: str = DEFAULT_KEY_ENV, open_ok: bool = False,
                 public_key: Any = None) -> dict[str, Any]:
    """The report as plain data (what `--format json` prints)."""
    entries = [entry for entry in _entries(paths) if _within(entry, since, until)]
    mine = [entry for entry in entries if tenant == "*" or entry.get("tenant") == tenant]
    return {
        "tenant": tenant,
        "since": _iso(since), "until": _iso(until),
        "files": list(paths),
        "chain": _chain(paths, key, key_env, open_ok, public_key),
        "connections": _connections(mine),
        "statements": _statement_kinds(e for e in mine if e.get("event") in ("statement", "ddl")),
        "refusals": _refusals(e for e in mine if e.get("event") == "refusal"),
        "bypass": _bypass([e for e in entries if e.get("event") == "bypass_statement"]),
        "config_changes": [_config_change(e) for e in entries if e.get("event") == "config_reload"],
        "entries_lost": sum(e.get("count", 0) for e in entries if e.get("event") == "gap"),
    }


def _entries(paths: Iterable[str]) -> list[dict[str, Any]]:
    entries = [entry for path in paths for entry in read_entries(path)]
    return sorted(entries, key=lambda entry: entry.get("seq") if isinstance(
        entry.get("seq"), int) else 0)


def _within(entry: dict[str, Any], since: datetime.datetime | None,
            until: datetime.datetime | None) -> bool:
    try:
        moment = datetime.datetime.fromisoformat(str(entry.get("ts")))
    except ValueError:
        return since is None and until is None
    return (since is None or moment >= since) and (until is None or moment < until)


def _chain(paths: list[str], key: str | bytes | None, key_env: str, open_ok: bool,
           public_key: Any) -> dict[str, Any]:
    if not key:
        return {"verified": None, "problems": [f"not checked: {key_env} is not set"]}
    results = verify_files(paths, key, open_ok=open_ok, public_key=public_key)
    return {"verified": all(result.ok for result in results),
            "problems": [_problem(result) for result in results if not result.ok]}


def _connections(entries: list[dict[str, Any]]) -> dict[str, Any]:
    connects = [e for e in entries if e.get("event") == "connect"]
    refused = collections.Counter(str(e.get("reason") or e.get("rule") or "unknown")
                                  for e in entries if e.get("event") == "login_refused")
    return {"connects": len(connects),
            "disconnects": sum(1 for e in entries if e.get("event") == "disconnect"),
            "logins": dict(sorted(collections.Counter(str(e.get("login")) for e in connects)
                                  .items())),
            "distinct_clients": len({_host(e.get("client")) for e in connects}),
            "login_refused": sum(refused.values()),
            "login_refused_by_reason": dict(sorted(refused.items()))}


def _host(client: Any) -> str:
    text = str(client)
    return text.rsplit(":", 1)[0] if re.search(r":\d+$", text) else text


def _kind(entry: dict[str, Any]) -> str:
    kind = entry.get("kind")
    if isinstance(kind, str) and kind:
        return kind.upper()
    shape = entry.get("shape")
    match = re.match(r"\s*([A-Za-z]+)", shape) if isinstance(shape, str) else None
    return match[1].upper() if match else "UNKNOWN"


def _statement_kinds(entries: Iterable[dict[str, Any]]) -> dict[str, int]:
    counts = collections.Counter(_kind(entry) for entry in entries)
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def _shapes(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    counts = collections.Counter(shape_of(e.get("shape")) or "(no shape)" for e in entries)
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return [{"shape": shape, "count": count} for shape, count in ordered[:SHAPES_PER_RULE]]


def _refusals(entries: Iterable[dict[str, Any]]) -> dict[str, Any]:
    by_rule: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for entry in entries:
        by_rule[str(entry.get("rule") or "unknown")].append(entry)
    rules = [{"rule": rule, "count": len(items),
              "sqlstates": sorted({str(e.get("sqlstate")) for e in items if e.get("sqlstate")}),
              "shapes": _shapes(items)}
             for rule, items in by_rule.items()]
    rules.sort(key=lambda row: (-row["count"], row["rule"]))
    return {"total": sum(row["count"] for row in rules), "by_rule": rules}


def _bypass(entries: list[dict[str, Any]]) -> dict[str, Any]:
    logins = collections.Counter(str(e.get("login")) for e in entries)
    return {"statements": len(entries), "by_login": dict(sorted(logins.items())),
            "kinds": _statement_kinds(entries), "shapes": _shapes(entries)}


def _config_change(entry: dict[str, Any]) -> dict[str, Any]:
    keep = ("ts", "ok", "error", "path", "tenants", "changes")
    return {name: entry.get(name) for name in keep if name in entry}


def _iso(moment: datetime.datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


# --- rendering ----------------------------------------------------------------------------------

def render_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, ensure_ascii=True) + "\n"


def _chain_text(chain: dict[str, Any]) -> str:
    if chain["verified"] is None:
        return "not verified (" + "; ".join(chain["problems"]) + ")"
    return "verified" if chain["verified"] else "FAILED: " + "; ".join(chain["problems"])


def _period(report: dict[str, Any]) -> str:
    return f"{report['since'] or 'the beginning'} to {report['until'] or 'the end'}"


def _md(text: Any) -> str:
    """Inline code that survives markdown tables, whatever the text holds."""
    body = str(text).replace("\\", "\\\\").replace("\n", "\\n").replace("|", "\\|")
    fence = "`" * (max((len(run) for run in re.findall(r"`+", body)), default=0) + 1)
    return f"{fence} {body} {fence}"


def render_markdown(report: dict[str, Any]) -> str:
    conn, refusals, bypass = report["connections"], report["refusals"], report["bypass"]
    out = [f"# Audit report: tenant {_md(report['tenant'])}", "",
           f"- Period: {_period(report)}",
           f"- Files: {', '.join(_md(path) for path in report['files'])}",
           f"- Chain: {_chain_text(report['chain'])}",
           f"- Entries lost (queue full): {report['entries_lost']}", "",
           "## Connections", "",
           f"- Connects: {conn['connects']}", f"- Disconnects: {conn['disconnects']}",
           f"- Distinct client hosts: {conn['distinct_clients']}",
           f"- Logins refused: {conn['login_refused']}"]
    out += [f"  - {_md(reason)}: {count}" for reason, count in conn["login_refused_by_reason"]
            .items()]
    out += [f"- Login {_md(login)}: {count} connects" for login, count in conn["logins"].items()]
    out += ["", "## Statements by kind", "", "| kind | count |", "| --- | --- |"]
    out += [f"| {_md(kind)} | {count} |" for kind, count in report["statements"].items()]
    out += ["", f"## Refusals ({refusals['total']})", "",
            "| rule | count | SQLSTATE | shapes |", "| --- | --- | --- | --- |"]
    for row in refusals["by_rule"]:
        shapes = "<br>".join(f"{item['count']}× {_md(item['shape'])}" for item in row["shapes"])
        out.append(f"| {_md(row['rule'])} | {row['count']} | {', '.join(row['sqlstates'])} "
                   f"| {shapes} |")
    out += ["", f"## Bypass activity ({bypass['statements']} statements, all logins)", ""]
    out += [f"- {_md(login)}: {count}" for login, count in bypass["by_login"].items()]
    out += [f"- {item['count']}× {_md(item['shape'])}" for item in bypass["shapes"]]
    out += ["", f"## Configuration changes ({len(report['config_changes'])})", ""]
    out += [f"- {change.get('ts')}: {'ok' if change.get('ok', True) else 'failed'}"
            + (f" ({_md(change['error'])})" if change.get("error") else "")
            for change in report["config_changes"]]
    return "\n".join(out) + "\n"


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _code(text: Any) -> str:
    return f"<code>{html.escape(str(text))}</code>"


def render_html(report: dict[str, Any]) -> str:
    esc, conn = html.escape, report["connections"]
    chain_ok = report["chain"]["verified"]
    refusal_rows = [[_code(row["rule"]), row["count"], esc(", ".join(row["sqlstates"])),
                     "<br>".join(f"{item['count']}× {_code(item['shape'])}"
                                 for item in row["shapes"])]
                    for row in report["refusals"]["by_rule"]]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>tenantgate audit report: {esc(report['tenant'])}</title>",
        "<style>body{font:14px system-ui,sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}"
        ".bad{color:#b00020;font-weight:bold}.good{color:#1b7f3b;font-weight:bold}</style>",
        "</head><body>",
        f"<h1>Audit report: tenant {_code(report['tenant'])}</h1>",
        f"<p>Period: {esc(_period(report))}<br>Files: "
        f"{', '.join(_code(path) for path in report['files'])}<br>Chain: "
        f"<span class='{'good' if chain_ok else 'bad'}'>{esc(_chain_text(report['chain']))}"
        f"</span><br>Entries lost (queue full): {report['entries_lost']}</p>",
        "<h2>Connections</h2>",
        _table(["connects", "disconnects", "distinct client hosts", "logins refused"],
               [[conn["connects"], conn["disconnects"], conn["distinct_clients"],
                 conn["login_refused"]]]),
        _table(["login", "connects"], [[_code(k), v] for k, v in conn["logins"].items()]),
        "<h2>Statements by kind</h2>",
        _table(["kind", "count"], [[_code(k), v] for k, v in report["statements"].items()]),
        f"<h2>Refusals ({report['refusals']['total']})</h2>",
        _table(["rule", "count", "SQLSTATE", "shapes"], refusal_rows),
        f"<h2>Bypass activity ({report['bypass']['statements']} statements, all logins)</h2>",
        _table(["count", "shape"], [[item["count"], _code(item["shape"])]
                                   for item in report["bypass"]["shapes"]]),
        f"<h2>Configuration changes ({len(report['config_changes'])})</h2>",
        _table(["time", "ok", "error"], [[esc(str(c.get("ts"))), esc(str(c.get("ok", True))),
                                          esc(str(c.get("error") or ""))]
                                         for c in report["config_changes"]]),
        "</body></html>\n",
    ]
    return "\n".join(parts)
