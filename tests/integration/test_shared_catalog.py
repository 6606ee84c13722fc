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
