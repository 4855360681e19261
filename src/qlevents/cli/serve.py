"""``qlevents serve``: run the ingestion service (needs the server extra).

Before it prints anything it checks the settings, that the port is free, and that no other
server uses the data directory (:class:`~qlevents.datadir.ServeLock`, held until it exits).
"""

from __future__ import annotations

import argparse
import errno
import shlex
import shutil
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from qlevents.cli.common import Commands, default_endpoint
from qlevents.cli.errors import CommandError

if TYPE_CHECKING:
    from qlevents.server.config import Settings

SERVER_EXTRA = "pip install 'qlevents[server]'"


def add_parser(commands: Commands) -> None:
    """Add ``serve``; its options are added when it is used (:func:`add_serve_options`)."""
    serve = commands.add_parser(
        "serve", help="run the ingestion service", populate=add_serve_options
    )
    serve.add_argument(
        "--demo",
        action="store_true",
        help="on first run (no account yet), create the account 'demo' and print its key",
    )
    serve.set_defaults(handler=run)


def add_serve_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--config`` and an option per setting of the server (they need its extra)."""
    try:
        from qlevents.cli.serve_settings import add_options
    except ImportError as exc:
        raise CommandError(
            f"'qlevents {parser.prog.split()[-1]}' needs the server extra ({exc.name} is"
            f" missing): {SERVER_EXTRA}"
        ) from exc
    add_options(parser)


def run(args: argparse.Namespace) -> int:
    """Check the settings, the port and the data directory, then serve until stopped."""
    from msgspec.structs import replace

    from qlevents.accounts import AccountError, normalize_endpoint
    from qlevents.cli.serve_settings import resolve
    from qlevents.datadir import ServeLock
    from qlevents.server.run import run_server
    from qlevents.users import FAST_HASHES, FAST_HASHES_VARIABLE

    resolved = resolve(args)
    listen, settings = resolved.settings, resolved.settings.server
    if settings.admin_port and settings.admin_port == listen.port:
        raise CommandError(
            f"{resolved.named('admin_port')} must differ from {resolved.named('port')}",
            exit_code=2,
        )
    if settings.admin_port and not settings.admin_token:
        raise CommandError(
            f"{resolved.named('admin_port')} needs an admin token (--admin-token)", exit_code=2
        )
    try:
        endpoint = normalize_endpoint(settings.endpoint_url)
    except AccountError as exc:
        raise CommandError(f"{resolved.named('endpoint_url')}: {exc}", exit_code=2) from None
    settings = replace(
        settings,
        data_dir=settings.data_dir.resolve(),
        endpoint_url=endpoint,
        access_log=settings.access_log and listen.log_level != "warning",
    )
    check_port(listen.host, listen.port, "--port")
    if settings.admin_port:
        check_port(listen.admin_host, settings.admin_port, "--admin-port")
    if FAST_HASHES:
        print(
            f"Warning: {FAST_HASHES_VARIABLE}=1: dashboard passwords are hashed with a test"
            " suite's cheap parameters; never set it in production.",
            file=sys.stderr,
            flush=True,
        )
    with ServeLock(settings.data_dir):
        dashboard = default_endpoint(listen.host, listen.port).removesuffix("events") + "ui/"
        _prepare_accounts(settings, endpoint, dashboard, demo=args.demo)
        run_server(
            settings,
            host=listen.host,
            port=listen.port,
            admin_host=listen.admin_host,
            log_level=listen.log_level,
            forwarded_allow_ips=listen.forwarded_allow_ips or None,
        )
    return 0


def check_port(host: str, port: int, option: str) -> None:
    """Refuse a port that cannot be listened on (taken, privileged, an unknown address).

    uvicorn would log its own error after our first lines were printed; binding here first
    says what to do instead. (The port is bound again by the server a moment later.)
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET  # as uvicorn chooses
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                hint = f"; with make: make serve PORT={port + 1}" if option == "--port" else ""
                raise CommandError(
                    f"port {port} on {host} is in use (another qlevents serve, or another"
                    f" program); choose a free one with {option} {port + 1}{hint}"
                ) from None
            if exc.errno == errno.EACCES:
                raise CommandError(
                    f"listening on port {port} needs privileges this process lacks; choose"
                    f" a port above 1023 with {option}"
                ) from None
            raise CommandError(
                f"cannot listen on {host} port {port}: {exc.strerror or exc}"
            ) from None


def _prepare_accounts(settings: Settings, endpoint: str, dashboard: str, *, demo: bool) -> None:
    """Record the endpoint; with ``demo``, create the account 'demo' on first run; without
    it, say how to create an account when there is none. Then say where the dashboard is,
    and while it has no user, how to create one to sign in with. On a NATS cluster the book
    is the cluster's (every node's), so the first node to start makes the demo account; the
    dashboard's users are the cluster's too."""
    from qlevents.store.factory import build_account_book, build_user_store

    run = _program()
    data_dir = settings.data_dir
    local = f"--data-dir {shlex.quote(str(data_dir))}"
    where = f"--store {settings.storage.store}" if settings.storage.is_nats else local
    book = build_account_book(settings.storage, data_dir)
    users = build_user_store(settings.storage, data_dir, book)
    try:
        book.record_local_endpoint(endpoint)
        accounts = book.all()
        if not accounts and not demo:
            print(
                "No account yet. Create one (a running server sees it within a second):\n"
                f'  {run} accounts add "My shop" {where}\n'
                "(or start with --demo to create an account 'demo' now)\n",
                flush=True,
            )
        elif not accounts:
            key = book.add("demo").client_key
            accounts = book.all()
            print(
                f"First run: created the account 'demo'.\n"
                f"  client key: {key}\n"
                f"  endpoint:   {endpoint}\n"
                f"Try it:\n"
                f'  curl -XPOST {endpoint} -d \'[{{"client_key": "{key}",'
                f' "price": 123.41, "product_id": "123-AA-X23", "event": "view",'
                f' "permalink": "https://yourstore.com/123-AA-X23/"}}]\'\n',
                flush=True,
            )
        if users.all():
            print(f"Dashboard: {dashboard}\n", flush=True)
            return
        demos = [a for a in accounts if a.name == "demo"] if demo else []
        lines = [
            f"Dashboard: {dashboard} (no user yet)",
            "Create an operator" + (", or a member of 'demo'," if demos else "")
            + " to sign in with (then type a password of 10+ characters, and Enter):",
            f"  {run} users add you@example.com --operator --password-stdin {where}",
            *(f"  {run} users add dev@shop.example --account {a.client_key} --password-stdin"
              f" {where}" for a in demos[:1]),
        ]  # fmt: skip
        print("\n".join(lines) + "\n", flush=True)
    finally:
        users.close()
        book.close()


def _program() -> str:
    """The command that runs this ``qlevents`` from the same shell: ``qlevents`` when that is
    the one on the PATH, else the path it was started by (``make serve``: .venv/bin/qlevents)."""
    started = Path(sys.argv[0])
    if started.name != "qlevents":  # python -m qlevents
        return f"{shlex.quote(sys.executable)} -m qlevents"
    found = shutil.which("qlevents")
    if found is not None and Path(found).resolve() == started.resolve():
        return "qlevents"
    return shlex.quote(str(started))
