"""``qlevents serve``: run the ingestion service (needs the server extra)."""

from __future__ import annotations

import argparse
import os

from qlevents.cli.common import Commands, data_dir_option, data_dir_path, default_endpoint
from qlevents.cli.errors import CommandError
from qlevents.events import MAX_BODY_BYTES, MAX_EVENTS_PER_REQUEST


def add_parser(commands: Commands) -> None:
    """Add ``serve`` and its options."""
    serve = commands.add_parser(
        "serve", parents=[data_dir_option()], help="run the ingestion service"
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=8080, help="port to listen on")
    serve.add_argument("--workers", type=int, default=1, help="worker processes")
    serve.add_argument(
        "--endpoint-url",
        help="this installation's public endpoint URL (default: http://HOST:PORT/events)",
    )
    serve.add_argument("--admin-token", help="enable the admin API (env QLEVENTS_ADMIN_TOKEN)")
    serve.add_argument(
        "--admin-port",
        type=int,
        default=0,
        help="serve the admin API on this port only; 0: on --port, with the events API",
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
        help="default events/s per account, which 'accounts limit KEY' overrides; 0: unlimited",
    )
    serve.add_argument(
        "--rate-burst", type=float, default=0.0, help="default burst; 0: one second's worth"
    )
    serve.add_argument(
        "--max-body-bytes",
        type=int,
        default=MAX_BODY_BYTES,
        help="largest body after decompression, in bytes; 413 above",
    )
    serve.add_argument(
        "--max-events",
        type=int,
        default=MAX_EVENTS_PER_REQUEST,
        help="most events in one request; 413 above",
    )
    serve.add_argument(
        "--synchronous",
        choices=["FULL", "EXTRA"],
        default="FULL",
        help="SQLite durability; nothing weaker is offered",
    )
    serve.add_argument(
        "--store",
        choices=["sqlite", "memory"],
        default="sqlite",
        help="where events are kept; memory: nothing survives a restart",
    )
    serve.add_argument(
        "--no-access-log", action="store_true", help="turn off the per-request log line"
    )
    serve.add_argument(
        "--forwarded-allow-ips",
        help="behind a reverse proxy: its addresses (comma-separated, or '*'), whose"
        " X-Forwarded-For the access log believes",
    )
    serve.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning"], help="log level"
    )
    serve.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Check the options, create the ``demo`` account on first run, then serve until stopped."""
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
    data_dir = data_dir_path(args).resolve()
    endpoint = normalize_endpoint(args.endpoint_url or default_endpoint(args.host, args.port))
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
