"""An account's rate limit on a cluster (docs/cluster.md, "Rate limits with N nodes"): with
``--cluster-nodes 2`` each of two ingest nodes admits half of the account's burst, the two
together the whole of it."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from qlevents.accounts_jetstream import JetStreamAccountBook
from tests.cluster import NatsCluster
from tests.support import RunningServer, view
from tests.test_cluster_faults_http import ingest_node

BURST = 10
#: Events per second: over the test's few seconds the buckets refill by far less than one
#: event, so what each node admits is its share of the burst, whatever the machine's speed.
RATE = 0.001


def admitted(node: RunningServer, key: str) -> int:
    """1-event requests answered 200 before the first 429 (which must say when to retry)."""
    for count in range(BURST + 2):
        answer = node.post([view(key, product_id=f"{node.port}-{count}")], timeout=10)
        if answer.status_code == 429:
            assert int(answer.headers["retry-after"]) > 0
            return count
        assert answer.status_code == 200, answer.text
    raise AssertionError(f"{node.url} admitted more than {BURST + 1} events")


def test_two_nodes_each_admit_half_of_an_accounts_burst(tmp_path: Path) -> None:
    """--cluster-nodes 2: each node admits burst / 2 of an account's events, the two nodes
    together its burst (no more, no less)."""
    cluster = NatsCluster(tmp_path / "nats", 1).start()
    prefix = f"t{uuid.uuid4().hex[:10]}"
    nodes: list[RunningServer] = []
    try:
        for n in (1, 2):
            nodes.append(ingest_node(tmp_path, f"ingest-{n}", cluster, prefix))
        book = JetStreamAccountBook(cluster.url.split(","), prefix=prefix)
        try:
            key = book.add("shop").client_key
            book.set_limit(key, RATE, BURST)
        finally:
            book.close()
        time.sleep(0.5)  # the nodes' watches bring the account (~ms); directories poll 0.1 s
        counts = [admitted(node, key) for node in nodes]
    finally:
        for node in nodes:
            node.stop()
        cluster.stop()
    assert counts == [BURST // 2, BURST // 2]
