"""The decision for one query string: allow, rewrite or deny, and what it changes.

`analyze_uncached` is the pure policy function: parse once, check every statement of
the string in order (any refusal refuses the whole string, THREATS 46), and collect
the settings the session must track. Two rewrites exist: RESET ALL is followed by the
re-application of the tenant's pinned settings, and the row strategy's `rewrite`
enforcement confines every tenant-table reference (proxy.sql.rewrite). Either way the
text handed out is parsed again and checked — compared with what was checked, and for
row rewrites validated in full and proven confined — before it is used (DESIGN 6.6).
Row rewrites come with a template (proxy.sql.template) that the cache fills with the
literals of later statements of the same shape.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from proxy.errors import NotSupported, PolicyDenied, ProxyError, StatementTooComplex
from proxy.sql import nodes, policy, prepared, rewrite, rewrite_check, settings, template
from proxy.sql.deparse import deparse
from proxy.sql.nodes import Statement
from proxy.sql.reach import Context
from proxy.sql.scope import Scope, SettingChange, TransactionControl

STRATEGIES = ("database", "schema", "row", "bypass")
_SEPARATOR = "\n;\n"  # the newline ends a trailing `--` comment of the statement before


# Statement kinds audited as DDL (bypass logins run any of them): Create…, Alter…, Drop…
# and these (the kinds `ddl.STATEMENTS` checks are all among them).
DDL_PREFIXES = ("Create", "Alter", "Drop")
DDL_KINDS = frozenset({"RenameStmt", "CommentStmt", "GrantStmt", "GrantRoleStmt",
                       "TruncateStmt", "IndexStmt", "ViewStmt", "CompositeTypeStmt",
                       "DefineStmt", "ReindexStmt", "ClusterStmt", "SecLabelStmt",
                       "RefreshMatViewStmt", "ReassignOwnedStmt"})

@dataclass(frozen=True)
class Decision:
    """What the session does with a query string."""

    action: str  # "allow" | "rewrite" | "deny"
    sql: str | None = None  # the SQL to send when action == "rewrite"
    error: ProxyError | None = None  # when action == "deny"
    # Session-level SET/RESET of settings, in order, that the session must track and
    # re-apply on later server connections; name "*" = every tracked setting reset.
    # Transaction control statements are in the same order (TransactionControl): they
    # decide whether the changes last.
    settings: tuple[SettingChange | TransactionControl, ...] = ()
    session_state: bool = False  # leaves state transaction pooling cannot carry
    statements: int = 1
    rule: str = ""  # the rule that decided: the refusal's rule, or allow/bypass/reset-all
    # False when the decision read a literal (SET values, nextval('…'), reg* names):
    # such decisions are cached by exact text only, never by statement shape.
    shape_cacheable: bool = False
    # action "local": a command the session answers itself, see reach.Context.local
    local: tuple | None = None
    # The first statement that changes the schema (CreateStmt, DropStmt, …), for the audit
    # trail's `ddl` entries; None when there is none.
    ddl: str | None = None
    # Row rewrites: numbers of the bound parameters that must equal the tenant key (the
    # tenant column's values, also guarded on the server); checked by the session at Bind.
    key_params: frozenset[int] = frozenset()
    # Row rewrites: the rewritten SQL as a template for statements of the same shape.
    template: template.Template | None = field(default=None, compare=False, repr=False)
    # Row rewrites the server may prepare (proxy.sql.prepared): the template's
    # parameterised form, and for this statement what to send instead of a Query
    # (None: send `sql` as a Query, as when its literals are not plain numbers).
    server_form: prepared.ServerForm | None = field(default=None, compare=False, repr=False)
    bound: prepared.Bound | None = field(default=None, compare=False, repr=False)

    def with_sql(self, sql: str, bound: prepared.Bound | None = None) -> Decision:
        """This decision with another SQL text (and Bind): a template hit, once per
        statement (a shallow copy of the fields, ~0.3 µs; dataclasses.replace takes ~2 µs)."""
        copy = object.__new__(Decision)
        copy.__dict__.update(self.__dict__)
        copy.__dict__["sql"] = sql
        copy.__dict__["bound"] = bound
        return copy


def analyze_uncached(sql: str, scope: Scope, *, templates: bool = True) -> Decision:
    """Decide on `sql` for a tenant of `scope`; never does I/O, never raises.

    `templates=False`: a row rewrite keeps the literals in the tree (no template).
    """
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
                        shape_cacheable=True, ddl=_ddl_kind(statements))
    if scope.strategy == "row" and _no_catalog(scope):
        return _deny(NotSupported("the row rewrite has no table catalog for this database",
                                  rule="row-catalog"), len(statements), cacheable=False)
    decision = _check_all(sql, statements, rewrite.new_context(scope), templates)
    kind = _ddl_kind(statements) if decision.action != "deny" else None
    return dataclasses.replace(decision, ddl=kind) if kind is not None else decision


def _ddl_kind(statements: list[Statement]) -> str | None:
    """The kind of the first schema-changing statement (audited as `ddl`), else None."""
    for statement in statements:
        kind = statement.kind
        if kind.startswith(DDL_PREFIXES) or kind in DDL_KINDS:
            return kind
    return None


def _no_catalog(scope: Scope) -> bool:
    """A row scope that should rewrite but cannot. `both` without any catalog is left to
    RLS alone (the tenancy layer supplies the catalog when it has one)."""
    if scope.row_enforce not in ("rls", "rewrite", "both"):
        return True
    if scope.row_enforce == "rls" or rewrite.rewriting(scope):
        return False
    return scope.row_enforce == "rewrite" or scope.row_catalog is not None


def _check_all(sql: str, statements: list[Statement], ctx: Context,
               templates: bool = True) -> Decision:
    count = len(statements)
    try:
        reapply, changed = [], []
        for statement in statements:
            if isinstance(ctx, rewrite.RowContext):
                ctx.changed = False
            reapply.append(policy.check_statement(ctx, statement))
            changed.append(isinstance(ctx, rewrite.RowContext) and ctx.changed)
        if ctx.local is not None:
            return _local(ctx.local, count)
        if any(changed):
            return _rewrite_rows(sql, statements, reapply, changed, ctx, templates)
        if any(reapply):
            return _rewrite(sql, statements, reapply, ctx)
    except ProxyError as exc:
        return _deny(exc, count, cacheable=not rewrite.read_literal(ctx))
    except RecursionError:
        return _deny(StatementTooComplex("statement nesting is too deep", rule="too-complex"),
                     count, cacheable=False)
    except Exception as exc:  # a tree shape the checks did not expect: fail closed
        return _deny(NotSupported(f"the statement could not be analysed "
                                  f"({type(exc).__name__})", rule="analysis-error"),
                     count, cacheable=False)
    return Decision("allow", settings=tuple(ctx.settings), session_state=ctx.session_state,
                    statements=count, rule="allow", shape_cacheable=not ctx.literal)


def _local(command: tuple, count: int) -> Decision:
    """DEALLOCATE name / DISCARD ALL in transaction pooling: answered by the session, so
    only alone (the server never sees them)."""
    if count != 1:
        return _deny(NotSupported(f"{command[0].replace('_', ' ').upper()} must be sent alone "
                                  "in transaction pooling", rule="session-feature"),
                     count, cacheable=True)
    return Decision("local", local=command, statements=1, rule="local", shape_cacheable=True)


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


def _rewrite_rows(sql: str, statements: list[Statement], reapply: list[list[tuple[str, str]]],
                  changed: list[bool], ctx: Context, templates: bool) -> Decision:
    """Deparse the rewritten statements, check the final text, and keep a template."""
    assert isinstance(ctx, rewrite.RowContext)
    found = template.shape(sql) if templates and not ctx.literal else None
    made = final = form = None
    try:
        maker = template.Templater(sql, found, ctx.key_literals) if found else None
        text, expected = _render(sql, statements, reapply, changed, maker)
        made = maker.finish(text) if maker is not None else None
        final = made.fill(found) if made is not None and found is not None else text
        form = _server_form(text, maker, expected, reapply, ctx)
    except Exception:  # deparser trouble with a placeholder: retried without a template
        if not templates:
            raise
    if final is None or not _recheck(final, expected, ctx.scope):
        if templates:  # a literal the template cannot hold: rewrite it as it is
            return analyze_uncached(sql, ctx.scope, templates=False)
        return _deny(NotSupported("the statement could not be rewritten safely",
                                  rule="rewrite-check"), len(statements), cacheable=False)
    return Decision("rewrite", sql=final, settings=tuple(ctx.settings),
                    session_state=ctx.session_state, statements=len(statements),
                    rule="row-rewrite", template=made, key_params=frozenset(ctx.key_params),
                    server_form=form,
                    bound=form.bind(sql, found.spans) if form is not None else None)


def _server_form(text: str, maker: template.Templater | None,
                 expected: list[tuple[str, object]], reapply: list[list[tuple[str, str]]],
                 ctx: Context) -> prepared.ServerForm | None:
    """The template's text as a statement the server prepares (proxy.sql.prepared), when
    the scope allows it, it changes no setting and its parameterised text passes the
    same checks as the filled one."""
    if maker is None or not ctx.scope.row_prepare or ctx.settings or ctx.session_state \
            or any(reapply):
        return None
    form = prepared.server_form(text, maker.parameters())
    return form if form is not None and _recheck(text, expected, ctx.scope) else None


def _render(sql: str, statements: list[Statement], reapply: list[list[tuple[str, str]]],
            changed: list[bool], maker: template.Templater | None
            ) -> tuple[str, list[tuple[str, object]]]:
    """The text to send (rewritten statements deparsed, the others as they were, pinned
    settings after RESET ALL) and what each of its statements must be."""
    pieces: list[str] = []
    expected: list[tuple[str, object]] = []
    for statement, again, rewritten in zip(statements, reapply, changed):
        if rewritten:
            if maker is not None:
                maker.placeholders(statement.kind, statement.fields)
            pieces.append(deparse(statement.kind, statement.fields))
            expected.append(("check", statement.kind))
        else:
            pieces.append(nodes.slice_text(sql, statement))
            expected.append(("same", (statement.kind, nodes.strip_locations(statement.fields))))
        if again:
            added = settings.render_settings(again)
            pieces.append(added)
            expected += [("same", (s.kind, nodes.strip_locations(s.fields)))
                         for s in nodes.parse(added)]
    return _SEPARATOR.join(pieces), expected


def _recheck(text: str, expected: list[tuple[str, object]], scope: Scope) -> bool:
    """Parse the text to send again: statements not rewritten must read as before, and
    rewritten ones must pass the whole policy and confine every tenant reference."""
    ctx = rewrite.RowContext(scope, verify=True)
    try:
        got = nodes.parse(text)
        if len(got) != len(expected):
            return False
        for statement, (how, what) in zip(got, expected):
            if how == "same":
                if (statement.kind, nodes.strip_locations(statement.fields)) != what:
                    return False
                continue
            if statement.kind != what:
                return False
            policy.check_statement(ctx, statement)
            rewrite_check.verify_statement(ctx, statement.kind, statement.fields)
    except (ProxyError, RecursionError):
        return False
    return True
