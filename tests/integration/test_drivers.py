"""ORMs and driver pools through transaction pooling with a small pool (README "Pooling").

Issue "Drivers just work through transaction pooling", item 8: SQLAlchemy 2 ORM (sync on
psycopg 3, asyncio on asyncpg), the Django ORM, an asyncpg pool with its reset on release, and
COPY of 1,000,000 rows both ways, all with the drivers' default settings (asyncpg statement
cache on, psycopg's default prepare_threshold). Tables are created by the bypass login
`migrator` (or directly as the superuser for COPY) and every result is checked against a
direct read on the backend.

The acceptance run of 50 asyncpg clients with the default statement cache over pool_size 3
(3 parameterised queries x 100 each) is
`test_extended.py::test_acceptance_50_asyncpg_clients_over_pool_size_3`; it is not repeated here.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Iterator

import asyncpg
import psycopg
import pytest
from sqlalchemy import String, create_engine, func, select
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from proxy.sample import sample_items
from tests.helpers import backend_query

pytestmark = pytest.mark.timeout(180)

POOL_SIZE = 2


@pytest.fixture(scope="module")
def migrator_can_create(pg) -> Iterator[None]:
    """Let the backend role (which `migrator` logs in as) create tables in acme's public
    schema, as the sample lets it own acme's items table; revoked at the end."""
    pg.run_sql("GRANT CREATE ON SCHEMA public TO tenantgate;", dbname="acme")
    yield
    pg.run_sql("REVOKE CREATE ON SCHEMA public FROM tenantgate;", dbname="acme")


def table_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def sa_url(proxy, driver: str, user: str, password: str, database: str) -> URL:
    return URL.create(f"postgresql+{driver}", username=user, password=password,
                      host=proxy.host, port=proxy.port, database=database)


def backend_rows(pg, table: str) -> list[tuple]:
    return backend_query(pg, "acme", f"SELECT id, name, qty FROM public.{table} ORDER BY id")


def table_exists(pg, table: str) -> bool:
    return backend_query(pg, "acme", "SELECT to_regclass(%s) IS NOT NULL",
                         (f"public.{table}",))[0][0]


def widget_model(table: str):
    class Base(DeclarativeBase):
        pass

    class Widget(Base):
        __tablename__ = table
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str] = mapped_column(String(40))
        qty: Mapped[int]

    return Base, Widget


# -- SQLAlchemy 2 ORM -------------------------------------------------------------------------

def test_sqlalchemy_orm_sync_psycopg(proxy_factory, pg, sample, migrator_can_create) -> None:
    proxy = proxy_factory(pool_size=POOL_SIZE)
    table = table_name("sa_sync")
    Base, Widget = widget_model(table)
    ddl_engine = create_engine(sa_url(proxy, "psycopg", "migrator", sample.password("migrator"),
                                      "acme"))
    engine = create_engine(sa_url(proxy, "psycopg", "app.acme", sample.password("app"), "app"),
                           pool_size=4, max_overflow=0)
    try:
        Base.metadata.create_all(ddl_engine)
        assert backend_query(pg, "acme", "SELECT tableowner FROM pg_tables WHERE tablename = %s",
                             (table,)) == [("tenantgate",)]

        with Session(engine) as session:  # create
            session.add_all([Widget(name=f"w{i}", qty=i) for i in range(1, 21)])
            session.commit()
        assert backend_rows(pg, table) == [(i, f"w{i}", i) for i in range(1, 21)]

        # read, more often than psycopg's prepare_threshold (5), from two sessions whose
        # transactions interleave on the two server connections
        with Session(engine) as first, Session(engine) as second:
            for round_ in range(12):
                for session in (first, second):
                    i = round_ % 20 + 1
                    widget = session.scalars(select(Widget).where(Widget.qty == i)).one()
                    assert (widget.id, widget.name) == (i, f"w{i}")
                    assert session.scalar(select(func.count()).select_from(Widget)
                                          .where(Widget.qty > i)) == 20 - i
            # psycopg's default: statements run more than 5 times are prepared (named)
            assert first.connection().connection.driver_connection.prepare_threshold == 5
            first.commit()
            second.commit()

        with Session(engine) as session:  # update + delete, one commit
            session.scalars(select(Widget).where(Widget.name == "w3")).one().qty = 300
            session.delete(session.get(Widget, 4))
            session.commit()
        expected = [(i, f"w{i}", 300 if i == 3 else i) for i in range(1, 21) if i != 4]
        assert backend_rows(pg, table) == expected

        with Session(engine) as session:  # rollback
            session.add(Widget(name="ghost", qty=-1))
            session.get(Widget, 5).qty = 555
            session.flush()
            assert session.scalar(select(func.count()).select_from(Widget)) == 20
            assert session.scalar(select(Widget.qty).where(Widget.id == 5)) == 555
            session.rollback()
            assert session.scalar(select(func.count()).select_from(Widget)) == 19
            assert session.get(Widget, 5).qty == 5
        assert backend_rows(pg, table) == expected

        with Session(engine) as session:  # the tenant's own table still reads as acme's
            assert session.execute(select(func.current_database())).scalar() == "acme"
    finally:
        engine.dispose()
        Base.metadata.drop_all(ddl_engine)
        ddl_engine.dispose()
    assert not table_exists(pg, table)


async def test_sqlalchemy_orm_asyncio_asyncpg(proxy_factory, pg, sample,
                                              migrator_can_create) -> None:
    proxy = proxy_factory(pool_size=POOL_SIZE)
    table = table_name("sa_async")
    Base, Widget = widget_model(table)
    ddl_engine = create_async_engine(sa_url(proxy, "asyncpg", "migrator",
                                            sample.password("migrator"), "acme"))
    engine = create_async_engine(sa_url(proxy, "asyncpg", "app.acme", sample.password("app"),
                                        "app"), pool_size=4, max_overflow=0)
    try:
        async with ddl_engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)

        async with AsyncSession(engine) as session:
            session.add_all([Widget(name=f"w{i}", qty=i) for i in range(1, 21)])
            await session.commit()
        assert backend_rows(pg, table) == [(i, f"w{i}", i) for i in range(1, 21)]

        async def reader(worker: int) -> int:
            checked = 0
            async with AsyncSession(engine) as session:
                for round_ in range(10):
                    i = (worker + round_) % 20 + 1
                    widget = (await session.scalars(select(Widget).where(Widget.qty == i))).one()
                    assert (widget.id, widget.name) == (i, f"w{i}")
                    assert await session.scalar(select(func.count()).select_from(Widget)
                                                .where(Widget.qty > i)) == 20 - i
                    await session.commit()  # each round its own transaction
                    checked += 1
            return checked

        assert await asyncio.gather(*(reader(w) for w in range(4))) == [10] * 4

        async with AsyncSession(engine) as session:
            (await session.scalars(select(Widget).where(Widget.name == "w3"))).one().qty = 300
            await session.delete(await session.get(Widget, 4))
            await session.commit()
        expected = [(i, f"w{i}", 300 if i == 3 else i) for i in range(1, 21) if i != 4]
        assert backend_rows(pg, table) == expected

        async with AsyncSession(engine) as session:
            session.add(Widget(name="ghost", qty=-1))
            (await session.get(Widget, 5)).qty = 555
            await session.flush()
            assert await session.scalar(select(func.count()).select_from(Widget)) == 20
            await session.rollback()
            assert await session.scalar(select(func.count()).select_from(Widget)) == 19
            assert await session.scalar(select(Widget.qty).where(Widget.id == 5)) == 5
        assert backend_rows(pg, table) == expected
    finally:
        await engine.dispose()
        async with ddl_engine.begin() as conn:
            await conn.run_sync(Base.metadata.drop_all)
        await ddl_engine.dispose()
    assert not table_exists(pg, table)


# -- Django ORM ---------------------------------------------------------------------------------

def test_django_orm(proxy_factory, pg, sample, migrator_can_create) -> None:
    import django
    from django.conf import settings

    proxy = proxy_factory(pool_size=POOL_SIZE)

    def database(user: str, password: str, name: str) -> dict:
        return {"ENGINE": "django.db.backends.postgresql", "NAME": name, "USER": user,
                "PASSWORD": password, "HOST": proxy.host, "PORT": str(proxy.port),
                "CONN_MAX_AGE": 0}

    assert not settings.configured, "Django is configured once per test process, here"
    settings.configure(
        DATABASES={"default": database("app.acme", sample.password("app"), "app"),
                   "migrator": database("migrator", sample.password("migrator"), "acme")},
        INSTALLED_APPS=[], USE_TZ=True, TIME_ZONE="UTC")
    django.setup()
    from django.db import connections, models, transaction

    table = table_name("dj_gadgets")

    class Gadget(models.Model):
        name = models.CharField(max_length=40)
        qty = models.IntegerField()

        class Meta:
            app_label = "tenantgate_drivers"
            db_table = table

    try:
        with connections["migrator"].schema_editor() as editor:
            editor.create_model(Gadget)
        assert table_exists(pg, table)

        Gadget.objects.bulk_create([Gadget(name=f"g{i}", qty=i) for i in range(1, 11)])
        assert backend_rows(pg, table) == [(i, f"g{i}", i) for i in range(1, 11)]

        for i in range(1, 11):  # parameterised reads, each in autocommit
            assert Gadget.objects.get(qty=i).name == f"g{i}"
            assert Gadget.objects.filter(qty__gt=i).count() == 10 - i
        assert connections["default"].cursor().connection.execute(
            "SELECT current_database()").fetchone() == ("acme",)

        with transaction.atomic():  # update + delete, committed
            Gadget.objects.filter(name="g3").update(qty=300)
            Gadget.objects.get(qty=4).delete()
            gadget = Gadget.objects.get(name="g5")
            gadget.name = "g5-renamed"
            gadget.save()
        expected = [(i, "g5-renamed" if i == 5 else f"g{i}", 300 if i == 3 else i)
                    for i in range(1, 11) if i != 4]
        assert backend_rows(pg, table) == expected

        class Abort(Exception):
            pass

        with pytest.raises(Abort), transaction.atomic():  # rolled back
            Gadget.objects.create(name="ghost", qty=-1)
            Gadget.objects.filter(qty=1).delete()
            assert Gadget.objects.count() == 9
            assert not Gadget.objects.filter(qty=1).exists()
            raise Abort
        assert Gadget.objects.count() == 9
        assert backend_rows(pg, table) == expected
    finally:
        connections["default"].close()
        with connections["migrator"].schema_editor() as editor:
            editor.delete_model(Gadget)
        connections.close_all()
    assert not table_exists(pg, table)


# -- asyncpg pool -------------------------------------------------------------------------------

ASYNCPG_RESET = "SELECT pg_advisory_unlock_all();\nCLOSE ALL;\nUNLISTEN *;\nRESET ALL;"


async def test_asyncpg_pool_defaults_acquire_release(proxy_factory, sample) -> None:
    """asyncpg.create_pool with its defaults (10 connections, statement cache on) over
    pool_size 3; every release runs asyncpg's reset query through the proxy."""
    proxy = proxy_factory(pool_size=3)
    names = {i: name for i, name, _ in sample_items("acme")}
    pool = await asyncpg.create_pool(host=proxy.host, port=proxy.port, user="app.acme",
                                     password=sample.password("app"), database="app")
    try:
        async with pool.acquire() as conn:
            initial_app_name = await conn.fetchval("SHOW application_name")
            assert conn.get_reset_query() == ASYNCPG_RESET  # what asyncpg sends on release

        async def worker(w: int) -> int:
            for n in range(25):
                async with pool.acquire() as conn:
                    assert await conn.fetchval("SELECT name FROM items WHERE id = $1",
                                               n % 3 + 1) == names[n % 3 + 1]
                    assert await conn.fetchval("SELECT $1::int * $2::int", w, n) == w * n
                    await conn.execute(f"SET application_name TO 'tg-pool-{w}'")
                    assert await conn.fetchval("SHOW application_name") == f"tg-pool-{w}"
                    async with conn.transaction():
                        assert await conn.fetchval("SELECT count(*) FROM items "
                                                   "WHERE id <= $1", n % 3 + 1) == n % 3 + 1
            return n + 1

        assert await asyncio.gather(*(worker(w) for w in range(20))) == [25] * 20
        # every release reset what the holder set (RESET ALL), on whichever connection
        held = [await pool.acquire() for _ in range(10)]  # asyncpg's default max_size
        try:
            assert pool.get_size() == 10
            for conn in held:
                assert await conn.fetchval("SHOW application_name") == initial_app_name
        finally:
            for conn in held:
                await pool.release(conn)
        # and the reset query itself, sent by hand, is accepted as one simple query
        async with pool.acquire() as conn:
            await conn.execute(ASYNCPG_RESET)
            assert await conn.fetchval("SELECT 1") == 1
    finally:
        await asyncio.wait_for(pool.close(), 30)


# -- COPY of 1,000,000 rows ----------------------------------------------------------------------

COPY_ROWS = 1_000_000


@pytest.fixture
def copy_tables(pg) -> Iterator[tuple[str, str]]:
    """Two identical fresh tables in acme, created as the superuser for tenantgate: one
    filled through the proxy, one directly."""
    names = (table_name("copy_proxy"), table_name("copy_direct"))
    for name in names:
        pg.run_sql(f"CREATE TABLE public.{name} (id int PRIMARY KEY, name text, qty int);\n"
                   f"GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON public.{name} "
                   "TO tenantgate;", dbname="acme")
    yield names
    for name in names:
        pg.run_sql(f"DROP TABLE IF EXISTS public.{name};", dbname="acme")


def copy_data() -> bytes:
    """COPY text that COPY TO gives back byte for byte (an escaped tab, NULLs)."""
    tab_name, null = "tab\\there", "\\N"
    return "".join(f"{i}\t{'row' if i % 9 else tab_name}-{i}\t"
                   f"{null if i % 13 == 0 else i * 7 % 1000}\n"
                   for i in range(1, COPY_ROWS + 1)).encode()


def copy_in(conn: psycopg.Connection, table: str, data: bytes) -> None:
    with conn.cursor() as cur, cur.copy(f"COPY {table} FROM STDIN") as copy:
        for start in range(0, len(data), 1 << 20):
            copy.write(data[start:start + (1 << 20)])


def copy_out(conn: psycopg.Connection, table: str) -> bytes:
    with conn.cursor() as cur, \
            cur.copy(f"COPY (SELECT * FROM {table} ORDER BY id) TO STDOUT") as copy:
        return b"".join(bytes(chunk) for chunk in copy)


def checksum(pg, table: str) -> tuple[int, str]:
    return backend_query(pg, "acme", f"SELECT count(*), md5(string_agg(t::text, E'\\n' "
                                     f"ORDER BY t.id)) FROM public.{table} AS t")[0]


def test_copy_1m_rows_text_in_and_out(proxy_factory, pg, sample, copy_tables) -> None:
    via_proxy, direct = copy_tables
    proxy = proxy_factory(pool_size=POOL_SIZE)
    data = copy_data()
    with proxy.connect("app.acme", sample.password("app")) as conn:
        copy_in(conn, via_proxy, data)
        assert conn.execute(f"SELECT count(*) FROM {via_proxy}").fetchone() == (COPY_ROWS,)
        proxied_out = copy_out(conn, via_proxy)
    with psycopg.connect(pg.dsn(dbname="acme"), autocommit=True, connect_timeout=10) as conn:
        copy_in(conn, direct, data)
        direct_out = copy_out(conn, direct)

    assert checksum(pg, via_proxy) == checksum(pg, direct)
    assert checksum(pg, via_proxy)[0] == COPY_ROWS
    assert len(proxied_out) == len(direct_out) == len(data)
    assert hashlib.md5(proxied_out).hexdigest() == hashlib.md5(direct_out).hexdigest() == \
        hashlib.md5(data).hexdigest()
