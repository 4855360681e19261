"""Key rotation: a new key, the old one working for a grace period, then refused by name."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from qlevents.accounts import AccountBook, AccountError, PreviousKey, key_problem

LOCAL = "http://127.0.0.1:8080/events"


@pytest.fixture
def book(tmp_path: Path) -> Iterator[AccountBook]:
    opened = AccountBook(tmp_path)
    yield opened
    opened.close()


class TestRotation:
    def test_rotation_gives_a_new_key_and_keeps_the_account_id(self, book: AccountBook) -> None:
        """The account keeps its id and name; only its key changes."""
        account = book.add("shop")
        rotated, old = book.rotate_key(account.client_key, grace_seconds=3600)
        assert rotated.client_key != account.client_key
        assert (rotated.id, rotated.name) == (account.id, account.name)
        assert old.client_key == account.client_key
        assert old.expires_at == pytest.approx(old.replaced_at + 3600)

    def test_old_key_works_during_its_grace_period_only(self, book: AccountBook) -> None:
        """working_keys maps the old key to the account until it expires."""
        account = book.add("shop")
        rotated, old = book.rotate_key(account.client_key, grace_seconds=60)
        working = book.working_keys(now=old.replaced_at + 1)
        assert working[account.client_key] == rotated
        assert working[rotated.client_key] == rotated
        assert account.client_key not in book.working_keys(now=old.expires_at)

    def test_expire_key_ends_the_grace_period_now(self, book: AccountBook) -> None:
        """An operator can stop an old key before its grace period ends."""
        account = book.add("shop")
        book.rotate_key(account.client_key)
        ended = book.expire_key(account.client_key)
        assert ended.expires_at <= time.time()
        assert account.client_key not in book.working_keys()

    def test_grace_period_out_of_bounds_is_refused(self, book: AccountBook) -> None:
        """A negative or over-30-day grace period is an error, and nothing changes."""
        account = book.add("shop")
        with pytest.raises(AccountError, match="grace period"):
            book.rotate_key(account.client_key, grace_seconds=-1)
        assert book.get(account.client_key) == account

    def test_accounts_made_before_ids_get_one(self, tmp_path: Path) -> None:
        """A book from before rotation gets an id for every account when opened."""
        import sqlite3

        conn = sqlite3.connect(tmp_path / "accounts.sqlite3")
        conn.execute(
            "CREATE TABLE accounts (client_key TEXT PRIMARY KEY, name TEXT NOT NULL, status TEXT"
            " NOT NULL, endpoint TEXT, created_at TEXT NOT NULL)"
        )
        conn.execute("INSERT INTO accounts VALUES ('qlk_old', 'old', 'active', NULL, 'x')")
        conn.commit()
        conn.close()
        book = AccountBook(tmp_path)
        try:
            assert book.get("qlk_old").id.startswith("acc_")
        finally:
            book.close()

    def test_key_uses_keep_the_latest_time(self, book: AccountBook) -> None:
        """Recording an earlier use after a later one keeps the later."""
        book.record_key_uses({"qlk_a": 200.0})
        book.record_key_uses({"qlk_a": 100.0, "qlk_b": 50.0})
        assert book.key_uses(["qlk_a", "qlk_b", "qlk_c"]) == {"qlk_a": 200.0, "qlk_b": 50.0}


class TestKeyProblem:
    def test_expired_key_is_refused_with_its_own_code(self, book: AccountBook) -> None:
        """After the grace period: expired_client_key, naming when and where to look."""
        account = book.add("shop")
        _, old = book.rotate_key(account.client_key, grace_seconds=10)
        previous = {old.client_key: old}
        problem = key_problem(old.client_key, {}, previous, LOCAL, now=old.expires_at)
        assert problem is not None
        assert problem.code == "expired_client_key"
        assert "stopped working on" in problem.message
        assert "Settings > Integration Settings" in problem.message

    def test_expired_key_is_refused_even_by_a_stale_snapshot(self, book: AccountBook) -> None:
        """A snapshot taken before the expiry still maps the key: time decides."""
        account = book.add("shop")
        _, old = book.rotate_key(account.client_key, grace_seconds=10)
        stale = book.working_keys(now=old.replaced_at)
        problem = key_problem(old.client_key, stale, {old.client_key: old}, LOCAL, old.expires_at)
        assert problem is not None and problem.code == "expired_client_key"

    def test_key_in_grace_is_accepted(self, book: AccountBook) -> None:
        """No problem for a replaced key before it expires."""
        account = book.add("shop")
        _, old = book.rotate_key(account.client_key, grace_seconds=10)
        working = book.working_keys(now=old.replaced_at)
        previous = {old.client_key: old}
        assert key_problem(old.client_key, working, previous, LOCAL, old.replaced_at + 1) is None

    @pytest.mark.parametrize(
        ("status", "endpoint", "code"),
        [
            ("disabled", None, "disabled_client_key"),
            ("active", "https://eu.example/events", "wrong_endpoint"),
        ],
    )
    def test_account_checks_match_the_api(
        self, book: AccountBook, status: str, endpoint: str | None, code: str
    ) -> None:
        """Disabled and wrong-endpoint keys get the API's codes; wrong_endpoint names the URL."""
        account = book.add("shop", endpoint)
        if status == "disabled":
            account = book.set_status(account.client_key, "disabled")
        problem = key_problem(
            account.client_key, {account.client_key: account}, {}, LOCAL, time.time()
        )
        assert problem is not None
        assert (problem.code, problem.endpoint) == (code, endpoint)

    def test_unknown_key(self) -> None:
        """A key nobody has: unknown_client_key."""
        unknown = PreviousKey("qlk_x", "acc_x", 0.0, 1.0)
        problem = key_problem("qlk_y", {}, {"qlk_x": unknown}, LOCAL, 5.0)
        assert problem is not None and problem.code == "unknown_client_key"
