"""THREATS 31 for schema tenants over time: a view a DBA adds to a shared schema after a
tenant logged in is refused to that session too, once the proxy has loaded the shared
schemas' catalog again (README: every 5 s), not only to later logins — also through a
statement the session prepared while the view was still unknown."""

from __future__ import annotations

import time
import uuid

import psycopg
import pytest

from tests.helpers import backend_query

APP = "app-secret"
REFRESH_DEADLINE = 30.0  # seconds: the refresh runs every 5 s; the margin is for CI


@pytest.mark.parametrize("reload_first", [False, True], ids=["", "after-a-reload"])
def test_a_view_added_after_login_is_refused_to_the_connected_session(proxy_factory, pg,
                                                                      reload_first):
    """`after-a-reload`: a SIGHUP between the login and the view must not make the proxy
    forget which databases' catalogs its sessions use."""
    proxy = proxy_factory()
    view = f"common.tg_late_{uuid.uuid4().hex[:8]}"
    with proxy.connect("app.globex", APP) as conn:
        # Logged in (and the catalog loaded) before the view exists.
        assert conn.execute("SELECT count(*) FROM common.countries").fetchone()[0] >= 0
        if reload_first:
            mark = proxy.log_mark()
            proxy.reload()
            proxy.wait_until(lambda: "configuration reloaded" in proxy.logs(mark), 15,
                             "the reload to finish")
        # Over hooli's table, but empty: the session may read it during the window.
        backend_query(pg, "shared", f"CREATE VIEW {view} AS SELECT id FROM hooli.items "
                                    "WHERE false")
        backend_query(pg, "shared", f"GRANT SELECT ON {view} TO globex")
        try:
            sql = f"SELECT * FROM {view}"
            assert conn.execute(sql, prepare=True).fetchall() == []  # prepared, allowed
            refused = _refused_before(conn, sql, REFRESH_DEADLINE)  # the prepared one, bound
            assert refused.sqlstate == "42501" and "shared-view" in str(refused), refused
            with pytest.raises(psycopg.Error) as unprepared:
                conn.execute(sql, prepare=False)
            assert unprepared.value.sqlstate == "42501"
            # The session goes on; its own schema is as before.
            assert conn.execute("SELECT count(*) FROM items").fetchone()[0] == \
                backend_query(pg, "shared", "SELECT count(*) FROM globex.items")[0][0]
        finally:
            backend_query(pg, "shared", f"DROP VIEW IF EXISTS {view}")
    with proxy.connect("app.globex", APP) as later:  # a new login knows the view is gone
        with pytest.raises(psycopg.Error) as gone:
            later.execute(f"SELECT * FROM {view}")
        assert gone.value.sqlstate == "42P01"


def test_a_table_named_like_a_shared_view_is_created_in_the_tenants_own_schema(
        proxy_factory, pg) -> None:
    """isolation_level standard: an unqualified CREATE TABLE lands in the first schema of
    the pinned search path, the tenant's own, so a view of that name in a shared schema
    does not make the proxy refuse it. The view stays refused and unchanged."""
    name = f"tg_shadow_{uuid.uuid4().hex[:8]}"
    backend_query(pg, "shared", f"CREATE VIEW common.{name} AS SELECT id, secret FROM hooli.items")
    backend_query(pg, "shared", f"GRANT SELECT ON common.{name} TO globex")
    backend_query(pg, "shared", "GRANT CREATE ON SCHEMA globex TO globex")
    try:
        proxy = proxy_factory(isolation_level="standard")  # its catalog knows the view
        with proxy.connect("app.globex", APP) as conn:
            conn.execute(f"CREATE TABLE {name} (id int)")
            conn.execute(f"INSERT INTO globex.{name} VALUES (7)")
            for sql in (f"SELECT * FROM common.{name}", f"SELECT * FROM {name}"):
                with pytest.raises(psycopg.Error) as refused:
                    conn.execute(sql)
                assert refused.value.sqlstate == "42501" and "shared-view" in str(refused.value)
        kinds = backend_query(pg, "shared", "SELECT relnamespace::regnamespace::text, relkind "
                                            f"FROM pg_class WHERE relname = '{name}' ORDER BY 1")
        assert kinds == [("common", "v"), ("globex", "r")]
        assert backend_query(pg, "shared", f"SELECT id FROM globex.{name}") == [(7,)]
    finally:
        backend_query(pg, "shared", f"DROP TABLE IF EXISTS globex.{name}")
        backend_query(pg, "shared", f"DROP VIEW IF EXISTS common.{name}")
        backend_query(pg, "shared", "REVOKE CREATE ON SCHEMA globex FROM globex")


def _refused_before(conn: psycopg.Connection, sql: str, deadline: float) -> psycopg.Error:
    """Run `sql` until the proxy refuses it; fail if it still runs after `deadline` s."""
    give_up = time.monotonic() + deadline
    while True:
        try:
            assert conn.execute(sql, prepare=True).fetchall() == []
        except psycopg.Error as exc:
            return exc
        assert time.monotonic() < give_up, f"{sql!r} still allowed after {deadline} s"
        time.sleep(0.2)
