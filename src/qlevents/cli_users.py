"""``qlevents users``: the dashboard's users, from the command line.

    qlevents users add EMAIL (--account KEY | --operator) --password-stdin
    qlevents users list [--json]
    qlevents users disable EMAIL
    qlevents users passwd EMAIL --password-stdin

``add_parser(subcommands, parser_class)`` adds the command to the ``qlevents`` parser; each
handler returns an exit code or raises :class:`UsersCommandError` (exit 1, or 2 for usage).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from qlevents._exceptions import QleventsError


class UsersCommandError(QleventsError):
    """A refused users command; ``exit_code`` as the CLI's CommandError has it."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _data_dir(args: argparse.Namespace) -> Path:
    return Path(args.data_dir or os.environ.get("QLEVENTS_DATA_DIR") or "./qlevents-data")


def _password(args: argparse.Namespace) -> str:
    if not args.password_stdin:
        raise UsersCommandError(
            "give the password on standard input with --password-stdin (never as an argument:"
            " it would be in the shell's history and the process list)",
            exit_code=2,
        )
    # One line; the line break a shell or `echo` adds is not part of it.
    return sys.stdin.readline().rstrip("\r\n")


def cmd_users(args: argparse.Namespace) -> int:
    try:
        from qlevents.accounts import AccountBook, AccountError
        from qlevents.users import MEMBER, OPERATOR, UserError, UserStore
    except ImportError as exc:
        raise UsersCommandError(
            f"'qlevents users' needs the server extra ({exc.name} is missing):"
            " pip install 'qlevents[server]'"
        ) from exc
    users = UserStore(_data_dir(args))
    try:
        action = args.users_action
        if action == "add":
            account_id = None
            if args.account is not None:
                book = AccountBook(_data_dir(args))
                try:
                    account_id = book.get(args.account).id
                except AccountError as exc:
                    raise UsersCommandError(str(exc)) from None
                finally:
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
        raise UsersCommandError(str(exc)) from None
    finally:
        users.close()


def _shown(user: Any) -> dict[str, Any]:
    return {
        "email": user.email,
        "role": user.role,
        "account_id": user.account_id,
        "status": "disabled" if user.disabled else "active",
    }


def add_parser(subcommands: Any, parser_class: type[argparse.ArgumentParser]) -> None:
    """Add ``users`` to the ``qlevents`` command's subparsers."""
    users = subcommands.add_parser("users", help="manage the dashboard's users")
    actions = users.add_subparsers(dest="users_action", required=True, parser_class=parser_class)
    common = parser_class(add_help=False)
    common.add_argument("--data-dir", help="data directory (env QLEVENTS_DATA_DIR)")
    common.add_argument("--json", action="store_true", help="machine-readable output")
    add = actions.add_parser("add", parents=[common], help="add a user")
    add.add_argument("email")
    role = add.add_mutually_exclusive_group(required=True)
    role.add_argument("--account", metavar="KEY", help="a member of the account with this key")
    role.add_argument("--operator", action="store_true", help="an operator (every account)")
    add.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    actions.add_parser("list", parents=[common], help="list users")
    disable = actions.add_parser("disable", parents=[common], help="stop a user signing in")
    disable.add_argument("email")
    passwd = actions.add_parser("passwd", parents=[common], help="set a user's password")
    passwd.add_argument("email")
    passwd.add_argument(
        "--password-stdin", action="store_true", help="read the password from stdin"
    )
    users.set_defaults(handler=cmd_users)
