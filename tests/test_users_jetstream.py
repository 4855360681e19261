"""The dashboard's users and sessions on a cluster: entries of the account book's bucket,
shared by every node (here: two books on one bucket, as two nodes hold them)."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from qlevents.accounts_jetstream import JetStreamAccountBook
from qlevents.cli import main
from qlevents.store.factory import StoreSettings, build_user_store
from qlevents.users import MEMBER, OPERATOR, UserError
from qlevents.users_jetstream import JetStreamUserStore
from tests.cluster import NatsCluster, module_cluster
from tests.support import holds_within

PASSWORD = "correct horse battery"


nats_cluster = module_cluster(1)


@pytest.fixture
def nodes(nats_cluster: NatsCluster) -> Iterator[tuple[JetStreamUserStore, JetStreamUserStore]]:
    """The users of two nodes on a bucket of the test's own."""
    prefix = f"t{uuid.uuid4().hex[:12]}"
    books = [JetStreamAccountBook(nats_cluster.url.split(","), prefix=prefix) for _ in range(2)]
    yield JetStreamUserStore(books[0]), JetStreamUserStore(books[1])
    for book in books:
        book.close()


def eventually(condition: Callable[[], bool], within: float = 2.0) -> bool:
    """Whether ``condition`` holds within ``within`` seconds (a watch brings a change)."""
    return holds_within(condition, within)


class TestSharedUsers:
    def test_a_user_added_on_one_node_signs_in_on_the_other(
        self, nodes: tuple[JetStreamUserStore, JetStreamUserStore]
    ) -> None:
        """Added on node 1: node 2 authenticates it (right password only), lists it."""
        first, second = nodes
        ann = first.add("Ann@Shop.example", PASSWORD, MEMBER, "acc_1")
        assert eventually(lambda: second.authenticate("ann@shop.example", PASSWORD) == ann)
        assert second.authenticate("ann@shop.example", PASSWORD + "x") is None
        assert second.authenticate("bob@shop.example", PASSWORD) is None
        assert [u.email for u in second.all()] == ["ann@shop.example"]

    def test_an_email_is_taken_once_across_nodes(
        self, nodes: tuple[JetStreamUserStore, JetStreamUserStore]
    ) -> None:
        """Adding the same email on the other node is refused, as on one machine."""
        first, second = nodes
        first.add("ann@shop.example", PASSWORD, OPERATOR)
        with pytest.raises(UserError, match="exists already"):
            second.add("ANN@shop.example", PASSWORD, OPERATOR)

    def test_a_session_opened_on_one_node_is_valid_on_the_other_until_signed_out(
        self, nodes: tuple[JetStreamUserStore, JetStreamUserStore]
    ) -> None:
        """At once on node 2 (read from the cluster if its watch is behind); signing out on
        node 2 ends it on node 1."""
        first, second = nodes
        user = first.add("ann@shop.example", PASSWORD, OPERATOR)
        token, opened = first.open_session(user)
        found = second.session(token)
        assert found is not None and (found.user, found.csrf) == (user, opened.csrf)
        second.close_session(token)
        assert second.session(token) is None
        assert eventually(lambda: first.session(token) is None)

    def test_disabling_a_user_ends_their_sessions_on_every_node(
        self, nodes: tuple[JetStreamUserStore, JetStreamUserStore]
    ) -> None:
        """Disabled on node 2: node 1's session of theirs ends, and they cannot sign in."""
        first, second = nodes
        user = first.add("ann@shop.example", PASSWORD, MEMBER, "acc_1")
        token, _ = first.open_session(user)
        assert eventually(lambda: second.session(token) is not None)
        second.disable("ann@shop.example")
        assert eventually(lambda: first.session(token) is None)
        assert first.authenticate("ann@shop.example", PASSWORD) is None
        assert first.get("ann@shop.example").disabled

    def test_a_new_password_ends_sessions_and_replaces_the_old(
        self, nodes: tuple[JetStreamUserStore, JetStreamUserStore]
    ) -> None:
        """passwd on node 1: node 2 takes the new password only, the old session is gone."""
        first, second = nodes
        user = first.add("ann@shop.example", PASSWORD, OPERATOR)
        token, _ = second.open_session(user)
        first.set_password("ann@shop.example", "another password")
        assert eventually(lambda: second.session(token) is None)
        assert eventually(lambda: second.authenticate("ann@shop.example", "another password"))
        assert second.authenticate("ann@shop.example", PASSWORD) is None


class TestUsersCommandOnACluster:
    def test_users_added_with_store_nats_sign_in_on_the_servers_book(
        self,
        nats_cluster: NatsCluster,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """``qlevents users add/list --store nats://…``: the cluster's users, not the data
        directory's (which stays empty)."""
        prefix = f"t{uuid.uuid4().hex[:12]}"
        monkeypatch.setenv("QLEVENTS_NATS_PREFIX", prefix)
        book = JetStreamAccountBook(nats_cluster.url.split(","), prefix=prefix)
        try:
            account = book.add("shop")
            options = ["--store", nats_cluster.url, "--data-dir", str(tmp_path)]
            monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
            code = main(["users", "add", "ann@shop.example", "--account", account.client_key,
                         "--password-stdin", *options])  # fmt: skip
            assert code == 0, capsys.readouterr().err
            capsys.readouterr()
            assert main(["users", "list", "--json", *options]) == 0
            listed = json.loads(capsys.readouterr().out)
            assert listed == [{"email": "ann@shop.example", "role": "member",
                               "account_id": account.id, "status": "active"}]  # fmt: skip
            users = JetStreamUserStore(book)
            assert eventually(lambda: users.authenticate("ann@shop.example", PASSWORD) is not None)
            local = build_user_store(StoreSettings(), tmp_path)
            try:
                assert local.all() == []
            finally:
                local.close()
        finally:
            book.close()
