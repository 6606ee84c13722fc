"""The admin console: serving one admin client, and the commands that change the runtime.

A login with `admin: true` that asks for the virtual database `tenantgate` is served
here instead of by a backend: after authentication it gets the usual startup replies,
then each Query message is parsed by `proxy.admin` and answered with result sets.
Like PgBouncer's console it speaks only the simple query protocol: any other message
is FATAL 08P01. Any other login asking for `tenantgate` is refused with 28000, so that
name never reaches a real database. Every command is logged and audited.
"""

from __future__ import annotations

import asyncio

from proxy import __version__
from proxy.admin import (CONSOLE_DATABASE, AdminError, Command, ResultSet, in_flight,
                         parse_commands, show, show_stats)
from proxy.errors import (AdminShutdown, ConfigError, FatalError, ProtocolViolation, ProxyError,
                          TenantRefused)
from proxy.protocol import messages as m
from proxy.tenancy.resolve import filter_startup_params

PAUSE_POLL = 0.05  # seconds between two looks at the open transactions a PAUSE waits for


def wants_console(user, database: str) -> bool:
    """Whether this connection is for the console: the database `tenantgate`, or an admin
    login that may act for no tenant (refused anywhere else, with a clear message)."""
    admin_only = user.admin and not (user.bypass or user.tenant or user.tenants)
    return database == CONSOLE_DATABASE or admin_only


async def open_console(session, user, login_name: str, params: dict[str, str],
                       database: str) -> Console:
    """After authentication: refuse a non-admin login, else send the startup replies."""
    session.login = login_name
    if not user.admin:
        raise TenantRefused(f'database "{CONSOLE_DATABASE}" is the admin console; login '
                            f'"{login_name}" is not an admin login', rule="admin-console")
    if database != CONSOLE_DATABASE:
        raise TenantRefused(f'login "{login_name}" may only use the admin console '
                            f'(database "{CONSOLE_DATABASE}")', rule="admin-only")
    session.startup_params = filter_startup_params(params)
    session.params = dict(session.startup_params)
    console = Console(session)
    session.console = console
    session.log = session.log.bind(console=True)
    session.cancel_key = session.app.register_cancel(session)
    out = [m.auth_ok()]
    out += [m.parameter_status(name, value) for name, value in console_parameters(session)]
    out += [m.backend_key_data(*session.cancel_key), m.ready_for_query(b"I")]
    session.write(b"".join(out))
    session.log.info("admin console connected")
    session.app.observer.admin_connected(session, CONSOLE_DATABASE)
    return console


def console_parameters(session) -> list[tuple[str, str]]:
    """What psql is told about the "server"; the version says it is not PostgreSQL, as
    PgBouncer's console does ("1.18.0/bouncer")."""
    return [("server_version", f"{__version__}/tenantgate"), ("server_encoding", "UTF8"),
            ("client_encoding", "UTF8"), ("DateStyle", "ISO, MDY"), ("TimeZone", "UTC"),
            ("integer_datetimes", "on"), ("standard_conforming_strings", "on"),
            ("application_name", session.params.get("application_name", "")),
            ("session_authorization", session.login), ("is_superuser", "off")]


def result_set(result: ResultSet, tag: str) -> bytes:
    """RowDescription, DataRows and CommandComplete of one SHOW."""
    out = [m.row_description(list(result.columns))]
    out += [m.data_row(row) for row in result.text_rows()]
    out.append(m.command_complete(tag))
    return b"".join(out)


def notice(message: str, severity: str = "NOTICE") -> bytes:
    """A NoticeResponse; SQLSTATE 01000 (warning) for a WARNING, else 00000."""
    sqlstate = "01000" if severity == "WARNING" else "00000"
    return m.notice_response({"S": severity, "V": severity, "C": sqlstate,
                              "M": f"tenantgate: {message}"})


class Console:
    def __init__(self, session) -> None:
        self.session = session
        self.app = session.app

    async def serve(self) -> None:
        """Answer queries until Terminate, a protocol error or the client goes away."""
        session = self.session
        try:
            while not session.closed:
                mtype, raw = await session.next_message()
                if mtype == m.TERMINATE:
                    session.closed = True
                    session.transport.close()
                    return
                if mtype != m.QUERY:
                    raise ProtocolViolation("the admin console supports only the simple query "
                                            "protocol", rule="admin-protocol")
                session.write(await self.answer(raw))
        except ProxyError as exc:
            session.fail(exc if exc.fatal else FatalError(exc.message, sqlstate=exc.sqlstate))
        except (ConnectionError, OSError) as exc:
            session.fail(FatalError(f"connection error: {exc}", sqlstate="08006"))
        finally:
            session.log.info("admin console disconnected")
            self.app.observer.admin_disconnected(session)

    async def answer(self, raw: bytes) -> bytes:
        """The replies to one Query message, up to and including ReadyForQuery."""
        out: list[bytes] = []
        try:
            commands = parse_commands(m.decode_query(raw))
            self._check_still_admin()
            if not commands:
                out.append(m.empty_query_response())
            for command in commands:
                out.append(await self.run(command))
        except ProxyError as exc:
            if exc.fatal:
                raise
            out.append(m.error_response(exc.fields()))
        out.append(m.ready_for_query(b"I"))
        return b"".join(out)

    def _check_still_admin(self) -> None:
        """A reload may have taken the admin right away: the console ends then."""
        user = self.app.config.users.get(self.session.login)
        if user is None or not user.admin:
            raise AdminShutdown("this login is no longer an admin login", rule="admin-revoked")

    async def run(self, command: Command) -> bytes:
        """Carry out one command; its replies. Logged and audited, failed or not."""
        log = self.session.log.bind(command=command.text)
        try:
            reply = await self._dispatch(command)
        except ProxyError as exc:
            log.info("admin command failed", sqlstate=exc.sqlstate)
            self.app.observer.admin_command(self.session, command.text, exc.sqlstate)
            raise
        log.info("admin command")
        self.app.observer.admin_command(self.session, command.text, None)
        return reply

    async def _dispatch(self, command: Command) -> bytes:
        if command.verb == "SHOW":
            if command.subject == "STATS" and self.app.worker is not None:
                # The whole proxy's totals: every worker's snapshot (one that does not
                # answer in time is left out, as at a /metrics scrape), this one's read here.
                combined = await self.app.worker.whole_proxy_metrics()
                return result_set(show_stats(self.app, combined), "SHOW")
            return result_set(show(command.subject, self.app), "SHOW")
        if command.verb == "RELOAD":
            return self._reload()
        if command.verb == "PAUSE":
            return await self._pause(command.subject)
        if command.verb == "RESUME":
            return self._resume(command.subject)
        return self._kill(command.subject)

    # -- commands that act ----------------------------------------------------------------

    def _reload(self) -> bytes:
        """Reload now; a bad file is reported here. With `workers: N` this worker only
        checks the file, and the supervisor's SIGHUP reloads every worker, this one too
        (reloading here as well would do it twice)."""
        if self.app.worker is None:
            error = self.app.reload()
        else:
            error = self._checked_file()
        if error is not None:
            raise AdminError(f"reload failed, the running configuration is kept: {error}",
                             sqlstate="F0000")
        if self.app.worker is not None:
            self.app.worker.reload_all()
        return m.command_complete("RELOAD")

    def _checked_file(self) -> str | None:
        try:
            self.app.read_config_file()
        except ConfigError as exc:
            self.app.observer.config_reloaded(False, str(exc))
            return str(exc)
        return None

    async def _pause(self, tenant: str | None) -> bytes:
        """New transactions of `tenant` (None: everyone) wait; the reply comes when the
        ones already open have finished, or after `shutdown_timeout` with a warning."""
        self._check_known(tenant)
        pauses = self.app.pauses
        pauses.pause(tenant)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.app.config.shutdown_timeout
        # Polled: a session has no event for "my transaction ended", and this runs only
        # while an operator's PAUSE is waiting.
        while (open_now := self._open_transactions(tenant)) and loop.time() < deadline:
            if not (pauses.everyone if tenant is None else pauses.holds(tenant)):
                break  # resumed meanwhile from another console
            await asyncio.sleep(PAUSE_POLL)
        if open_now:
            return notice(f"{open_now} transaction(s) still open after "
                          f"{self.app.config.shutdown_timeout:g} s; they may finish, new ones "
                          "wait", "WARNING") + m.command_complete("PAUSE")
        return m.command_complete("PAUSE")

    def _open_transactions(self, tenant: str | None) -> int:
        return sum(1 for session in list(self.app.sessions)
                   if (tenant is None or session.tenant == tenant)
                   and in_flight(session, self.app.pauses))

    def _resume(self, tenant: str | None) -> bytes:
        pauses = self.app.pauses
        if tenant is not None and pauses.everyone:
            raise AdminError("everyone is paused (PAUSE without a tenant); RESUME without a "
                             "tenant lifts it", sqlstate="55000")
        if not pauses.resume(tenant):
            what = f'tenant "{tenant}" is' if tenant is not None else "nothing is"
            raise AdminError(f"{what} not paused", sqlstate="55000")
        return m.command_complete("RESUME")

    def _kill(self, tenant: str) -> bytes:
        self._check_known(tenant)
        clients, servers = kill_tenant(self.app, tenant)
        return (notice(f"closed {clients} client connection(s) and {servers} idle server "
                       f"connection(s) of tenant \"{tenant}\"") + m.command_complete("KILL"))

    def _check_known(self, tenant: str | None) -> None:
        """A tenant in the config, or one whose clients are still connected (after a reload
        removed it)."""
        if tenant is None or tenant in self.app.config.tenants:
            return
        if any(session.tenant == tenant for session in self.app.sessions):
            return
        raise AdminError(f'tenant "{tenant}" is not known', sqlstate="42704")


def kill_tenant(app, tenant: str) -> tuple[int, int]:
    """Close the tenant's clients (FATAL 57P01; a server connection they hold is closed
    with them, never reused) and the idle server connections in the tenant's state."""
    victims = [session for session in app.sessions
               if session.tenant == tenant and session.console is None and not session.closed]
    for session in victims:
        session.fail(AdminShutdown(f'terminating connection due to administrator command '
                                   f'(KILL "{tenant}")', rule="admin-kill"))
    configured = app.config.tenants.get(tenant)
    own_database = ((configured.cluster, configured.database)
                    if configured is not None and configured.strategy == "database" else None)
    servers = 0
    for key, pool in app.pools.items():
        if key == own_database:  # the tenant's own database: every idle connection is its
            servers += pool.close_idle(lambda conn: True)
        else:
            servers += pool.close_idle(
                lambda conn: conn.context_key is not None and conn.context_key[1] == tenant)
    return len(victims), servers
