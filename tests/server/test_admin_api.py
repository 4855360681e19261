"""The admin API: account operations over HTTP behind a bearer token.

Tests that need no token or read the whole list of accounts start their own server; the
others use the session's shared server, on accounts of their own.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx

from tests.support import ADMIN_TOKEN, RunningServer, get, post, view

AUTH = {"authorization": f"Bearer {ADMIN_TOKEN}"}


class TestAccess:
    def test_disabled_without_a_token(self, serve: Callable[..., RunningServer]) -> None:
        """With no admin token configured, the admin routes do not exist (404)."""
        server = serve()
        answer = httpx.get(f"{server.url}/admin/accounts", headers=AUTH)
        assert answer.status_code == 404

    def test_wrong_or_missing_token_is_401(self, shared_server: RunningServer) -> None:
        """A missing, wrong or non-bearer credential is refused."""
        for headers in ({}, {"authorization": "Bearer nope"}, {"authorization": ADMIN_TOKEN}):
            answer = get(f"{shared_server.url}/admin/accounts", headers=headers)
            assert answer.status_code == 401
            assert answer.json()["code"] == "unauthorized"

    def test_a_client_key_is_not_an_admin_credential(
        self, shared_server: RunningServer, account: str
    ) -> None:
        """An ingestion client key never opens the admin API."""
        headers = {"authorization": f"Bearer {account}"}
        assert get(f"{shared_server.url}/admin/accounts", headers=headers).status_code == 401


class TestAccountOperations:
    def test_add_then_send_at_once(self, shared_server: RunningServer) -> None:
        """An account created over HTTP is usable immediately, homed on this endpoint."""
        server = shared_server
        answer = post(f"{server.url}/admin/accounts", json={"name": "shop"}, headers=AUTH)
        assert answer.status_code == 201
        account = answer.json()
        assert account["status"] == "active" and account["endpoint"] == server.events_url
        assert account["client_key"].startswith("qlk_") and len(account["client_key"]) >= 32
        assert server.post([view(account["client_key"])]).json()["processed"]

    def test_list_and_show(self, server: RunningServer) -> None:
        """The list holds every account; show returns one by key; unknown key is 404."""
        accounts = httpx.get(f"{server.url}/admin/accounts", headers=AUTH).json()["accounts"]
        assert [a["name"] for a in accounts] == ["demo"]
        key = accounts[0]["client_key"]
        shown = httpx.get(f"{server.url}/admin/accounts/{key}", headers=AUTH).json()
        assert shown == accounts[0]
        missing = httpx.get(f"{server.url}/admin/accounts/qlk_missing", headers=AUTH)
        assert missing.status_code == 404

    def test_disable_and_enable_take_effect_at_once(
        self, shared_server: RunningServer, account: str
    ) -> None:
        """Disabling refuses the key's events on the next request; enabling accepts them again."""
        server, key = shared_server, account
        disabled = post(f"{server.url}/admin/accounts/{key}/disable", headers=AUTH)
        assert disabled.json()["status"] == "disabled"
        assert server.post([view(key)]).json()["errors"][0]["code"] == "disabled_client_key"
        post(f"{server.url}/admin/accounts/{key}/enable", headers=AUTH)
        assert server.post([view(key)]).json()["processed"]

    def test_move_sends_clients_elsewhere(self, shared_server: RunningServer, account: str) -> None:
        """A moved account's events fail with wrong_endpoint naming the new home."""
        server, key = shared_server, account
        target = "https://evt-us.example.com/events"
        moved = post(
            f"{server.url}/admin/accounts/{key}/move", json={"endpoint": target}, headers=AUTH
        )
        assert moved.json()["endpoint"] == target
        [error] = server.post([view(key)]).json()["errors"]
        assert (error["code"], error["endpoint"]) == ("wrong_endpoint", target)
        back = post(
            f"{server.url}/admin/accounts/{key}/move",
            json={"endpoint": server.events_url},
            headers=AUTH,
        )
        assert back.json()["endpoint"] == server.events_url
        assert server.post([view(key)]).json()["processed"]

    def test_bad_bodies_are_400(self, shared_server: RunningServer) -> None:
        """A malformed body or a bad URL is a 400 with a message."""
        url = f"{shared_server.url}/admin/accounts"
        assert post(url, content=b"{", headers=AUTH).status_code == 400
        assert post(url, json={"nom": "x"}, headers=AUTH).status_code == 400
        bad_url = post(url, json={"name": "x", "endpoint": "ftp://x"}, headers=AUTH)
        assert bad_url.status_code == 400 and "http(s)" in bad_url.json()["message"]
