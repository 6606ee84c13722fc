"""Row tenants through the running proxy, in each enforcement mode (DESIGN.md section 4).

initech and vandelay share rowdb's tables (tenant column `tenant_id`). Each test reads or
writes as one of them and checks, directly on the backend, that the other's rows neither
came back nor changed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import asyncpg
import psycopg
import pytest

from proxy.localpg import LocalPostgres
from proxy.sample import SampleInfo, canary, sample_orders
from tests.helpers import (RunningProxy, backend_query, row_sample_copy, sqlstate, start_proxy,
                           table_checksum)

pytestmark = pytest.mark.timeout(120)

MODES = ("both", "rewrite", "rls")
ROWDB = f"rowstrategy_{os.getpid()}"


@pytest.fixture(scope="module")
def row_sample(pg: LocalPostgres, sample: SampleInfo) -> Iterator[SampleInfo]:
    """A copy of the row sample of its own: these tests write rows, others count them."""
    with row_sample_copy(pg, sample, ROWDB) as info:
        yield info


@pytest.fixture(scope="module", params=MODES)
def row_proxy(request, pg: LocalPostgres, row_sample: SampleInfo,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    running = start_proxy(pg, row_sample, workdir=tmp_path_factory.mktemp("rowproxy"),
                          row_tenants=True, row_enforce=request.param)
    running.enforce = request.param
    try:
        yield running
    finally:
        running.stop()


def connect(proxy: RunningProxy, sample: SampleInfo, tenant: str, **kwargs) -> psycopg.Connection:
    return proxy.connect(f"app.{tenant}", sample.password("app"), autocommit=True, **kwargs)


def vandelay_orders(pg: LocalPostgres) -> list[tuple]:
    """Every vandelay order, read directly on the backend."""
    return backend_query(pg, ROWDB, "SELECT * FROM public.orders WHERE tenant_id = 'vandelay' "
                                    "ORDER BY id")


def test_tenant_reads_only_its_own_rows(row_proxy, row_sample, pg) -> None:
    with connect(row_proxy, row_sample, "initech") as conn:
        rows = conn.execute("SELECT tenant_id, item, secret FROM orders ORDER BY item").fetchall()
        joined = conn.execute(
            "SELECT o.item, c.email FROM orders o LEFT JOIN customers c "
            "ON c.tenant_id = o.tenant_id ORDER BY 1, 2").fetchall()
        total = conn.execute("SELECT count(*) FROM orders, customers").fetchone()[0]
    assert {item for _, item, _ in rows} >= {item for item, _, _ in sample_orders("initech")}
    assert {tenant for tenant, _, _ in rows} == {"initech"}
    assert canary("vandelay") not in {secret for _, _, secret in rows}
    assert all("vandelay" not in (email or "") for _, email in joined)
    initech_orders = backend_query(pg, ROWDB, "SELECT count(*) FROM orders "
                                              "WHERE tenant_id = 'initech'")[0][0]
    initech_customers = backend_query(pg, ROWDB, "SELECT count(*) FROM customers "
                                                 "WHERE tenant_id = 'initech'")[0][0]
    assert total == initech_orders * initech_customers


def test_asyncpg_prepared_reads_stay_in_the_tenant(row_proxy, row_sample) -> None:
    async def run() -> list[tuple]:
        conn = await asyncpg.connect(row_proxy.dsn("app.vandelay", row_sample.password("app")))
        try:
            found = []
            for amount in (0, 1, 50):  # asyncpg prepares and re-uses the statement
                found += [tuple(r) for r in await conn.fetch(
                    "SELECT tenant_id, secret FROM orders WHERE amount > $1", amount)]
            return found
        finally:
            await conn.close()

    import asyncio
    found = asyncio.run(run())
    assert found and {tenant for tenant, _ in found} == {"vandelay"}
    assert canary("initech") not in {secret for _, secret in found}


def test_insert_is_tagged_and_other_tenant_values_are_refused(row_proxy, row_sample, pg) -> None:
    before = vandelay_orders(pg)
    item = f"row-insert-{row_proxy.enforce}-{os.getpid()}"
    with connect(row_proxy, row_sample, "initech") as conn:
        conn.execute("INSERT INTO orders (tenant_id, item, amount) VALUES ('initech', %s, 5)",
                     (item,))
        with pytest.raises(psycopg.Error) as refused:
            conn.execute("INSERT INTO orders (tenant_id, item, amount) "
                         "VALUES ('vandelay', %s, 6)", (item + "-x",))
        assert sqlstate(refused.value) == "42501"
        with pytest.raises(psycopg.Error) as moved:
            conn.execute("UPDATE orders SET tenant_id = 'vandelay' WHERE item = %s", (item,))
        assert sqlstate(moved.value) == "42501"
    stored = backend_query(pg, ROWDB, "SELECT tenant_id FROM orders WHERE item LIKE %s",
                           (item + "%",))
    assert stored == [("initech",)]
    assert vandelay_orders(pg) == before


def test_insert_without_the_tenant_column(row_proxy, row_sample, pg) -> None:
    """The rewrite fills the tenant column; RLS alone leaves it to the application (a NULL
    tenant fails the policy's WITH CHECK, so the insert stores nothing)."""
    item = f"row-fill-{row_proxy.enforce}-{os.getpid()}"
    with connect(row_proxy, row_sample, "vandelay") as conn:
        if row_proxy.enforce == "rls":
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("INSERT INTO orders (item, amount) VALUES (%s, 7)", (item,))
        else:
            conn.execute("INSERT INTO orders (item, amount) VALUES (%s, 7)", (item,))
    expected = [] if row_proxy.enforce == "rls" else [("vandelay",)]
    assert backend_query(pg, ROWDB, "SELECT tenant_id FROM orders WHERE item = %s",
                         (item,)) == expected


def test_update_and_delete_never_touch_the_other_tenant(row_proxy, row_sample, pg) -> None:
    before = vandelay_orders(pg)
    with connect(row_proxy, row_sample, "initech") as conn:
        conn.execute("BEGIN")
        updated = conn.execute("UPDATE orders SET amount = amount + 1").rowcount
        deleted = conn.execute("DELETE FROM orders WHERE secret IS NOT NULL OR true").rowcount
        conn.execute("ROLLBACK")
    own = backend_query(pg, ROWDB, "SELECT count(*) FROM orders WHERE tenant_id = 'initech'")
    assert updated == deleted == own[0][0]
    assert vandelay_orders(pg) == before


# (through the proxy as initech, the same question asked directly with explicit filters)
IDENTITY_QUERIES = [
    # Django's annotate(): GROUP BY the primary key, other columns of the table selected
    ('SELECT "customers"."id", "customers"."email", COUNT("orders"."id") AS "n" FROM '
     '"customers" LEFT OUTER JOIN "orders" ON ("customers"."tenant_id" = "orders"."tenant_id" '
     'AND "orders"."amount" > 2) GROUP BY "customers"."id" ORDER BY 1',
     "SELECT c.id, c.email, count(o.id) FROM customers c LEFT JOIN orders o ON "
     "c.tenant_id = o.tenant_id AND o.amount > 2 AND o.tenant_id = 'initech' "
     "WHERE c.tenant_id = 'initech' GROUP BY c.id ORDER BY 1"),
    # system columns
    ("SELECT ctid::text, xmin::text, tableoid::regclass::text, item FROM orders ORDER BY item",
     "SELECT ctid::text, xmin::text, tableoid::regclass::text, item FROM orders "
     "WHERE tenant_id = 'initech' ORDER BY item"),
    # whole-row references have the table's row type, on either side of an outer join
    ("SELECT DISTINCT pg_typeof(o)::text, pg_typeof(c)::text FROM orders o "
     "RIGHT JOIN customers c ON c.id = o.id",
     "SELECT 'orders', 'customers'"),
]


@pytest.mark.parametrize("sql, direct", IDENTITY_QUERIES)
def test_tables_keep_their_identity(row_proxy, row_sample, pg, sql, direct) -> None:
    """The rewrite filters a table where it stands (WHERE, or the ON of the outer join that
    null-extends it) instead of reading it through a derived table: what depends on the
    table itself answers as it does directly, in every mode, with initech's rows only."""
    with connect(row_proxy, row_sample, "initech") as conn:
        got = conn.execute(sql).fetchall()
    assert got and got == backend_query(pg, ROWDB, direct)


def test_a_full_join_side_is_still_a_derived_table(row_proxy, row_sample, pg) -> None:
    """README: a table on a FULL JOIN's side is read through a derived table with
    `rewrite`/`both` (an ON filter would not remove its rows): system columns are not
    there — the server's 42703, not a refusal of the proxy — while with `rls` alone the
    query works. Its rows are the tenant's alone either way."""
    sql = "SELECT o.ctid::text, o.item FROM orders o FULL JOIN customers c ON false"
    with connect(row_proxy, row_sample, "initech") as conn:
        if row_proxy.enforce == "rls":
            assert {item for _, item in conn.execute(sql).fetchall() if item} == \
                {item for item, in backend_query(pg, ROWDB, "SELECT item FROM orders "
                                                             "WHERE tenant_id = 'initech'")}
        else:
            with pytest.raises(psycopg.errors.UndefinedColumn) as missing:
                conn.execute(sql)
            assert not str(missing.value).startswith("tenantgate:")
        rows = conn.execute("SELECT o.tenant_id, c.tenant_id FROM orders o FULL JOIN "
                            "customers c ON false").fetchall()
    own = backend_query(pg, ROWDB, "SELECT (SELECT count(*) FROM orders WHERE tenant_id = "
                                   "'initech') + (SELECT count(*) FROM customers WHERE "
                                   "tenant_id = 'initech')")[0][0]
    assert len(rows) == own and {t for row in rows for t in row if t} == {"initech"}


@pytest.mark.parametrize("sql, expected", [
    ("SET tenantgate.tenant = 'vandelay'", "42501"),
    ("SELECT set_config('tenantgate.tenant', 'vandelay', false)", "42501"),
    ("RESET tenantgate.tenant", "42501"),
    ("RESET ALL", None),  # allowed: the proxy re-applies the tenant's pinned settings
    ("DISCARD ALL", None),  # answered by the proxy: the tenant setting is not the client's
    ("DISCARD TEMP", "0A000"),
])
def test_the_tenant_setting_cannot_be_changed(row_proxy, row_sample, pg, sql, expected) -> None:
    before = vandelay_orders(pg)
    with connect(row_proxy, row_sample, "initech") as conn:
        if expected is None:
            conn.execute(sql)
        else:
            with pytest.raises(psycopg.Error) as refused:
                conn.execute(sql)
            assert sqlstate(refused.value) == expected
        secrets = {r[0] for r in conn.execute("SELECT secret FROM orders").fetchall()}
        tenants = {r[0] for r in conn.execute("SELECT tenant_id FROM orders").fetchall()}
    assert canary("vandelay") not in secrets and tenants == {"initech"}
    assert vandelay_orders(pg) == before


def test_shared_table_is_readable_and_read_only(row_proxy, row_sample, pg) -> None:
    before = table_checksum(pg, ROWDB, "public.countries")
    with connect(row_proxy, row_sample, "initech") as conn:
        names = conn.execute("SELECT name FROM countries ORDER BY code").fetchall()
        with pytest.raises(psycopg.Error) as refused:
            conn.execute("UPDATE countries SET name = 'x'")
    assert len(names) == before[0]
    assert sqlstate(refused.value) == "42501"
    assert table_checksum(pg, ROWDB, "public.countries") == before


def test_tenants_alternate_on_one_server_connection(pg, row_sample, tmp_path) -> None:
    """pool_size 1: the tenant setting follows the client on every lease."""
    with start_proxy(pg, row_sample, workdir=tmp_path, row_tenants=True,
                     pool_size=1) as proxy, \
            connect(proxy, row_sample, "initech") as initech, \
            connect(proxy, row_sample, "vandelay") as vandelay:
        for _ in range(5):
            assert {r[0] for r in initech.execute("SELECT tenant_id FROM orders")} == {"initech"}
            assert {r[0] for r in vandelay.execute("SELECT tenant_id FROM orders")} == \
                {"vandelay"}


# -- a database that is not set up safely is not served -------------------------------------------

@pytest.fixture
def unsafe_row_db(pg: LocalPostgres, sample: SampleInfo) -> Iterator[str]:
    """A copy of the row sample whose orders table lost its RLS."""
    with row_sample_copy(pg, sample, f"rowunsafe_{os.getpid()}") as info:
        backend_query(pg, info.row_database,
                      "ALTER TABLE public.orders NO FORCE ROW LEVEL SECURITY")
        yield info.row_database


def test_unsafe_row_database_is_refused_and_others_served(pg, row_sample, unsafe_row_db,
                                                          tmp_path) -> None:
    extra = f'wayne: {{strategy: row, cluster: main, database: {unsafe_row_db}, key: "wayne"}}'
    with start_proxy(pg, row_sample, workdir=tmp_path, row_tenants=True,
                     extra_tenants=extra) as proxy:
        with pytest.raises(psycopg.OperationalError) as refused:
            connect(proxy, row_sample, "wayne")
        assert "not set up safely" in str(refused.value)
        proxy.wait_for_log("row database unsafe")
        assert "orders" in proxy.logs()
        with connect(proxy, row_sample, "initech") as conn:
            assert {r[0] for r in conn.execute("SELECT tenant_id FROM orders")} == {"initech"}
        with connect(proxy, row_sample, "acme") as conn:
            assert conn.execute("SELECT count(*) FROM items").fetchone()[0] > 0
