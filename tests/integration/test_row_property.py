"""Property test through the running proxy: random queries over the row fixture schema
return exactly what the RLS oracle returns, or a clean refusal — never a wrong result.

hypothesis builds SELECTs over the row sample's tables (orders, customers, the shared
countries): one to three FROM items (tables, derived tables, CTE references) joined in
every way, WHERE trees of comparisons, NULL tests, LIKE, IN lists, BETWEEN, EXISTS / IN /
scalar subqueries (correlated or not), GROUP BY with aggregates, window functions, set
operations, ORDER BY with LIMIT; literals in every spelling (E'…', $$…$$, U&'…', quotes,
backslashes, non-ASCII, the other tenant's key and canary), as initech or vandelay,
through a proxy in each enforcement mode.

The oracle is the same text run directly on PostgreSQL as the backend role `tenantgate`
with `tenantgate.tenant` set to the tenant's key: the RLS policies of the row sample
decide. The `rewrite` proxy serves a copy of the same rows without RLS, so there only its
rewrite keeps the tenants apart. Accepted outcomes:
  - the same columns, types and rows (as text, as a multiset) as the oracle;
  - the same SQLSTATE as the oracle, when the generated query is invalid for PostgreSQL;
  - a refusal by the proxy (`tenantgate:` prefix) with a SQLSTATE the README documents.
Anything else — different rows, a server error the oracle does not raise, the other
tenant's data — fails. Refusals are counted (hypothesis statistics) so that a growing
number of them is visible.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

from proxy.localpg import LocalPostgres
from proxy.sample import SampleInfo, canary, install_row_sample
from tests.helpers import RunningProxy, start_proxy

pytestmark = pytest.mark.timeout(120)

MODES = ("both", "rewrite", "rls")
DB = "tgprop_rows"  # the row sample plus rows, under RLS: the oracle, `both` and `rls`
DB_NORLS = "tgprop_rows_norls"  # the same rows without RLS: `rewrite` alone must confine
TENANTS = ("initech", "vandelay")
DOCUMENTED_REFUSALS = {"42501", "42P01", "0A000", "42601", "54001"}
MAX_REFUSED = 0.05  # of the generated queries; every one of them is valid for PostgreSQL
TALLY: dict[str, dict[str, int]] = {mode: {"run": 0, "refused": 0} for mode in MODES}

# (column, type) per table, in catalog order
COLUMNS = {
    "orders": (("id", "int"), ("tenant_id", "text"), ("item", "text"), ("amount", "int"),
               ("secret", "text")),
    "customers": (("id", "int"), ("tenant_id", "text"), ("name", "text"), ("email", "text")),
    "countries": (("code", "text"), ("name", "text")),
}


def more_rows() -> str:
    """Rows beyond the sample's three: both tenants and a key nobody has, NULLs, ties."""
    rng = random.Random(7)
    orders, customers = [], []
    for n in range(18):
        for key in ("initech", "vandelay", "stark"):
            amount = "NULL" if rng.random() < 0.15 else str(rng.randrange(0, 60))
            secret = "NULL" if rng.random() < 0.5 else f"'{key}-s{n % 5}'"
            item = rng.choice(("lamp", "desk", "Lamp", "pen", "O'Brien", "back\\slash", "ü"))
            orders.append(f"('{key}', '{item.replace(chr(39), chr(39) * 2)}', {amount}, "
                          f"{secret})")
            if n % 3 == 0:
                name = rng.choice(("Ann", "Bob", "ann", "Zoë", "Lamp"))
                customers.append(f"('{key}', '{name}', 'c{n}@{key}.example')")
    return ("INSERT INTO public.orders (tenant_id, item, amount, secret) VALUES "
            + ", ".join(orders) + ";\n"
            "INSERT INTO public.customers (tenant_id, name, email) VALUES "
            + ", ".join(customers) + ";\n"
            "INSERT INTO public.countries VALUES ('XX', NULL), ('LA', 'Lamp');\n")


# --- the query generator ------------------------------------------------------------------

TEXT_VALUES = ("lamp", "desk", "Lamp", "O'Brien", "back\\slash", "ü", "", "vandelay",
               canary("vandelay"), "initech", "%a%", "_e%", "$x$", "Ann", "c0@initech.example")


@st.composite
def text_literal(draw) -> str:
    value = draw(st.sampled_from(TEXT_VALUES))
    spelling = draw(st.sampled_from(("plain", "escape", "dollar", "unicode")))
    if spelling == "escape":
        return "E'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if spelling == "dollar" and "$" not in value:
        return f"$${value}$$"
    if spelling == "unicode" and value.isascii() and "\\" not in value:
        return "U&'" + "".join(f"\\{ord(c):04x}" if c.isalpha() else c.replace("'", "''")
                               for c in value) + "'"
    return "'" + value.replace("'", "''") + "'"


int_literal = st.integers(min_value=-2, max_value=60).map(str)


@dataclass
class Scope:
    """The FROM items visible at one level: alias → table."""

    items: dict[str, str]

    def columns(self, typ: str | None = None) -> list[str]:
        return [f"{a}.{c}" for a, t in self.items.items() for c, ct in COLUMNS[t]
                if typ is None or ct == typ]


@st.composite
def comparison(draw, scope: Scope, depth: int) -> str:
    kind = draw(st.sampled_from(("int", "text", "null", "like", "in", "between", "colcol",
                                 "sub") if depth < 2 else
                                ("int", "text", "null", "like", "in", "between", "colcol")))
    ints, texts = scope.columns("int"), scope.columns("text")
    if kind in ("int", "between") and not ints:
        kind = "text"
    if kind == "int":
        op = draw(st.sampled_from(("=", "<>", "<", ">=")))
        return f"{draw(st.sampled_from(ints))} {op} {draw(int_literal)}"
    if kind == "text":
        op = draw(st.sampled_from(("=", "<>", "<", ">", "IS DISTINCT FROM")))
        return f"{draw(st.sampled_from(texts))} {op} {draw(text_literal())}"
    if kind == "null":
        negation = draw(st.sampled_from(("", "NOT ")))
        return f"{draw(st.sampled_from(scope.columns()))} IS {negation}NULL"
    if kind == "like":
        op = draw(st.sampled_from(("LIKE", "ILIKE", "NOT LIKE")))
        return f"{draw(st.sampled_from(texts))} {op} {draw(text_literal())}"
    if kind == "in":
        values = draw(st.lists(text_literal(), min_size=1, max_size=3))
        return f"{draw(st.sampled_from(texts))} IN ({', '.join(values)})"
    if kind == "between":
        low, high = sorted((int(draw(int_literal)), int(draw(int_literal))))
        return f"{draw(st.sampled_from(ints))} BETWEEN {low} AND {high}"
    if kind == "colcol":
        typ = draw(st.sampled_from(("int", "text") if ints else ("text",)))
        cols = scope.columns(typ)
        return f"{draw(st.sampled_from(cols))} = {draw(st.sampled_from(cols))}"
    return draw(subquery_predicate(scope, depth))


@st.composite
def subquery_predicate(draw, outer: Scope, depth: int) -> str:
    table = draw(st.sampled_from(tuple(COLUMNS)))
    alias = f"s{depth}"
    inner = Scope({alias: table})
    where = draw(predicate(Scope({**outer.items, **inner.items}), depth + 1))
    form = draw(st.sampled_from(("exists", "in", "scalar")))
    if form == "exists":
        neg = draw(st.sampled_from(("", "NOT ")))
        return f"{neg}EXISTS (SELECT 1 FROM {table} {alias} WHERE {where})"
    typ = draw(st.sampled_from(("text",) if table == "countries" else ("int", "text")))
    inner_col = draw(st.sampled_from(inner.columns(typ)))
    outer_col = draw(st.sampled_from(outer.columns(typ) or outer.columns()))
    if form == "in":
        return f"{outer_col} IN (SELECT {inner_col} FROM {table} {alias} WHERE {where})"
    return (f"{outer_col} = (SELECT max({inner_col}) FROM {table} {alias} WHERE {where})")


@st.composite
def predicate(draw, scope: Scope, depth: int = 0) -> str:
    if depth < 2 and draw(st.booleans()):
        op = draw(st.sampled_from(("AND", "OR")))
        left = draw(predicate(scope, depth + 1))
        right = draw(predicate(scope, depth + 1))
        neg = draw(st.sampled_from(("", "NOT ")))
        return f"{neg}({left} {op} {right})"
    return draw(comparison(scope, depth))


@st.composite
def from_item(draw, alias: str, ctes: tuple[str, ...]) -> tuple[str, str]:
    """(SQL of the item, the table whose columns it has)."""
    table = draw(st.sampled_from(tuple(COLUMNS)))
    form = draw(st.sampled_from(("table", "table", "qualified", "derived", "cte")))
    if form == "cte" and f"cte_{table}" in ctes:
        return f"cte_{table} {alias}", table
    if form == "qualified":
        return f"public.{table} AS {alias}", table
    if form == "derived":
        where = draw(predicate(Scope({"d": table}), 2))
        return f"(SELECT * FROM {table} d WHERE {where}) {alias}", table
    return f"{table} {alias}", table


@st.composite
def join_condition(draw, scope: Scope, new: str) -> str:
    choices = ["true", "false"]
    for typ in ("int", "text"):
        mine = [c for c in scope.columns(typ) if c.startswith(new + ".")]
        theirs = [c for c in scope.columns(typ) if not c.startswith(new + ".")]
        if mine and theirs:
            choices += [f"{a} = {b}" for a in mine for b in theirs]
    cond = draw(st.sampled_from(choices))
    if draw(st.booleans()):
        cond = f"{cond} AND {draw(comparison(scope, 2))}"
    return cond


@st.composite
def select(draw, ctes: tuple[str, ...] = ()) -> tuple[str, bool]:
    """(SELECT statement, True when its result order is total)."""
    count = draw(st.integers(1, 3))
    first, table = draw(from_item("t0", ctes))
    scope = Scope({"t0": table})
    sql_from = first
    for i in range(1, count):
        item, table = draw(from_item(f"t{i}", ctes))
        scope.items[f"t{i}"] = table
        kind = draw(st.sampled_from(("JOIN", "LEFT JOIN", "RIGHT JOIN", "FULL JOIN",
                                     "CROSS JOIN", ",")))
        if kind in (",", "CROSS JOIN"):
            sql_from += f"{' ' if kind == 'CROSS JOIN' else ''}{kind} {item}"
        else:
            sql_from += f" {kind} {item} ON {draw(join_condition(scope, f't{i}'))}"
    where = f" WHERE {draw(predicate(scope))}" if draw(st.booleans()) else ""
    shape = draw(st.sampled_from(("columns", "aggregate", "window", "star")))
    if shape == "aggregate":
        key = draw(st.sampled_from(scope.columns()))
        aggs = draw(st.lists(st.sampled_from(
            ["count(*)", *[f"count({c})" for c in scope.columns()],
             *[f"max({c})" for c in scope.columns()],
             *[f"sum({c})" for c in scope.columns("int")],
             *[f"string_agg({c}, ',' ORDER BY {c})" for c in scope.columns("text")]]),
            min_size=1, max_size=3))
        having = (f" HAVING count(*) > {draw(st.integers(0, 3))}"
                  if draw(st.booleans()) else "")
        return f"SELECT {key}, {', '.join(aggs)} FROM {sql_from}{where} GROUP BY {key}{having}", \
            False
    if shape == "window":
        part = draw(st.sampled_from(scope.columns()))
        cols = draw(st.lists(st.sampled_from(scope.columns()), min_size=1, max_size=3))
        return (f"SELECT {', '.join(cols)}, count(*) OVER (PARTITION BY {part}) "
                f"FROM {sql_from}{where}"), False
    if shape == "star":
        return f"SELECT * FROM {sql_from}{where}", False
    cols = draw(st.lists(st.sampled_from(scope.columns()), min_size=1, max_size=4))
    distinct = draw(st.sampled_from(("", "DISTINCT ")))
    sql = f"SELECT {distinct}{', '.join(cols)} FROM {sql_from}{where}"
    if draw(st.booleans()):  # ORDER BY every output column: the LIMITed set is defined
        order = ", ".join(f"{i + 1} NULLS FIRST" for i in range(len(cols)))
        sql += f" ORDER BY {order} LIMIT {draw(st.integers(0, 8))}"
    return sql, False


@st.composite
def query(draw) -> str:
    form = draw(st.sampled_from(("select", "select", "select", "cte", "setop", "lateral")))
    if form == "cte":
        table = draw(st.sampled_from(tuple(COLUMNS)))
        where = draw(predicate(Scope({"c": table}), 1))
        body, _ = draw(select((f"cte_{table}",)))
        return f"WITH cte_{table} AS (SELECT * FROM {table} c WHERE {where}) {body}"
    if form == "setop":
        op = draw(st.sampled_from(("UNION", "UNION ALL", "INTERSECT", "EXCEPT", "EXCEPT ALL")))
        parts = []
        for side in ("l", "r"):
            table = draw(st.sampled_from(tuple(COLUMNS)))
            col = draw(st.sampled_from([c for c, t in COLUMNS[table] if t == "text"]))
            where = draw(predicate(Scope({side: table}), 1))
            parts.append(f"SELECT {side}.{col} FROM {table} {side} WHERE {where}")
        return f" {op} ".join(parts)
    if form == "lateral":
        outer = draw(st.sampled_from(("orders", "customers")))
        inner = draw(st.sampled_from(tuple(COLUMNS)))
        scope = Scope({"o": outer, "i": inner})
        cond = draw(predicate(scope, 1))
        col = draw(st.sampled_from(scope.columns()))
        kind = draw(st.sampled_from((", LATERAL", "LEFT JOIN LATERAL")))
        on = " ON true" if kind.startswith("LEFT") else ""
        return (f"SELECT o.id, x.v FROM {outer} o {kind} (SELECT {col} AS v FROM {inner} i "
                f"WHERE {cond}) x{on}")
    return draw(select())[0]


# --- running ------------------------------------------------------------------------------------

def outcome(conn: psycopg.Connection, sql: str) -> tuple:
    try:
        cur = conn.execute(sql)
    except psycopg.Error as exc:
        message = exc.diag.message_primary or ""
        return ("error", exc.sqlstate, message.startswith("tenantgate:"), message)
    res = cur.pgresult
    columns = tuple((res.fname(j).decode(), res.ftype(j)) for j in range(res.nfields))
    rows = sorted((tuple(None if (v := res.get_value(i, j)) is None else v.decode()
                         for j in range(res.nfields)) for i in range(res.ntuples)),
                  key=lambda r: tuple((v is None, v or "") for v in r))
    return ("rows", columns, rows)


@dataclass
class Side:
    proxy: dict[str, psycopg.Connection]  # tenant → connection through the proxy
    oracle: dict[str, psycopg.Connection]  # tenant → direct connection under RLS
    mode: str


@pytest.fixture(scope="module")
def prop_db(pg: LocalPostgres, sample: SampleInfo) -> Iterator[SampleInfo]:
    for db in (DB, DB_NORLS):
        pg.run_sql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        install_row_sample(pg, dataclasses.replace(sample, row_database=db))
        pg.run_sql(more_rows(), dbname=db)
    pg.run_sql("ALTER TABLE public.orders DISABLE ROW LEVEL SECURITY;"
               "ALTER TABLE public.customers DISABLE ROW LEVEL SECURITY;", dbname=DB_NORLS)
    try:
        yield dataclasses.replace(sample, row_database=DB)
    finally:
        pg.run_sql(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE);"
                   f"DROP DATABASE IF EXISTS {DB_NORLS} WITH (FORCE)")


@pytest.fixture(scope="module", params=MODES)
def side(request, pg: LocalPostgres, prop_db: SampleInfo,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Side]:
    served = dataclasses.replace(prop_db, row_database=DB_NORLS) \
        if request.param == "rewrite" else prop_db
    running: RunningProxy = start_proxy(
        pg, served, workdir=tmp_path_factory.mktemp(f"rowprop-{request.param}"),
        row_tenants=True, row_enforce=request.param)
    proxies, oracles = {}, {}
    try:
        for tenant in TENANTS:
            proxies[tenant] = running.connect(f"app.{tenant}", prop_db.password("app"),
                                              prepare_threshold=None)
            oracles[tenant] = psycopg.connect(
                pg.dsn(prop_db.backend_user, prop_db.backend_password, DB), autocommit=True,
                prepare_threshold=None)
            oracles[tenant].execute("SELECT set_config('tenantgate.tenant', %s, false)",
                                    (tenant,))
        yield Side(proxies, oracles, request.param)
    finally:
        for conn in (*proxies.values(), *oracles.values()):
            conn.close()
        running.stop()


@settings(max_examples=100, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(sql=query(), tenant=st.sampled_from(TENANTS))
def test_proxy_answers_like_the_rls_oracle(side: Side, sql: str, tenant: str) -> None:
    note(f"[{side.mode}] as {tenant}: {sql}")
    TALLY[side.mode]["run"] += 1
    got = outcome(side.proxy[tenant], sql)
    want = outcome(side.oracle[tenant], sql)
    other = TENANTS[1 - TENANTS.index(tenant)]
    if got[0] == "rows":
        leaked = [v for row in got[2] for v in row
                  if v is not None and (v == other or canary(other) in v
                                        or f"{other}-" in v or f"@{other}." in v)]
        assert not leaked, f"{other}'s data in the answer: {leaked}"
    if got[0] == "error" and got[2]:  # refused by the proxy
        assert got[1] in DOCUMENTED_REFUSALS, f"undocumented refusal {got}"
        TALLY[side.mode]["refused"] += want[0] == "rows"
        event(f"refused {got[1]}: {got[3][:60]}")
        return
    if got[0] == "error" and want[0] == "error":
        assert got[1] == want[1], f"proxy {got} vs oracle {want}"
        event(f"invalid for PostgreSQL: {want[1]}")
        return
    assert got == want, f"[{side.mode}] as {tenant}: {sql}\n proxy:  {got}\n oracle: {want}"
    event("same rows as the oracle")


def test_refusals_stay_rare(side: Side) -> None:
    """A clean refusal is no wrong result, but a proxy that refused everything would pass
    the property above: at most MAX_REFUSED of the queries PostgreSQL answers are refused."""
    tally = TALLY[side.mode]
    if not tally["run"]:  # selected alone: run the property first (hypothesis drives it)
        test_proxy_answers_like_the_rls_oracle(side)
    assert tally["run"] > 0, tally
    assert tally["refused"] <= MAX_REFUSED * tally["run"], tally
