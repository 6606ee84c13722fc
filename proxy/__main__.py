"""The command line: run, check, demo, passwd, rls-sql (console script `tenantgate`).

Every option with a file has an environment variable: `--config` defaults to
$TENANTGATE_CONFIG, the password of `passwd` comes from $TENANTGATE_PASSWORD (or stdin, or
a prompt). Configuration problems are printed as `FILE:LINE: message` on stderr, exit 1.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return args.func(args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tenantgate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="serve (SIGHUP reloads, SIGTERM drains)")
    _config_option(run)
    # How the supervisor of `workers: N` starts each worker (proxy.workers); not for users.
    run.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    run.add_argument("--worker-dir", help=argparse.SUPPRESS)
    run.set_defaults(func=_run)

    check = commands.add_parser("check", help="validate the config; FILE:LINE errors, exit 1")
    _config_option(check)
    check.add_argument("--connect", action="store_true",
                       help="also log in to every tenant's backend database and check the "
                            "backend role, the tenant schemas and tenant roles")
    check.set_defaults(func=_check)

    demo = commands.add_parser("demo", help="throwaway PostgreSQL + sample tenants + proxy "
                                            "(port: env TENANTGATE_DEMO_PORT, default 6432)")
    demo.set_defaults(func=_demo)

    passwd = commands.add_parser("passwd", help="print a SCRAM-SHA-256 verifier for the config")
    passwd.add_argument("user", help="the login the verifier is for (users.USER.password)")
    passwd.add_argument("--password-stdin", action="store_true",
                        help="read the password from standard input (env TENANTGATE_PASSWORD)")
    passwd.set_defaults(func=_passwd)

    rls = commands.add_parser("rls-sql", help="print the SQL that installs the RLS policies, "
                                              "roles and grants of the row strategy")
    _config_option(rls)
    rls.add_argument("--connect", action="store_true",
                     help="read the tenant tables from each row database (else: a template)")
    rls.set_defaults(func=_rls_sql)
    from proxy.observability.audit_cli import add_audit_commands
    add_audit_commands(commands)
    return parser


def _config_option(command: argparse.ArgumentParser) -> None:
    default = os.environ.get("TENANTGATE_CONFIG") or None
    command.add_argument("--config", default=default, required=default is None,
                         metavar="FILE", help="config file (env TENANTGATE_CONFIG)")


def _config_failed(exc: Exception, config_path: str) -> int:
    """Print a ConfigError as FILE[:LINE]: message; the exit code 1."""
    text = str(exc)
    if not getattr(exc, "path", None):
        text = f"{config_path}: {text}"
    print(text, file=sys.stderr)
    return 1


def _run(args) -> int:
    from proxy.app import run
    from proxy.errors import ConfigError
    try:
        return run(args.config, args.worker, args.worker_dir)
    except ConfigError as exc:  # found while building the runtime, e.g. a TLS key that won't load
        return _config_failed(exc, args.config)


def _check(args) -> int:
    from proxy.config import load_config
    from proxy.errors import ConfigError
    try:
        config = load_config(args.config)
        _check_tls_files(config)
    except ConfigError as exc:
        return _config_failed(exc, args.config)
    summary = (f"{len(config.tenants)} tenants, {len(config.users)} logins, "
               f"{len(config.clusters)} clusters")
    if args.connect:
        import asyncio
        problems = asyncio.run(_check_backends(config))
        for problem in problems:
            print(f"{config.path}: {problem}", file=sys.stderr)
        if problems:
            return 1
        summary += "; backends checked"
    print(f"{config.path}: ok ({summary})")
    return 0


def _check_tls_files(config) -> None:
    """The client certificate and key, and every cluster's CA file, must load."""
    import ssl

    from proxy.errors import ConfigError
    from proxy.listener import build_ssl_context
    build_ssl_context(config.tls, config.path)
    for cluster in config.clusters.values():
        if cluster.tls_ca is None:
            continue
        try:
            ssl.create_default_context(cafile=cluster.tls_ca)
        except OSError as exc:  # also ssl.SSLError: not a PEM certificate
            raise ConfigError(f"clusters.{cluster.name}.tls_ca: cannot load {cluster.tls_ca!r}: "
                              f"{exc.strerror or exc}", path=config.path) from None


# -- check --connect -----------------------------------------------------------------------

async def _check_backends(config) -> list[str]:
    """Log in to every tenant's database as its cluster's backend user; the problems found."""
    from proxy.errors import ProxyError
    from proxy.pool.server import ServerError, open_server_connection
    problems: list[str] = []
    role_checked: set[str] = set()  # clusters whose backend role was looked at
    row_checked: set[tuple[str, str]] = set()  # row databases whose RLS was verified
    for tenant in config.tenants.values():
        cluster, where = config.clusters[tenant.cluster], f"tenants.{tenant.name}"
        try:
            conn = await open_server_connection(cluster, tenant.database)
        except ProxyError as exc:
            problems.append(f"{where}: {exc.message.removeprefix('tenantgate: ')}")
            continue
        try:
            await conn.query("SET search_path = pg_catalog, pg_temp")  # no user-defined operators
            if cluster.name not in role_checked:
                role_checked.add(cluster.name)
                problems += await _backend_role_problems(conn, cluster)
            found = await _tenant_problems(conn, tenant)
            if tenant.strategy == "row" and (cluster.name, tenant.database) not in row_checked:
                from proxy.tenancy.rls import check_row_database
                row_checked.add((cluster.name, tenant.database))  # reported once per database
                found += await check_row_database(conn, config, cluster.name, tenant.database)
            problems += [f"{where}: {p}" for p in found]
        except ServerError as exc:
            problems.append(f"{where}: a check query failed: {exc}")
        finally:
            conn.close()
    return problems


async def _fetch(conn, sql: str) -> list[list[str | None]]:
    rows = await conn.query(sql)
    return [[None if v is None else v.decode() for v in row] for row in rows]


async def _backend_role_problems(conn, cluster) -> list[str]:
    [[superuser, bypass]] = await _fetch(conn, "SELECT rolsuper, rolbypassrls FROM "
                                               "pg_catalog.pg_roles WHERE rolname = current_user")
    where = f"clusters.{cluster.name}: backend user {cluster.user!r}"
    return ([f"{where} is a superuser; isolation needs an ordinary role"] if superuser == "t"
            else []) + ([f"{where} has BYPASSRLS"] if bypass == "t" else [])


async def _tenant_problems(conn, tenant) -> list[str]:
    from proxy.tenancy.strategy import quote_literal as lit
    problems = []
    if tenant.schema is not None:
        [[exists]] = await _fetch(conn, "SELECT count(*) FROM pg_catalog.pg_namespace "
                                        f"WHERE nspname = {lit(tenant.schema)}")
        if exists == "0":
            problems.append(f"schema {tenant.schema!r} does not exist in database "
                            f"{tenant.database!r}")
    if tenant.role is not None:
        [[member]] = await _fetch(
            conn, "SELECT CASE WHEN r.oid IS NULL THEN 'missing' WHEN pg_catalog.pg_has_role("
                  "current_user, r.oid, 'MEMBER') THEN 'ok' ELSE 'no' END FROM (SELECT 1) AS one "
                  f"LEFT JOIN pg_catalog.pg_roles AS r ON r.rolname = {lit(tenant.role)}")
        if member != "ok":
            problems.append(f"role {tenant.role!r} does not exist" if member == "missing" else
                            f"the backend user may not SET ROLE {tenant.role!r} (not a member)")
    return problems


def _rls_sql(args) -> int:
    """Print the row strategy's SQL; with --connect from the real tables (errors: exit 1)."""
    from proxy.config import load_config
    from proxy.errors import ConfigError
    from proxy.tenancy.rls import rls_sql
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        return _config_failed(exc, args.config)
    catalogs = facts = None
    if args.connect:
        import asyncio

        from proxy.tenancy.rls_sql import load_for_sql
        catalogs, facts, errors = asyncio.run(load_for_sql(config))
        for error in errors:
            print(f"{config.path}: {error}", file=sys.stderr)
        if errors:
            return 1
    sys.stdout.write(rls_sql(config, catalogs, facts))
    return 0


def _demo(args) -> int:
    from proxy.demo import run_demo
    return run_demo()


def _passwd(args) -> int:
    from proxy.protocol.auth import make_scram_verifier
    password = os.environ.get("TENANTGATE_PASSWORD")
    if password is None and args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    if password is None:
        password = getpass.getpass(f"password for {args.user}: ")
    if not password:
        print("tenantgate: empty password", file=sys.stderr)
        return 1
    try:
        verifier = make_scram_verifier(password)
    except ValueError as exc:
        print(f"tenantgate: {exc}", file=sys.stderr)
        return 1
    print(verifier)
    return 0


if __name__ == "__main__":
    sys.exit(main())
