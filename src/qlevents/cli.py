"""The ``qlevents`` command line.

User mistakes print ``Error: ...`` on stderr and exit 2 (usage) or 1 (refused); never a
traceback. Every command that reads the data directory takes ``--data-dir`` (env
``QLEVENTS_DATA_DIR``, default ``./qlevents-data``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from qlevents._exceptions import QleventsError
from qlevents._version import __version__
from qlevents.events import MAX_BODY_BYTES, MAX_EVENTS_PER_REQUEST


class CommandError(Exception):
    """A user mistake or a refused operation; carries its exit code."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        raise CommandError(message, exit_code=2)


def _data_dir(args: argparse.Namespace) -> Path:
    return Path(args.data_dir or os.environ.get("QLEVENTS_DATA_DIR") or "./qlevents-data")


def _default_endpoint(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # noqa: S104
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/events"


def _local_endpoint(args: argparse.Namespace, book: Any) -> str:
    explicit = getattr(args, "endpoint_url", None) or os.environ.get("QLEVENTS_ENDPOINT_URL")
    return str(explicit or book.local_endpoint(_default_endpoint("127.0.0.1", 8080)))


def _print_account(account: dict[str, object], as_json: bool) -> None:
    if as_json:
        print(json.dumps(account))
        return
    for field in ("name", "client_key", "status", "endpoint", "created_at"):
        print(f"{field + ':':12} {account[field]}")
    rate, burst = account["rate_limit"], account["burst"]
    if rate is not None:
        limit = "unlimited" if rate == 0 else f"{rate:g} events/s, burst {burst or rate:g}"
        print(f"{'rate limit:':12} {limit}")


def _number(text: str, option: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise CommandError(f"{option} must be a number; got {text!r}", exit_code=2) from None


# --- accounts ------------------------------------------------------------------------------


def cmd_accounts(args: argparse.Namespace) -> int:
    from qlevents.accounts import ACTIVE, DISABLED, AccountBook

    book = AccountBook(_data_dir(args))
    try:
        local = _local_endpoint(args, book)
        action = args.accounts_action
        if action == "add":
            account = book.add(args.name, args.endpoint)
        elif action == "list":
            accounts = [a.as_dict(local) for a in book.all()]
            if args.json:
                print(json.dumps(accounts, indent=2))
            elif not accounts:
                print("No accounts yet. Create one with: qlevents accounts add NAME")
            else:
                print(f"{'NAME':20} {'CLIENT KEY':38} {'STATUS':9} ENDPOINT")
                for a in accounts:
                    print(f"{a['name']:20} {a['client_key']:38} {a['status']:9} {a['endpoint']}")
            return 0
        elif action == "show":
            account = book.get(args.key)
        elif action in ("disable", "enable"):
            account = book.set_status(args.key, DISABLED if action == "disable" else ACTIVE)
        elif action == "limit":
            rate = None if args.rate == "default" else _number(args.rate, "--rate")
            burst = None if args.burst is None else _number(args.burst, "--burst")
            account = book.set_limit(args.key, rate, burst)
        else:  # move
            account = book.move(args.key, args.endpoint, local)
        _print_account(account.as_dict(local), args.json)
        return 0
    finally:
        book.close()


# --- events --------------------------------------------------------------------------------


def cmd_events_export(args: argparse.Namespace) -> int:
    import asyncio

    import msgspec

    from qlevents.settings import from_env
    from qlevents.store.factory import StoreSettings, build_store

    store = build_store(from_env(StoreSettings), _data_dir(args), read_only=True)
    encoder = msgspec.json.Encoder()
    out = sys.stdout.buffer

    async def export() -> None:
        await store.open()
        try:
            position = args.after
            while True:
                batch = await store.read(position, _EXPORT_PAGE, args.client_key)
                for position, event in batch:  # noqa: B007 - the last position carries on
                    out.write(encoder.encode(event) + b"\n")
                if len(batch) < _EXPORT_PAGE:
                    break
        finally:
            await store.close()

    asyncio.run(export())
    out.flush()
    return 0


_EXPORT_PAGE = 5000


# --- serve ---------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn  # noqa: F401 - fail early with the extra's name

        from qlevents.server.config import Settings
        from qlevents.server.run import run_server
        from qlevents.store.factory import StoreSettings
    except ImportError as exc:
        raise CommandError(
            f"'qlevents serve' needs the server extra ({exc.name} is missing):"
            " pip install 'qlevents[server]'"
        ) from exc
    from qlevents.accounts import AccountBook, normalize_endpoint

    if args.workers < 1:
        raise CommandError("--workers must be 1 or more", exit_code=2)
    if args.admin_port and args.admin_port == args.port:
        raise CommandError("--admin-port must differ from --port", exit_code=2)
    data_dir = _data_dir(args).resolve()
    endpoint = normalize_endpoint(args.endpoint_url or _default_endpoint(args.host, args.port))
    admin_token = args.admin_token or os.environ.get("QLEVENTS_ADMIN_TOKEN", "")
    if args.admin_port and not admin_token:
        raise CommandError("--admin-port needs an admin token (--admin-token)", exit_code=2)
    settings = Settings(
        data_dir=data_dir,
        endpoint_url=endpoint,
        max_body_bytes=args.max_body_bytes,
        max_events=args.max_events,
        admin_token=admin_token,
        storage=StoreSettings(store=args.store, synchronous=args.synchronous),
        access_log=not args.no_access_log and args.log_level != "warning",
        header_timeout=args.header_timeout,
        body_timeout=args.body_timeout,
        max_inflight_requests=args.max_inflight_requests,
        rate_limit=args.rate_limit,
        rate_burst=args.rate_burst,
        workers=args.workers,
        admin_port=args.admin_port,
    )
    book = AccountBook(data_dir)
    try:
        book.record_local_endpoint(endpoint)
        if not book.all():
            demo = book.add("demo")
            print(
                f"First run: created the account 'demo'.\n"
                f"  client key: {demo.client_key}\n"
                f"  endpoint:   {endpoint}\n"
                f"Try it:\n"
                f'  curl -XPOST {endpoint} -d \'[{{"client_key": "{demo.client_key}",'
                f' "price": 123.41, "product_id": "123-AA-X23", "event": "view",'
                f' "permalink": "https://yourstore.com/123-AA-X23/"}}]\'\n',
                flush=True,
            )
    finally:
        book.close()
    run_server(settings, host=args.host, port=args.port, admin_host=args.admin_host,
               log_level=args.log_level, forwarded_allow_ips=args.forwarded_allow_ips)  # fmt: skip
    return 0


# --- the parser ----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="qlevents", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"qlevents {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    data = _Parser(add_help=False)
    data.add_argument("--data-dir", help="data directory (env QLEVENTS_DATA_DIR)")

    serve = commands.add_parser("serve", parents=[data], help="run the ingestion service")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    serve.add_argument(
        "--endpoint-url",
        help="this installation's public endpoint URL (default http://HOST:PORT/events)",
    )
    serve.add_argument("--admin-token", help="enable the admin API (env QLEVENTS_ADMIN_TOKEN)")
    serve.add_argument(
        "--admin-port", type=int, default=0, help="serve the admin API on this port only"
    )
    serve.add_argument("--admin-host", default="127.0.0.1", help="address of --admin-port")
    serve.add_argument(
        "--header-timeout", type=float, default=10.0, help="seconds to receive headers"
    )
    serve.add_argument("--body-timeout", type=float, default=30.0, help="seconds to receive a body")
    serve.add_argument(
        "--max-inflight-requests",
        type=int,
        default=1024,
        help="requests one worker takes at once before answering 503",
    )
    serve.add_argument(
        "--rate-limit",
        type=float,
        default=0.0,
        help="default events/s per account (0: unlimited); accounts limit KEY overrides",
    )
    serve.add_argument(
        "--rate-burst", type=float, default=0.0, help="default burst (0: one second's worth)"
    )
    serve.add_argument("--max-body-bytes", type=int, default=MAX_BODY_BYTES)
    serve.add_argument("--max-events", type=int, default=MAX_EVENTS_PER_REQUEST)
    serve.add_argument("--synchronous", choices=["FULL", "EXTRA"], default="FULL")
    serve.add_argument("--store", choices=["sqlite", "memory"], default="sqlite")
    serve.add_argument("--no-access-log", action="store_true")
    serve.add_argument(
        "--forwarded-allow-ips",
        help="behind a reverse proxy: its addresses (comma-separated, or '*'), whose"
        " X-Forwarded-For the access log believes",
    )
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    serve.set_defaults(handler=cmd_serve)

    accounts = commands.add_parser("accounts", help="manage accounts (client keys)")
    actions = accounts.add_subparsers(dest="accounts_action", required=True, parser_class=_Parser)
    common = _Parser(add_help=False, parents=[data])
    common.add_argument("--json", action="store_true", help="machine-readable output")
    common.add_argument("--endpoint-url", help="this installation's endpoint URL")
    add = actions.add_parser("add", parents=[common], help="create an account")
    add.add_argument("name")
    add.add_argument("--endpoint", help="home it on another installation (URL)")
    actions.add_parser("list", parents=[common], help="list accounts")
    for name, text in (("show", "show one account"), ("disable", "refuse its events"),
                       ("enable", "accept its events again")):  # fmt: skip
        actions.add_parser(name, parents=[common], help=text).add_argument("key")
    move = actions.add_parser("move", parents=[common], help="home an account elsewhere")
    move.add_argument("key")
    move.add_argument("--endpoint", required=True, help="the URL it is homed on from now")
    limit = actions.add_parser(
        "limit", parents=[common], help="set an account's rate limit (events per second)"
    )
    limit.add_argument("key")
    limit.add_argument(
        "--rate", required=True, help="events per second; 0: unlimited; 'default': the server's"
    )
    limit.add_argument("--burst", help="events it may send at once (default: one second's worth)")
    accounts.set_defaults(handler=cmd_accounts)

    events = commands.add_parser("events", help="read stored events")
    events_actions = events.add_subparsers(
        dest="events_action", required=True, parser_class=_Parser
    )
    export = events_actions.add_parser(
        "export", parents=[data], help="write stored events as NDJSON to stdout"
    )
    export.add_argument("--client-key", help="only this account's events")
    export.add_argument("--after", type=int, default=0, help="start after this store position")
    export.set_defaults(handler=cmd_events_export)

    from qlevents.client.send_command import add_send_command

    add_send_command(commands, _Parser)
    from qlevents import cli_users

    cli_users.add_parser(commands, _Parser)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return int(args.handler(args))
    except CommandError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return exc.exit_code
    except QleventsError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
