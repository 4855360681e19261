"""Two ingest nodes on one NATS server sharing an account and an operator, for the tests
of the dashboard on a cluster (tests/test_cluster_dashboard.py, tests/ui)."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from qlevents.accounts_jetstream import JetStreamAccountBook
from qlevents.users import OPERATOR
from qlevents.users_jetstream import JetStreamUserStore
from tests.cluster import NatsCluster
from tests.support import RunningServer, free_port

PASSWORD = "a long test password"
OPERATOR_EMAIL = "ops@qlevents.example"


@dataclass
class ClusterSite:
    nodes: list[RunningServer]
    account_id: str
    key: str


@contextmanager
def running_cluster_site(root: Path) -> Iterator[ClusterSite]:
    """One NATS server, an account and an operator in its bucket, two ingest nodes."""
    cluster = NatsCluster(root / "nats", 1).start()
    prefix = f"t{uuid.uuid4().hex[:12]}"
    nodes: list[RunningServer] = []
    try:
        book = JetStreamAccountBook(cluster.url.split(","), prefix=prefix)
        try:
            account = book.add("shop")
            JetStreamUserStore(book).add(OPERATOR_EMAIL, PASSWORD, OPERATOR)
        finally:
            book.close()
        options = ["--store", cluster.url, "--nats-prefix", prefix,
                   "--nats-max-bytes", str(64 << 20),
                   "--activity-flush-seconds", "0.2", "--log-level", "warning"]  # fmt: skip
        for name in ("node-1", "node-2"):
            nodes.append(
                RunningServer(root / name, free_port(), options, root / f"{name}.log", demo=False)
            )
            nodes[-1].start(timeout=60)
        yield ClusterSite(nodes, account.id, account.client_key)
    finally:
        for node in nodes:
            if node.process is not None:
                node.kill()
        cluster.stop()


def eventually(condition: Callable[[], Any], within: float = 10.0) -> Any:
    """``condition()`` once it is true, polled until ``within`` seconds; else it fails."""
    deadline = time.monotonic() + within
    while not (found := condition()):
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.05)
    return found


def sign_in(url: str, email: str) -> httpx.Client:
    """A client signed in with the form, as a browser would (CSRF cookie and all); its
    ``csrf`` header holds the session's token for posts."""
    client = httpx.Client(base_url=url, follow_redirects=False)
    form = client.get("/ui/signin").text
    token = re.search(r'name="csrf" value="([^"]+)"', form)
    assert token is not None
    answer = client.post(
        "/ui/signin", data={"csrf": token.group(1), "email": email, "password": PASSWORD}
    )
    if answer.status_code != 303 or answer.headers["location"] != "/ui/":
        client.close()
        raise AssertionError(f"not signed in: {answer.status_code}")
    page = client.get("/ui/", follow_redirects=True).text
    csrf = re.search(r'name="csrf" value="([^"]+)"', page)
    assert csrf is not None
    client.headers["x-csrf-token"] = csrf.group(1)
    return client
