"""Dashboard users: argon2id passwords, roles, disabling, sessions; and their CLI."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from qlevents.accounts import AccountBook
from qlevents.cli import main
from qlevents.users import (
    MEMBER,
    OPERATOR,
    UserError,
    UserStore,
    hash_password,
    password_matches,
)
from tests.support import RunningServer

PASSWORD = "correct horse battery"


@pytest.fixture
def users(tmp_path: Path) -> Iterator[UserStore]:
    store = UserStore(tmp_path)
    yield store
    store.close()


class TestUsers:
    def test_password_is_stored_as_argon2id(self, users: UserStore, tmp_path: Path) -> None:
        """The book holds an argon2id hash, never the password."""
        users.add("Ann@Shop.example", PASSWORD, OPERATOR)
        raw = b"".join(p.read_bytes() for p in tmp_path.glob("accounts.sqlite3*"))
        assert PASSWORD.encode() not in raw
        assert b"$argon2id$" in raw

    @pytest.mark.parametrize(
        ("fast", "parameters"), [("", "m=65536,t=3,p=4"), ("1", "m=1024,t=1,p=1")]
    )
    def test_only_the_test_suites_variable_makes_hashes_cheap(
        self, fast: str, parameters: str
    ) -> None:
        """Without QLEVENTS_TEST_FAST_PASSWORD_HASHES, argon2-cffi's defaults (RFC 9106's
        low-memory profile); with it (this suite sets it), 1 MiB and one pass. A hash
        carries its parameters: each verifies the other's."""
        here = hash_password(PASSWORD)  # this process has the suite's variable
        script = (
            "import sys\n"
            "from qlevents.users import hash_password, password_matches\n"
            "print(hash_password(sys.argv[2]), password_matches(sys.argv[1], sys.argv[2]))"
        )
        environment = {**os.environ, "QLEVENTS_TEST_FAST_PASSWORD_HASHES": fast}
        done = subprocess.run(
            [sys.executable, "-c", script, here, PASSWORD],
            env=environment,
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        there, matched = done.stdout.split()
        assert there.startswith(f"$argon2id$v=19${parameters}$")
        assert matched == "True"
        assert password_matches(there, PASSWORD)
        assert not password_matches(there, PASSWORD + "x")

    def test_a_server_with_cheap_hashes_says_so(self, shared_server: RunningServer) -> None:
        """qlevents serve warns when the test suite's variable is set."""
        assert "QLEVENTS_TEST_FAST_PASSWORD_HASHES=1: dashboard passwords" in shared_server.log()

    def test_authenticate_checks_the_password(self, users: UserStore) -> None:
        """Right password: the user (email case-insensitive); wrong or unknown: None."""
        users.add("ann@shop.example", PASSWORD, MEMBER, "acc_1")
        assert users.authenticate("ANN@shop.example", PASSWORD) == users.get("ann@shop.example")
        assert users.authenticate("ann@shop.example", PASSWORD + "x") is None
        assert users.authenticate("bob@shop.example", PASSWORD) is None

    def test_disabled_user_cannot_sign_in_and_loses_sessions(self, users: UserStore) -> None:
        """Disabling ends every session and refuses the password."""
        user = users.add("ann@shop.example", PASSWORD, OPERATOR)
        token, _ = users.open_session(user)
        users.disable(user.email)
        assert users.session(token) is None
        assert users.authenticate(user.email, PASSWORD) is None

    def test_new_password_ends_sessions(self, users: UserStore) -> None:
        """passwd signs the user out everywhere; the new password works."""
        user = users.add("ann@shop.example", PASSWORD, OPERATOR)
        token, session = users.open_session(user)
        assert users.session(token) == session
        users.set_password(user.email, "another long password")
        assert users.session(token) is None
        assert users.authenticate(user.email, "another long password") is not None

    @pytest.mark.parametrize(
        ("role", "account", "message"),
        [
            (MEMBER, None, "one account"),
            (OPERATOR, "acc_1", "one account"),
        ],
    )
    def test_role_and_account_must_agree(
        self, users: UserStore, role: str, account: str | None, message: str
    ) -> None:
        """A member has exactly one account, an operator none."""
        with pytest.raises(UserError, match=message):
            users.add("ann@shop.example", PASSWORD, role, account)  # type: ignore[arg-type]

    def test_short_password_and_bad_email_are_refused(self, users: UserStore) -> None:
        """Passwords of at least 10 characters; an email needs an @ and a domain."""
        with pytest.raises(UserError, match="10 to"):
            users.add("ann@shop.example", "short", OPERATOR)
        with pytest.raises(UserError, match="not an email"):
            users.add("ann", PASSWORD, OPERATOR)


class TestUsersCommand:
    def _run(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *argv: str,
        stdin: str = "",
    ) -> tuple[int, str, str]:  # fmt: skip
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    def test_add_member_list_disable_passwd(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The four commands, end to end, against a data directory."""
        book = AccountBook(tmp_path)
        account = book.add("shop")
        book.close()
        data = ["--data-dir", str(tmp_path)]
        code, out, _ = self._run(monkeypatch, capsys, "users", "add", "ann@shop.example",
                                 "--account", account.client_key, "--password-stdin", *data,
                                 stdin=PASSWORD + "\n")  # fmt: skip
        assert code == 0 and account.id in out
        code, out, _ = self._run(monkeypatch, capsys, "users", "list", "--json", *data)
        assert json.loads(out) == [{"email": "ann@shop.example", "role": "member",
                                    "account_id": account.id, "status": "active"}]  # fmt: skip
        code, _, _ = self._run(monkeypatch, capsys, "users", "passwd", "ann@shop.example",
                               "--password-stdin", *data, stdin="another password\n")  # fmt: skip
        assert code == 0
        users = UserStore(tmp_path)
        assert users.authenticate("ann@shop.example", "another password") is not None
        users.close()
        code, out, _ = self._run(monkeypatch, capsys, "users", "disable", "ann@shop.example", *data)
        assert code == 0 and "disabled" in out

    def test_password_must_come_from_stdin(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Without --password-stdin: an error, and no user."""
        code, _, err = self._run(monkeypatch, capsys, "users", "add", "ann@shop.example",
                                 "--operator", "--data-dir", str(tmp_path))  # fmt: skip
        assert code != 0 and "--password-stdin" in err

    def test_unknown_account_key_is_refused(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--account with a key no account has: an error naming the masked key."""
        code, _, err = self._run(monkeypatch, capsys, "users", "add", "ann@shop.example",
                                 "--account", "qlk_nobody_here", "--password-stdin",
                                 "--data-dir", str(tmp_path), stdin=PASSWORD + "\n")  # fmt: skip
        assert code == 1 and "no account" in err and "qlk_nobody_here" not in err
