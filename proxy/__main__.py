"""The command line: run, check, demo, passwd, rls-sql (console script `tenantgate`)."""

from __future__ import annotations

import argparse
import getpass
import os
import sys


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return args.func(args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tenantgate", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    default_config = os.environ.get("TENANTGATE_CONFIG")

    run = commands.add_parser("run", help="serve (SIGHUP reloads, SIGTERM drains)")
    run.add_argument("--config", default=default_config, required=default_config is None,
                     help="config file (env TENANTGATE_CONFIG)")
    run.set_defaults(func=_run)

    check = commands.add_parser("check", help="validate the config; FILE:LINE errors, exit 1")
    check.add_argument("--config", default=default_config, required=default_config is None)
    check.set_defaults(func=_check)

    demo = commands.add_parser("demo", help="throwaway PostgreSQL + sample tenants + proxy")
    demo.set_defaults(func=_demo)

    passwd = commands.add_parser("passwd", help="print a SCRAM-SHA-256 verifier for the config")
    passwd.add_argument("user", help="the login the verifier is for (shown in the output)")
    passwd.add_argument("--password-stdin", action="store_true",
                        help="read the password from standard input (env TENANTGATE_PASSWORD)")
    passwd.set_defaults(func=_passwd)
    return parser


def _run(args) -> int:
    from proxy.app import run
    return run(args.config)


def _check(args) -> int:
    from proxy.config import load_config
    from proxy.errors import ConfigError
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    print(f"{args.config}: ok ({len(config.tenants)} tenants, {len(config.users)} logins, "
          f"{len(config.clusters)} clusters)")
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
    print(make_scram_verifier(password))
    return 0


if __name__ == "__main__":
    sys.exit(main())
