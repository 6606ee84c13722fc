"""The decision for one query string: allow, rewrite or deny, and what it changes.

`analyze_uncached` is the pure policy function: parse once, check every statement of
the string in order (any refusal refuses the whole string, THREATS 46), and collect
the settings the session must track. The only rewrite today is RESET ALL, followed by
the re-application of the tenant's pinned settings; the rewritten text is parsed again
and compared with what was checked before it is handed out (DESIGN 6.6).
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy.errors import NotSupported, PolicyDenied, ProxyError, StatementTooComplex
from proxy.sql import nodes, policy, settings
from proxy.sql.nodes import Statement
from proxy.sql.reach import Context
from proxy.sql.scope import Scope, SettingChange

STRATEGIES = ("database", "schema", "row", "bypass")
_SEPARATOR = "\n;\n"  # the newline ends a trailing `--` comment of the statement before


@dataclass(frozen=True)
class Decision:
    """What the session does with a query string."""

    action: str  # "allow" | "rewrite" | "deny"
    sql: str | None = None  # the SQL to send when action == "rewrite"
    error: ProxyError | None = None  # when action == "deny"
    # Session-level SET/RESET of settings, in order, that the session must track and
    # re-apply on later server connections; name "*" = every tracked setting reset.
    settings: tuple[SettingChange, ...] = ()
    session_state: bool = False  # leaves state transaction pooling cannot carry
    statements: int = 1
    rule: str = ""  # the rule that decided: the refusal's rule, or allow/bypass/reset-all
    # False when the decision read a literal (SET values, nextval('…'), reg* names):
    # such decisions are cached by exact text only, never by statement shape.
    shape_cacheable: bool = False


def analyze_uncached(sql: str, scope: Scope) -> Decision:
    """Decide on `sql` for a tenant of `scope`; never does I/O, never raises."""
    try:
        statements = nodes.parse(sql)
    except ProxyError as exc:
        return _deny(exc, 1, cacheable=False)
    if not statements:
        return Decision("allow", statements=0, rule="empty")
    if scope.strategy not in STRATEGIES:
        return _deny(PolicyDenied(f"unknown strategy {scope.strategy!r}", rule="strategy"),
                     len(statements), cacheable=False)
    if scope.strategy == "bypass":
        return Decision("allow", statements=len(statements), rule="bypass",
                        shape_cacheable=True)
    return _check_all(sql, statements, Context(scope))


def _check_all(sql: str, statements: list[Statement], ctx: Context) -> Decision:
    count = len(statements)
    try:
        reapply = [policy.check_statement(ctx, statement) for statement in statements]
        if any(reapply):
            return _rewrite(sql, statements, reapply, ctx)
    except ProxyError as exc:
        return _deny(exc, count, cacheable=not ctx.literal)
    except RecursionError:
        return _deny(StatementTooComplex("statement nesting is too deep", rule="too-complex"),
                     count, cacheable=False)
    except Exception as exc:  # a tree shape the checks did not expect: fail closed
        return _deny(NotSupported(f"the statement could not be analysed "
                                  f"({type(exc).__name__})", rule="analysis-error"),
                     count, cacheable=False)
    return Decision("allow", settings=tuple(ctx.settings), session_state=ctx.session_state,
                    statements=count, rule="allow", shape_cacheable=not ctx.literal)


def _deny(error: ProxyError, count: int, *, cacheable: bool) -> Decision:
    return Decision("deny", error=error, statements=count, rule=error.rule or "",
                    shape_cacheable=cacheable)


def _rewrite(sql: str, statements: list[Statement],
             reapply: list[list[tuple[str, str]]], ctx: Context) -> Decision:
    """The original statements, each RESET ALL followed by the pinned settings."""
    pieces: list[str] = []
    expected: list[tuple[str, object]] = []
    for statement, again in zip(statements, reapply):
        pieces.append(nodes.slice_text(sql, statement))
        expected.append((statement.kind, nodes.strip_locations(statement.fields)))
        if again:
            added = settings.render_settings(again)
            pieces.append(added)
            expected += [(s.kind, nodes.strip_locations(s.fields)) for s in nodes.parse(added)]
    text = _SEPARATOR.join(pieces)
    try:
        got = [(s.kind, nodes.strip_locations(s.fields)) for s in nodes.parse(text)]
    except ProxyError:
        got = []
    if got != expected:
        return _deny(NotSupported("the statement could not be rewritten safely",
                                  rule="rewrite-check"), len(statements), cacheable=False)
    return Decision("rewrite", sql=text, settings=tuple(ctx.settings),
                    session_state=ctx.session_state, statements=len(statements),
                    rule="reset-all")
