"""What a tenant may name: relations, catalogs, functions, types, and names in strings.

Pure checks on names in catalog form. Each raises the client-visible error itself so
that every caller words a refusal the same way; in particular an out-of-reach
relation reads exactly like PostgreSQL's own `relation "s.t" does not exist` and
never depends on whether the relation exists (nothing is looked up).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from proxy.errors import NotSupported, PolicyDenied, RelationHidden
from proxy.sql.catalog import CATALOG_ALLOWLIST
from proxy.sql.scope import Scope, SettingChange, TransactionControl

MAX_IDENTIFIER_BYTES = 63


@dataclass
class Context:
    """What one analysis learns while it walks: read by the cache and the decision."""

    scope: Scope
    literal: bool = False  # the decision depends on a literal: cache by exact text only
    session_state: bool = False
    # A command the session answers itself in transaction pooling (`Decision.local`):
    # ("deallocate", name) or ("discard_all",); it must be the only statement.
    local: tuple | None = None
    settings: list[SettingChange | TransactionControl] = field(default_factory=list)

    @property
    def shared_database(self) -> bool:
        """Tenants of the schema and row strategies share one database."""
        return self.scope.strategy in ("schema", "row")


def is_system_schema(schema: str) -> bool:
    return schema == "information_schema" or schema.startswith("pg_")


def check_relation(ctx: Context, schema: str | None, name: str, *, write: bool = False,
                   catalogname: str | None = None, noun: str = "relation",
                   creates: bool = False) -> None:
    """Refuse a relation outside the tenant's reach (42P01), a forbidden catalog, or for a
    schema tenant an opaque relation of a shared schema (a view …: 42501 shared-view).
    `creates`: the name of a relation the statement creates, which PostgreSQL puts in the
    first schema of the pinned search path (the tenant's own) when it is unqualified, so
    a shared relation of that name is not what it reaches."""
    if catalogname:
        raise NotSupported(f"cross-database references are not implemented: "
                           f"{catalogname}.{schema}.{name}", rule="cross-database")
    if schema is None:
        # pg_catalog is searched before the pinned search_path, and every catalog
        # relation is called pg_*: treat such a name as a catalog (CTEs included).
        if name.startswith("pg_"):
            _check_catalog("pg_catalog", name, write)
        elif ctx.scope.strategy == "schema" and not creates:
            _check_unqualified_shared(ctx, name)
        return
    if is_system_schema(schema):
        _check_catalog(schema, name, write)
        return
    if ctx.scope.strategy != "schema" or schema in ctx.scope.schemas:
        return
    if schema in ctx.scope.shared_schemas:
        if write:
            raise PolicyDenied(f"{schema}.{name} is in a shared schema and read-only",
                               rule="shared-read-only")
        _check_shared_read(ctx, schema, name)
        return
    raise _hidden(noun, f"{schema}.{name}")


def _hidden(noun: str, shown: str) -> RelationHidden:
    # DESIGN 4: every object of another schema answers 42P01, the same text whether it
    # exists or not; only the noun says what kind of name it was.
    return RelationHidden(f'{noun} "{shown}" does not exist', rule="relation-reach")


def _check_catalog(schema: str, name: str, write: bool) -> None:
    if schema.startswith(("pg_temp", "pg_toast_temp")):
        raise PolicyDenied(f"temporary schema {schema} is not allowed", rule="temp-schema")
    if schema == "pg_catalog" and name in CATALOG_ALLOWLIST and not write:
        return
    verb = "writing to catalog" if write else "catalog"
    raise PolicyDenied(f"{verb} {schema}.{name} is not allowed", rule="catalog")


def _check_shared_read(ctx: Context, schema: str, name: str) -> None:
    """A view in a shared schema may read another tenant's schema (THREATS 31)."""
    catalog = ctx.scope.shared_catalog
    noun = catalog.opaque(schema, name) if catalog is not None else None
    if noun is not None:
        raise _opaque(noun, schema, name)


def _check_unqualified_shared(ctx: Context, name: str) -> None:
    """An unqualified name reaches the shared schemas when the tenant's own schema has
    no such relation. The proxy does not list the tenant's own relations, so a name
    that resolves to a view in the shared schemas is refused even when the tenant has
    a relation of that name (fail closed; qualify it with the own schema)."""
    catalog = ctx.scope.shared_catalog
    schema = catalog.resolve(ctx.scope.shared_schemas, name) if catalog is not None else None
    if schema is not None:
        _check_shared_read(ctx, schema, name)


def _opaque(noun: str, schema: str, name: str) -> PolicyDenied:
    return PolicyDenied(f"reading {schema}.{name} is not allowed: it is a {noun}, whose "
                        f"rows may come from other tenants' schemas", rule="shared-view")


def check_named_object(ctx: Context, noun: str, schema: str | None, name: str) -> None:
    """A type, function, operator, collation … named with a schema: in reach?"""
    if schema is None or schema in ("pg_catalog", "information_schema"):
        return
    if schema.startswith(("pg_temp", "pg_toast_temp")):
        raise PolicyDenied(f"temporary schema {schema} is not allowed", rule="temp-schema")
    if ctx.scope.strategy != "schema" or schema in ctx.scope.schemas \
            or schema in ctx.scope.shared_schemas:
        return
    raise _hidden(noun, f"{schema}.{name}")


def check_schema_name(ctx: Context, schema: str) -> None:
    """A bare schema name (regnamespace): the tenant's own, shared or a system one."""
    if schema in ("pg_catalog", "information_schema"):
        return
    if schema.startswith(("pg_temp", "pg_toast_temp")):
        raise PolicyDenied(f"temporary schema {schema} is not allowed", rule="temp-schema")
    if ctx.scope.strategy != "schema" or schema in ctx.scope.schemas \
            or schema in ctx.scope.shared_schemas:
        return
    raise _hidden("schema", schema)


def user_function_schema_allowed(scope: Scope, schema: str) -> bool:
    """`standard` lets a tenant call functions of its own schema (database: any)."""
    if scope.isolation_level != "standard" or is_system_schema(schema):
        return False
    if scope.strategy == "schema":
        return schema in scope.schemas
    return scope.strategy == "database"


def fold_identifier(word: str) -> str:
    """PostgreSQL's downcase_truncate_identifier for an unquoted word (UTF-8)."""
    folded = "".join(c.lower() if "A" <= c <= "Z" else c for c in word)
    return truncate_identifier(folded)


def truncate_identifier(name: str) -> str:
    raw = name.encode("utf-8")
    if len(raw) <= MAX_IDENTIFIER_BYTES:
        return name
    return raw[:MAX_IDENTIFIER_BYTES].decode("utf-8", errors="ignore")


def split_identifiers(text: str, separator: str = ".") -> list[str] | None:
    """PostgreSQL's SplitIdentifierString: quoted or folded names; None if malformed."""
    parts: list[str] = []
    i, n = 0, len(text)
    while True:
        i = _skip_space(text, i)
        word_end = _read_identifier(text, i, parts)
        if word_end is None:
            return None
        i = _skip_space(text, word_end)
        if i == n:
            return parts
        if text[i] != separator:
            return None
        i += 1


_SPACE = " \t\n\r\f\v"  # scanner_isspace(): str.isspace() would accept more


def _skip_space(text: str, i: int) -> int:
    while i < len(text) and text[i] in _SPACE:
        i += 1
    return i


def _read_identifier(text: str, i: int, parts: list[str]) -> int | None:
    """Append the identifier starting at `i` to `parts`; return where it ends."""
    if i < len(text) and text[i] == '"':
        chunks, j = [], i + 1
        while True:
            k = text.find('"', j)
            if k < 0:
                return None
            chunks.append(text[j:k])
            if text[k + 1:k + 2] != '"':
                break
            chunks.append('"')
            j = k + 2
        name = "".join(chunks)
        if not name:
            return None
        parts.append(truncate_identifier(name))
        return k + 1
    j = i
    while j < len(text) and (text[j].isalnum() or text[j] in "_$"):
        j += 1
    if j == i:
        return None
    parts.append(fold_identifier(text[i:j]))
    return j


def split_object_name(text: str) -> list[str] | None:
    """The qualified name part of a reg* literal: `s.f(int)` → [s, f]; None if unclear."""
    head = text
    if '"' not in text:
        # Argument lists and array brackets follow the name (regprocedure, regtype).
        cut = min((p for p in (text.find("("), text.find("[")) if p >= 0), default=-1)
        head = text[:cut] if cut >= 0 else text
    names = split_identifiers(head)
    if names is None and '"' not in text and "." not in text:
        return [text.strip().lower()]  # "double precision": unqualified, search_path
    return names
