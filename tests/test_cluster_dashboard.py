"""The dashboard on a cluster: two ingest nodes on one NATS server share their activity
(counts, failed events with their errors, the live feed), their users and their sessions,
whatever node answers; a restarted node counts nothing twice."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.cluster_site import (
    OPERATOR_EMAIL,
    PASSWORD,
    ClusterSite,
    eventually,
    running_cluster_site,
    sign_in,
)
from tests.support import RunningServer, view


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterSite]:
    with running_cluster_site(tmp_path_factory.mktemp("cluster-dashboard")) as started:
        yield started


def _counts(client: httpx.Client, account_id: str) -> tuple[int, int]:
    chart = client.get(f"/ui/a/{account_id}/chart.json?range=1h").json()
    return sum(chart["processed"]), sum(chart["failed"])


def _send(node: RunningServer, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    answer = httpx.post(node.events_url, json=events)
    assert answer.status_code == 200, answer.text
    errors: list[dict[str, Any]] = answer.json().get("errors", [])
    return errors


def test_events_sent_to_either_node_show_on_both_and_a_restart_counts_nothing_twice(
    site: ClusterSite,
) -> None:
    """Events to node 1 and node 2: both nodes' overview counts, failed events (as sent,
    with the exact errors) and live feed show all of them; node 2 restarted shows the same
    counts, then exactly one more for one more event."""
    mark = uuid.uuid4().hex[:6]
    sent = {1: [f"{mark}-1-{i}" for i in range(3)], 2: [f"{mark}-2-{i}" for i in range(2)]}
    errors: list[Any] = []
    for number, node in enumerate(site.nodes, start=1):
        bad = view(site.key, product_id=f"{mark}-bad-{number}", price="free")
        errors += _send(node, [*(view(site.key, product_id=p) for p in sent[number]), bad])
    assert len(errors) == 2
    clients = [sign_in(node.url, OPERATOR_EMAIL) for node in site.nodes]
    try:
        for client in clients:
            eventually(lambda c=client: _counts(c, site.account_id) == (5, 2))
            failed = [
                json.loads(line)
                for line in client.get(f"/ui/a/{site.account_id}/failed.ndjson").text.splitlines()
            ]
            assert sorted(f["event"]["product_id"] for f in failed) == [
                f"{mark}-bad-1",
                f"{mark}-bad-2",
            ]
            shown = [
                e
                for f in sorted(failed, key=lambda f: f["event"]["product_id"])
                for e in f["errors"]
            ]
            assert [(e["code"], e["field"], e["message"]) for e in shown] == [
                (e["code"], e["field"], e["message"]) for e in errors
            ]
            live = client.get(f"/ui/a/{site.account_id}/live/rows").text
            for product in [*sent[1], *sent[2], f"{mark}-bad-1", f"{mark}-bad-2"]:
                assert product in live
        clients[1].close()
        site.nodes[1].restart()
        clients[1] = sign_in(site.nodes[1].url, OPERATOR_EMAIL)
        assert _counts(clients[1], site.account_id) == (5, 2)
        _send(site.nodes[0], [view(site.key, product_id=f"{mark}-after")])
        eventually(lambda: _counts(clients[1], site.account_id) == (6, 2))
        assert f"{mark}-after" in clients[1].get(f"/ui/a/{site.account_id}/live/rows").text
        page = clients[1].get(f"/ui/a/{site.account_id}/live").text
        assert "answered by another node of the cluster, a second or two later" in page
    finally:
        for client in clients:
            client.close()


def test_users_and_sessions_hold_on_every_node(site: ClusterSite) -> None:
    """A member created on node 1's Users page signs in on node 2; node 1's session cookie
    opens pages on node 2; signing out on node 1 ends it on node 2 too."""
    email = f"{uuid.uuid4().hex[:8]}@shop.example"
    first, second = (node.url for node in site.nodes)
    operator = sign_in(first, OPERATOR_EMAIL)
    try:
        added = operator.post(
            "/ui/users",
            data={"email": email, "password": PASSWORD, "account": site.account_id,
                  "csrf": operator.headers["x-csrf-token"]},
        )  # fmt: skip
        assert added.status_code == 200 and f"Added {email}" in added.text
        member = eventually(lambda: _try_sign_in(second, email))
        assert member.get(f"/ui/a/{site.account_id}/overview").status_code == 200
        member.close()
        elsewhere = httpx.Client(base_url=second, cookies=operator.cookies)
        assert elsewhere.get("/ui/accounts").status_code == 200
        out = operator.post("/ui/signout", data={"csrf": operator.headers["x-csrf-token"]})
        assert out.status_code == 303
        eventually(lambda: elsewhere.get("/ui/accounts").status_code == 303)
        assert elsewhere.get("/ui/accounts").headers["location"] == "/ui/signin"
        elsewhere.close()
    finally:
        operator.close()


def _try_sign_in(url: str, email: str) -> httpx.Client | None:
    try:
        return sign_in(url, email)
    except AssertionError:
        return None
