"""``qlevents users``: the dashboard's users, from the command line.

qlevents users add EMAIL (--account KEY | --operator) --password-stdin
qlevents users list [--json]
qlevents users disable EMAIL
qlevents users passwd EMAIL --password-stdin

Each takes ``--store nats://…`` (or QLEVENTS_STORE): the users every node of that cluster
shares, in its account book's bucket, instead of the data directory's.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from qlevents.cli.common import (
    Commands,
    add_commands,
    data_dir_option,
    data_dir_path,
    store_option,
    store_settings,
)
from qlevents.cli.errors import CommandError

if TYPE_CHECKING:
    from qlevents.accounts import AccountBookLike


def _password(args: argparse.Namespace) -> str:
    if not args.password_stdin:
        raise CommandError(
            "give the password on standard input with --password-stdin (never as an argument:"
            " it would be in the shell's history and the process list)",
            exit_code=2,
        )
    # One line; the line break a shell or `echo` adds is not part of it.
    return sys.stdin.readline().rstrip("\r\n")


def run(args: argparse.Namespace) -> int:
    """Run ``qlevents users ACTION``."""
    try:
        from qlevents.accounts import AccountBook, AccountError
        from qlevents.store.factory import build_user_store
        from qlevents.users import MEMBER, OPERATOR, UserError
        from qlevents.users_jetstream import JetStreamUserStore
    except ImportError as exc:
        raise CommandError(
            f"'qlevents users' needs the server extra ({exc.name} is missing):"
            " pip install 'qlevents[server]'"
        ) from exc
    users = build_user_store(store_settings(args), data_dir_path(args))
    try:
        action = args.action
        if action == "add":
            account_id = None
            if args.account is not None:
                # On a cluster the users' own book (its bucket); else the data directory's.
                shared = isinstance(users, JetStreamUserStore)
                book: AccountBookLike = (
                    users.book
                    if isinstance(users, JetStreamUserStore)
                    else AccountBook(data_dir_path(args))
                )
                try:
                    account_id = book.get(args.account).id
                except AccountError as exc:
                    raise CommandError(str(exc)) from None
                finally:
                    if not shared:
                        book.close()
            if args.operator:
                user = users.add(args.email, _password(args), OPERATOR)
            else:
                user = users.add(args.email, _password(args), MEMBER, account_id)
        elif action == "list":
            listed = [_shown(u) for u in users.all()]
            if args.json:
                print(json.dumps(listed, indent=2))
            elif not listed:
                print("No users yet. Add one: qlevents users add EMAIL --operator --password-stdin")
            else:
                print(f"{'EMAIL':36} {'ROLE':9} {'ACCOUNT':17} STATUS")
                for u in listed:
                    print(
                        f"{u['email']:36} {u['role']:9} {u['account_id'] or '-':17} {u['status']}"
                    )
            return 0
        elif action == "disable":
            user = users.disable(args.email)
        else:  # passwd
            user = users.set_password(args.email, _password(args))
        shown = _shown(user)
        print(json.dumps(shown) if getattr(args, "json", False) else
              f"{shown['email']}: {shown['role']}"
              + (f" of {shown['account_id']}" if shown["account_id"] else "")
              + f", {shown['status']}")  # fmt: skip
        return 0
    except UserError as exc:
        raise CommandError(str(exc)) from None
    finally:
        users.close()


def _shown(user: Any) -> dict[str, Any]:
    return {
        "email": user.email,
        "role": user.role,
        "account_id": user.account_id,
        "status": "disabled" if user.disabled else "active",
    }


def add_parser(commands: Commands) -> None:
    """Add ``users`` and its subcommands."""
    users = commands.add_parser("users", help="manage the dashboard's users")
    actions = add_commands(users, dest="action")
    common = data_dir_option()
    store_option(common)
    common.add_argument("--json", action="store_true", help="machine-readable output")
    add = actions.add_parser("add", parents=[common], help="add a user")
    add.add_argument("email", metavar="EMAIL", help="the user's email address (their sign-in)")
    role = add.add_mutually_exclusive_group(required=True)
    role.add_argument("--account", metavar="KEY", help="a member of the account with this key")
    role.add_argument("--operator", action="store_true", help="an operator (every account)")
    add.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    actions.add_parser("list", parents=[common], help="list users")
    disable = actions.add_parser("disable", parents=[common], help="stop a user signing in")
    disable.add_argument("email", metavar="EMAIL", help="the user's email address")
    passwd = actions.add_parser("passwd", parents=[common], help="set a user's password")
    passwd.add_argument("email", metavar="EMAIL", help="the user's email address")
    passwd.add_argument(
        "--password-stdin", action="store_true", help="read the password from stdin"
    )
    for action in (add, disable, passwd, actions.choices["list"]):
        action.set_defaults(handler=run)
