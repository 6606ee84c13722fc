"""The statement-type allowlist: what each kind of top-level statement may do.

`check_statement` is pure: it reads one parsed statement and the tenant's Scope,
raises the client-visible ProxyError for a refusal, and otherwise returns the
settings to re-apply after the statement (RESET ALL). What it learns (literals read,
setting changes, session state) is recorded on the Context.
"""

from __future__ import annotations

import re
from typing import Any, Callable

from proxy.errors import NotSupported, PolicyDenied
from proxy.sql import ddl, rewrite, settings, walker
from proxy.sql.nodes import NotAName, Statement, strings, unwrap
from proxy.sql.reach import Context
from proxy.sql.scope import DEALLOCATE_ALL, TransactionControl

_CURSOR_OPT_HOLD = 0x0020  # parsenodes.h: DECLARE … WITH HOLD
_TWO_PHASE = {"TRANS_STMT_PREPARE", "TRANS_STMT_COMMIT_PREPARED",
              "TRANS_STMT_ROLLBACK_PREPARED"}
_TRANSACTION_KINDS = {"TRANS_STMT_BEGIN": "begin", "TRANS_STMT_START": "begin",
                      "TRANS_STMT_COMMIT": "commit", "TRANS_STMT_ROLLBACK": "rollback",
                      "TRANS_STMT_SAVEPOINT": "savepoint", "TRANS_STMT_RELEASE": "release",
                      "TRANS_STMT_ROLLBACK_TO": "rollback_to"}
_Check = Callable[[Context, dict[str, Any]], "list[tuple[str, str]] | None"]


def check_statement(ctx: Context, statement: Statement) -> list[tuple[str, str]]:
    """Refuse `statement` or return the settings to re-apply after it."""
    check = _STATEMENTS.get(statement.kind)
    if check is None and statement.kind in ddl.STATEMENTS and ddl.allowed(ctx):
        check = ddl.STATEMENTS[statement.kind]
    if check is None:
        raise PolicyDenied(f"{describe(statement.kind)} is not allowed", rule="statement-type")
    return check(ctx, statement.fields) or []


def describe(kind: str) -> str:
    """'CreateFunctionStmt' → 'CREATE FUNCTION', for messages."""
    words = re.sub(r"(?<!^)(?=[A-Z][a-z])", " ", kind.removesuffix("Stmt"))
    return words.upper()


def row_hook(ctx: Context, kind: str, fields: dict[str, Any]) -> None:
    """The row strategy's rewrite of a checked query, DML or COPY statement (in place).

    With `row.enforce: rls` (or no table catalog) nothing changes: the statement is
    analysed like `database`, with the shared-database rules for settings, channels
    and locks, and RLS on the server is the control. With `rewrite` or `both`, every
    tenant-table reference is confined to the tenant (proxy.sql.rewrite); the analysis
    then deparses, re-parses and re-checks the result before it is sent.
    """
    rewrite.apply(ctx, kind, fields)


def _dml(kind: str) -> _Check:
    def check(ctx: Context, fields: dict[str, Any]) -> None:
        # The bare `SELECT set_config(…)` is a SET in disguise (Django sends it), but
        # only at top level: under PREPARE or DECLARE it would run later, or never.
        args = set_config_call(fields) if kind == "SelectStmt" else None
        if args is not None:
            settings.set_config(ctx, args)
            return
        _query(ctx, kind, fields)
    return check


def _query(ctx: Context, kind: str, fields: dict[str, Any]) -> None:
    """A query or DML statement, top level or under PREPARE/DECLARE."""
    if kind == "MergeStmt" and ctx.scope.strategy == "row" and not rewrite.active(ctx):
        raise NotSupported("MERGE is not supported for the row strategy without the "
                           "rewrite", rule="row-strategy")
    # The walker refuses data-modifying statements below the top level for the row
    # strategy; the rewriter handles those of the top-level WITH, so they are checked
    # here as the top-level statements they behave like.
    checked, nested = rewrite.split_dml_ctes(ctx, fields)
    walker.visit(ctx, kind, checked, 1)
    for nested_kind, nested_fields in nested:
        walker.visit(ctx, nested_kind, nested_fields, 1)
    row_hook(ctx, kind, fields)


def set_config_call(fields: dict[str, Any]) -> list[Any] | None:
    """The arguments of a bare `SELECT [pg_catalog.]set_config(a, b, c)`, else None."""
    targets = fields.get("targetList") or []
    if set(fields) - {"targetList", "limitOption", "op"} or len(targets) != 1:
        return None
    target = unwrap(targets[0])
    call = unwrap(target[1].get("val")) if target and target[0] == "ResTarget" else None
    if not call or call[0] != "FuncCall" or set(call[1]) - {
            "funcname", "args", "funcformat", "location"}:
        return None
    try:
        name = strings(call[1].get("funcname"))
    except NotAName:
        return None
    if name not in (["set_config"], ["pg_catalog", "set_config"]):
        return None
    return call[1].get("args") or []


def _transaction(ctx: Context, fields: dict[str, Any]) -> None:
    kind = fields.get("kind")
    if kind in _TWO_PHASE:
        raise PolicyDenied("two-phase commit statements are not allowed", rule="two-phase")
    # Recorded with the setting changes: the session keeps a SET only if its
    # transaction commits (and no savepoint before it is rolled back to).
    ctx.settings.append(TransactionControl(_TRANSACTION_KINDS[kind], fields.get("savepoint_name"),
                                           bool(fields.get("chain"))))


def _show(ctx: Context, fields: dict[str, Any]) -> None:
    # SHOW ALL lists the whole server configuration (paths, ports, libraries), like
    # pg_settings; a single setting is what current_setting() returns anyway.
    if fields.get("name") == "all":
        raise PolicyDenied("SHOW ALL is not allowed", rule="show")


def _explain(ctx: Context, fields: dict[str, Any]) -> None:
    raise PolicyDenied("EXPLAIN is not allowed", rule="explain")


def _copy(ctx: Context, fields: dict[str, Any]) -> None:
    if fields.get("filename") or fields.get("is_program"):
        raise PolicyDenied("COPY to or from a file or program is not allowed", rule="copy")
    writing = bool(fields.get("is_from"))
    if writing and ctx.scope.strategy == "row":
        raise NotSupported("COPY FROM STDIN is not supported for the row strategy",
                           rule="row-strategy")
    if fields.get("relation") and writing:
        walker.write_target(ctx, fields["relation"], 2)
    elif fields.get("relation"):
        walker.visit(ctx, "RangeVar", fields["relation"], 2)
    walker.walk(ctx, fields.get("query"), 1)
    walker.walk(ctx, fields.get("whereClause"), 1)
    row_hook(ctx, "CopyStmt", fields)


def _session_feature(feature: str, alternative: str) -> None:
    raise NotSupported(f"{feature} is not supported in transaction pooling mode; "
                       f"{alternative}", rule="session-feature")


def _needs_session(ctx: Context, feature: str, alternative: str) -> None:
    if ctx.scope.pool_mode != "session":
        _session_feature(feature, alternative)
    ctx.session_state = True


def _prepare(ctx: Context, fields: dict[str, Any]) -> None:
    _needs_session(ctx, "SQL PREPARE", "use protocol-level prepared statements")
    walker.walk(ctx, fields.get("argtypes"), 1)
    query = unwrap(fields.get("query"))
    if query is None or query[0] not in _DML_KINDS:
        raise PolicyDenied("PREPARE of this statement is not allowed", rule="statement-type")
    _query(ctx, query[0], query[1])


def _execute(ctx: Context, fields: dict[str, Any]) -> None:
    _needs_session(ctx, "SQL EXECUTE", "use protocol-level prepared statements")
    walker.walk(ctx, fields.get("params"), 1)


def _deallocate(ctx: Context, fields: dict[str, Any]) -> None:
    if ctx.scope.pool_mode == "session":
        _needs_session(ctx, "SQL DEALLOCATE", "use protocol-level prepared statements")
    elif fields.get("isall"):
        # psycopg sends it after a rollback when it has prepared statements: the server
        # drops its statements, the session forgets them when it completes.
        ctx.settings.append(DEALLOCATE_ALL)
    else:  # the client's name maps to a shared server statement: the session forgets it
        ctx.local = ("deallocate", fields.get("name", ""))


def _declare(ctx: Context, fields: dict[str, Any]) -> None:
    if fields.get("options", 0) & _CURSOR_OPT_HOLD:
        _needs_session(ctx, "DECLARE … WITH HOLD", "declare the cursor inside a "
                       "transaction without WITH HOLD")
    query = unwrap(fields.get("query"))
    if query is None or query[0] != "SelectStmt":
        raise PolicyDenied("DECLARE of this statement is not allowed", rule="statement-type")
    _query(ctx, "SelectStmt", query[1])


def _listen(ctx: Context, fields: dict[str, Any]) -> None:
    if ctx.shared_database:
        raise PolicyDenied("LISTEN is not allowed: notification channels are shared by "
                           "every tenant of the database", rule="shared-channel")
    _needs_session(ctx, "LISTEN", "use session pooling for notifications")


def _notify(ctx: Context, fields: dict[str, Any]) -> None:
    # NOTIFY is delivered at commit and leaves nothing on the server connection, so it
    # is fine in transaction pooling; only the channel namespace is a problem.
    if ctx.shared_database:
        raise PolicyDenied("NOTIFY is not allowed: notification channels are shared by "
                           "every tenant of the database", rule="shared-channel")


def _discard(ctx: Context, fields: dict[str, Any]) -> None:
    target = fields.get("target", "")[8:]
    if target == "ALL" and ctx.scope.pool_mode != "session":
        # Nothing of the client stays on a server connection in transaction pooling: the
        # session resets what it keeps (statements, settings) and answers itself.
        ctx.local = ("discard_all",)
        return
    # DISCARD cannot run inside the implicit transaction of a multi-statement string, so
    # it cannot be followed by the re-application of the pinned settings.
    raise NotSupported(f"DISCARD {target} is not supported; "
                       f"use RESET ALL, CLOSE ALL, DEALLOCATE and UNLISTEN *",
                       rule="discard")


def _allow(ctx: Context, fields: dict[str, Any]) -> None:
    """FETCH, MOVE, CLOSE, UNLISTEN: only touch the client's own session state."""


_DML_KINDS = ("SelectStmt", "InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt")
_STATEMENTS: dict[str, _Check] = {
    **{kind: _dml(kind) for kind in _DML_KINDS},
    "TransactionStmt": _transaction,
    "VariableSetStmt": settings.set_statement,
    "VariableShowStmt": _show,
    "ExplainStmt": _explain,
    "CopyStmt": _copy,
    "PrepareStmt": _prepare,
    "ExecuteStmt": _execute,
    "DeallocateStmt": _deallocate,
    "DeclareCursorStmt": _declare,
    "FetchStmt": _allow,
    "ClosePortalStmt": _allow,
    "UnlistenStmt": _allow,
    "ListenStmt": _listen,
    "NotifyStmt": _notify,
    "DiscardStmt": _discard,
}
