"""``qlevents accounts``: create, list, show, disable, enable, move and limit accounts."""

from __future__ import annotations

import argparse
import json
import os
from typing import TYPE_CHECKING, Any, Final

from qlevents.cli.common import (
    Commands,
    Parser,
    add_commands,
    data_dir_option,
    data_dir_path,
    default_endpoint,
    store_option,
    store_settings,
)
from qlevents.cli.errors import CommandError

if TYPE_CHECKING:
    from qlevents.accounts import Account, AccountBookLike

ACCOUNT_HELP: Final = "the account's client key, or its name"
#: Actions that only read the book: they create nothing (a mistyped --data-dir is an error).
READ_ONLY: Final = frozenset({"list", "show"})


def add_parser(commands: Commands) -> None:
    """Add ``accounts`` and its subcommands."""
    accounts = commands.add_parser("accounts", help="manage accounts (client keys)")
    actions = add_commands(accounts, dest="action")
    common = Parser(add_help=False, parents=[data_dir_option()])
    store_option(common)
    common.add_argument("--json", action="store_true", help="machine-readable output")
    common.add_argument(
        "--endpoint-url", help="this installation's endpoint URL (env QLEVENTS_ENDPOINT_URL)"
    )
    add = actions.add_parser("add", parents=[common], help="create an account")
    add.add_argument("name", metavar="NAME", help="the account's name, e.g. the shop's")
    add.add_argument("--endpoint", help="home it on another installation (URL)")
    actions.add_parser("list", parents=[common], help="list accounts")
    for name, text in (("show", "show one account"), ("disable", "refuse its events"),
                       ("enable", "accept its events again")):  # fmt: skip
        action = actions.add_parser(name, parents=[common], help=text)
        action.add_argument("account", metavar="ACCOUNT", help=ACCOUNT_HELP)
    move = actions.add_parser("move", parents=[common], help="home an account elsewhere")
    move.add_argument("account", metavar="ACCOUNT", help=ACCOUNT_HELP)
    move.add_argument("--endpoint", required=True, help="the URL it is homed on from now")
    limit = actions.add_parser(
        "limit", parents=[common], help="set an account's rate limit (events per second)"
    )
    limit.add_argument("account", metavar="ACCOUNT", help=ACCOUNT_HELP)
    limit.add_argument(
        "--rate", required=True, help="events per second; 0: unlimited; 'default': the server's"
    )
    limit.add_argument("--burst", help="events it may send at once (default: one second's worth)")
    for action in actions.choices.values():
        action.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Do ``args.action`` on the account book (the data directory's, or with ``--store
    nats://...`` the cluster's) and print the result."""
    from qlevents.accounts import ACCOUNTS_FILE, ACTIVE, DISABLED, AccountBook
    from qlevents.datadir import require
    from qlevents.store.factory import build_account_book

    action = args.action
    settings = store_settings(args)
    book: AccountBookLike
    if settings.is_nats:  # the cluster's book; the data directory plays no part
        book = build_account_book(settings, data_dir_path(args), readonly=action in READ_ONLY)
    elif action == "add":  # the first account may come before the first serve
        book = AccountBook(data_dir_path(args))
    else:  # without a book there is no account to change: nothing to create either
        data_dir = data_dir_path(args)
        no_book = not (require(data_dir) / ACCOUNTS_FILE).exists()
        book = AccountBook(data_dir, readonly=action in READ_ONLY or no_book)
    try:
        local = _local_endpoint(args, book)
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
            account = find(book, args.account)
        elif action in ("disable", "enable"):
            key = find(book, args.account).client_key
            account = book.set_status(key, DISABLED if action == "disable" else ACTIVE)
        elif action == "limit":
            rate = None if args.rate == "default" else _number(args.rate, "--rate")
            burst = None if args.burst is None else _number(args.burst, "--burst")
            account = book.set_limit(find(book, args.account).client_key, rate, burst)
        else:  # move
            account = book.move(find(book, args.account).client_key, args.endpoint, local)
        _print_account(account.as_dict(local), args.json)
        return 0
    finally:
        book.close()


def find(book: AccountBookLike, typed: str) -> Account:
    """The account whose client key, else whose name, is ``typed``; a name that several
    accounts share is refused with their keys."""
    accounts = book.all()
    for account in accounts:
        if account.client_key == typed:
            return account
    name = typed.strip()
    named = [a for a in accounts if a.name == name] or [
        a for a in accounts if a.name.casefold() == name.casefold()
    ]
    if len(named) == 1:
        return named[0]
    if not named:
        raise CommandError(
            f"no account has the client key or name {typed!r} ('qlevents accounts list' shows them)"
        )
    candidates = "".join(f"\n  {a.client_key}  {a.name}  ({a.status}, created {a.created_at})"
                         for a in named)  # fmt: skip
    raise CommandError(
        f"{len(named)} accounts are named {typed!r}; give the client key of one:{candidates}"
    )


def _local_endpoint(args: argparse.Namespace, book: Any) -> str:
    explicit = getattr(args, "endpoint_url", None) or os.environ.get("QLEVENTS_ENDPOINT_URL")
    return str(explicit or book.local_endpoint(default_endpoint("127.0.0.1", 8080)))


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
