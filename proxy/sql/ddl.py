"""DDL a `standard` tenant may run inside its own schema (schema) or database (database).

Allowed: CREATE/ALTER/DROP of tables, indexes, views, sequences and types, CREATE TABLE
AS, TRUNCATE and COMMENT, when every object named is in the tenant's reach as a
write. Still refused: temporary objects (THREATS 20), tablespaces, owners, row level
security switches, triggers, rules, policies, functions, schemas, roles, GRANT and
everything not listed here (statement-type). Expressions inside DDL (defaults, CHECK,
index expressions, view queries) go through the same walker as DML.
"""

from __future__ import annotations

from typing import Any, Callable

from proxy.errors import PolicyDenied
from proxy.sql import reach, walker
from proxy.sql.nodes import NotAName, strings, unwrap
from proxy.sql.reach import Context

_ALTER_TABLE_COMMANDS = frozenset("""
AT_AddColumn AT_ColumnDefault AT_CookedColumnDefault AT_DropNotNull AT_SetNotNull
AT_SetExpression AT_DropExpression AT_SetStatistics AT_SetOptions AT_ResetOptions
AT_SetStorage AT_SetCompression AT_DropColumn AT_AddIndex AT_AddConstraint
AT_AlterConstraint AT_ValidateConstraint AT_AddIndexConstraint AT_DropConstraint
AT_AlterColumnType AT_ClusterOn AT_DropCluster AT_SetLogged AT_SetUnLogged
AT_SetRelOptions AT_ResetRelOptions AT_AddIdentity AT_SetIdentity AT_DropIdentity
AT_AttachPartition AT_DetachPartition AT_DetachPartitionFinalize AT_AddInherit
AT_DropInherit AT_AddOf AT_DropOf
""".split())
_OBJECTS = frozenset({"OBJECT_TABLE", "OBJECT_INDEX", "OBJECT_VIEW", "OBJECT_SEQUENCE",
                      "OBJECT_TYPE", "OBJECT_DOMAIN"})
_SUB_OBJECTS = frozenset({"OBJECT_COLUMN", "OBJECT_TABCONSTRAINT", "OBJECT_ATTRIBUTE"})
_TYPE_OBJECTS = frozenset({"OBJECT_TYPE", "OBJECT_DOMAIN"})


def allowed(ctx: Context) -> bool:
    """DDL needs `standard`, and a database or schema of the tenant's own."""
    return ctx.scope.isolation_level == "standard" and ctx.scope.strategy in (
        "database", "schema")


def _deny(what: str) -> PolicyDenied:
    return PolicyDenied(f"{what} is not allowed", rule="statement-type")


def _target(ctx: Context, rangevar: dict[str, Any] | None, creates: bool = False) -> None:
    """A relation the statement creates or changes: a write, and never temporary."""
    if not rangevar:
        return
    if rangevar.get("relpersistence") == "t":
        raise PolicyDenied("temporary objects are not allowed", rule="temp-object")
    walker.write_target(ctx, rangevar, 0, creates=creates)


def _qualified(ctx: Context, names: list[str], type_like: bool) -> None:
    """A name list (DROP, COMMENT, CREATE TYPE): its schema must be writable."""
    if len(names) > 2:
        raise _deny("a qualified name of more than two parts")
    schema = names[0] if len(names) == 2 else None
    if type_like and schema is None:
        return  # unqualified types are created in the tenant's first schema
    reach.check_relation(ctx, schema, names[-1], write=True,
                         noun="type" if type_like else "relation")


def _object_names(node: Any) -> tuple[list[str], bool]:
    """(names, is_type) of a DROP/COMMENT object: a List of Strings or a TypeName."""
    kind, fields = unwrap(node) or ("", {})
    try:
        if kind == "TypeName":
            return strings(fields.get("names")), True
        if kind == "List":
            return strings(fields.get("items")), False
        if kind == "String":
            return strings([node]), False
    except NotAName:
        pass
    raise _deny("this object name")


def _relation_ddl(kind: str, target: str, creates: bool) -> Callable[[Context, dict[str, Any]],
                                                                     None]:
    """CREATE TABLE / INDEX / VIEW / SEQUENCE, ALTER SEQUENCE, composite types; `creates`:
    the statement creates its `target` (CREATE INDEX and ALTER SEQUENCE name one that is)."""
    def check(ctx: Context, fields: dict[str, Any]) -> None:
        if fields.get("tablespacename") or fields.get("tableSpace"):
            raise _deny("choosing a tablespace")
        _target(ctx, fields.get(target), creates=creates)
        for parent in fields.get("inhRelations") or []:
            _target(ctx, (unwrap(parent) or ("", {}))[1])
        for option in fields.get("options") or []:
            _owned_by(ctx, option)
        walker.children(ctx, kind, fields, 1, skip=(target, "inhRelations"))
    return check


def _owned_by(ctx: Context, option: Any) -> None:
    kind, fields = unwrap(option) or ("", {})
    if kind == "DefElem" and fields.get("defname") == "owned_by":
        names, _ = _object_names(fields.get("arg"))
        if names != ["none"]:
            _qualified(ctx, names[:-1], False)


def _create_table_as(ctx: Context, fields: dict[str, Any]) -> None:
    if fields.get("objtype") != "OBJECT_TABLE":
        raise _deny("CREATE MATERIALIZED VIEW")
    into = fields.get("into") or {}
    if into.get("tableSpaceName"):
        raise _deny("choosing a tablespace")
    _target(ctx, into.get("rel"), creates=True)
    walker.walk(ctx, fields.get("query"), 1)


def _alter_table(ctx: Context, fields: dict[str, Any]) -> None:
    if fields.get("objtype") not in _OBJECTS:
        raise _deny(f"ALTER {fields.get('objtype', '')[7:]}")
    _target(ctx, fields.get("relation"))
    walker.children(ctx, "AlterTableStmt", fields, 1, skip=("relation",))


def _alter_table_cmd(ctx: Context, fields: dict[str, Any], depth: int) -> None:
    subtype = fields.get("subtype", "")
    if subtype not in _ALTER_TABLE_COMMANDS:
        raise _deny(f"ALTER TABLE {subtype[3:]}")
    if subtype in ("AT_AddInherit", "AT_DropInherit"):
        _target(ctx, (unwrap(fields.get("def")) or ("", {}))[1])
        return
    walker.children(ctx, "AlterTableCmd", fields, depth)


def _rename(ctx: Context, fields: dict[str, Any]) -> None:
    kind = fields.get("renameType")
    if kind not in _OBJECTS | _SUB_OBJECTS:
        raise _deny(f"renaming {kind}")
    _target(ctx, fields.get("relation"))
    if fields.get("object"):
        names, is_type = _object_names(fields["object"])
        _qualified(ctx, names, is_type or fields.get("renameType") in _TYPE_OBJECTS)


def _drop(ctx: Context, fields: dict[str, Any]) -> None:
    if fields.get("removeType") not in _OBJECTS:
        raise _deny(f"DROP {fields.get('removeType', '')[7:]}")
    for node in fields.get("objects") or []:
        names, is_type = _object_names(node)
        _qualified(ctx, names, is_type)


def _truncate(ctx: Context, fields: dict[str, Any]) -> None:
    for node in fields.get("relations") or []:
        _target(ctx, (unwrap(node) or ("", {}))[1])


def _comment(ctx: Context, fields: dict[str, Any]) -> None:
    objtype = fields.get("objtype")
    if objtype not in _OBJECTS | _SUB_OBJECTS:
        raise _deny(f"COMMENT ON {str(objtype)[7:]}")
    names, is_type = _object_names(fields.get("object"))
    if objtype in _SUB_OBJECTS:
        names = names[:-1]
    _qualified(ctx, names, is_type)


def _type_ddl(kind: str, name_field: str) -> Callable[[Context, dict[str, Any]], None]:
    """CREATE TYPE … AS ENUM, ALTER TYPE … ADD VALUE, CREATE DOMAIN."""
    def check(ctx: Context, fields: dict[str, Any]) -> None:
        try:
            _qualified(ctx, strings(fields.get(name_field)), True)
        except NotAName:
            raise _deny("this type name") from None
        walker.children(ctx, kind, fields, 1, skip=(name_field,))
    return check


def _constraint(ctx: Context, fields: dict[str, Any], depth: int) -> None:
    if fields.get("indexspace"):
        raise _deny("choosing a tablespace")
    if fields.get("pktable"):
        # A foreign key adds triggers to the referenced table: a change to it.
        _target(ctx, fields["pktable"])
    walker.children(ctx, "Constraint", fields, depth, skip=("pktable",))


def _partition_cmd(ctx: Context, fields: dict[str, Any], depth: int) -> None:
    _target(ctx, fields.get("name"))
    walker.children(ctx, "PartitionCmd", fields, depth, skip=("name",))


def _table_like(ctx: Context, fields: dict[str, Any], depth: int) -> None:
    walker.visit(ctx, "RangeVar", fields.get("relation") or {}, depth + 1)


STATEMENTS: dict[str, Callable[[Context, dict[str, Any]], None]] = {
    "CreateStmt": _relation_ddl("CreateStmt", "relation", creates=True),
    "IndexStmt": _relation_ddl("IndexStmt", "relation", creates=False),
    "ViewStmt": _relation_ddl("ViewStmt", "view", creates=True),
    "CreateSeqStmt": _relation_ddl("CreateSeqStmt", "sequence", creates=True),
    "AlterSeqStmt": _relation_ddl("AlterSeqStmt", "sequence", creates=False),
    "CompositeTypeStmt": _relation_ddl("CompositeTypeStmt", "typevar", creates=True),
    "CreateTableAsStmt": _create_table_as,
    "AlterTableStmt": _alter_table,
    "RenameStmt": _rename,
    "DropStmt": _drop,
    "TruncateStmt": _truncate,
    "CommentStmt": _comment,
    "CreateEnumStmt": _type_ddl("CreateEnumStmt", "typeName"),
    "AlterEnumStmt": _type_ddl("AlterEnumStmt", "typeName"),
    "CreateDomainStmt": _type_ddl("CreateDomainStmt", "domainname"),
}

# Nodes that only occur inside DDL; DML never contains them (the grammar forbids it).
walker.EXTRA_NODES.update({
    "Constraint": _constraint,
    "AlterTableCmd": _alter_table_cmd,
    "PartitionCmd": _partition_cmd,
    "TableLikeClause": _table_like,
    "PartitionSpec": lambda ctx, f, d: walker.children(ctx, "PartitionSpec", f, d),
    "PartitionElem": lambda ctx, f, d: walker.children(ctx, "PartitionElem", f, d),
    "PartitionBoundSpec": lambda ctx, f, d: walker.children(ctx, "PartitionBoundSpec", f, d),
    "PartitionRangeDatum": lambda ctx, f, d: walker.children(ctx, "PartitionRangeDatum", f, d),
    "DefElem": lambda ctx, f, d: walker.children(ctx, "DefElem", f, d),
})
