"""deploy/nginx/qlevents-cluster.conf, run for real: Debian's nginx (TLS, as in
test_nginx_tls.py) in front of two ingest nodes on a three-node NATS cluster. Requests are
spread over both nodes; one node killed -9, nginx sends the next requests to the other; the
stream holds each event once. Skips without nginx, except under CI=true."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from qlevents import Client
from tests.cluster import NatsCluster
from tests.deploy.test_nginx_tls import (
    MAIN,
    Certificates,
    make_certificates,
    tool,
    wait_listening,
)
from tests.support import RunningServer, free_port, metric, view
from tests.test_cluster_faults_http import add_account, ingest_node, leader_index, stored_marks

SITE = Path(__file__).parents[2] / "deploy" / "nginx" / "qlevents-cluster.conf"


def site_for(port: int, nodes: list[RunningServer], certificates: Certificates) -> str:
    """The shipped file with this test's addresses and certificate."""
    site = SITE.read_text()
    replacements = {
        "    listen 443 ssl;\n": f"    listen 127.0.0.1:{port} ssl;\n",
        "    listen [::]:443 ssl;\n": "",
        "10.0.0.11:8080": f"127.0.0.1:{nodes[0].port}",
        "10.0.0.12:8080": f"127.0.0.1:{nodes[1].port}",
        "/etc/ssl/qlevents/fullchain.pem": str(certificates.certificate),
        "/etc/ssl/qlevents/privkey.pem": str(certificates.key),
    }
    for old, new in replacements.items():
        assert old in site, f"{SITE} no longer has {old!r}: this test must learn its new shape"
        site = site.replace(old, new)
    return site


@contextmanager
def running_nginx(prefix: Path, site: str) -> Iterator[int]:
    """nginx (not a daemon) serving ``site`` from ``prefix``; yields its port."""
    prefix.mkdir()
    (prefix / "qlevents.conf").write_text(site)
    # As root, workers would switch to 'nobody', who cannot read pytest's temporary directory.
    user = "user root;" if os.geteuid() == 0 else ""
    (prefix / "nginx.conf").write_text(MAIN.format(prefix=prefix, user=user))
    command = [tool("nginx"), "-p", str(prefix), "-c", str(prefix / "nginx.conf"),
               "-e", str(prefix / "error.log")]  # fmt: skip
    check = subprocess.run([*command, "-t"], check=False, capture_output=True, text=True)
    assert check.returncode == 0, f"nginx -t refused the site file:\n{check.stderr}"
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    port = int(site.split("listen 127.0.0.1:", 1)[1].split(" ", 1)[0])
    try:
        wait_listening(process, port, prefix / "error.log")
        yield port
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(20)


def test_requests_reach_both_nodes_and_go_on_when_one_is_killed(tmp_path: Path) -> None:
    """Through nginx: requests processed on both ingest nodes; one node killed -9, the next
    requests still answer 200 (through the other); each event is in the stream once."""
    certificates = make_certificates(tmp_path / "tls")
    cluster = NatsCluster(tmp_path / "nats", 3).start()
    prefix = f"t{uuid.uuid4().hex[:10]}"
    nodes: list[RunningServer] = []
    try:
        for n in (1, 2):
            nodes.append(ingest_node(tmp_path, f"ingest-{n}", cluster, prefix))
        key = add_account(cluster, prefix)
        site = site_for(free_port(), nodes, certificates)
        tls = ssl.create_default_context(cafile=str(certificates.ca))
        with running_nginx(tmp_path / "nginx", site) as port, httpx.Client(verify=tls) as http:

            def send(mark: str) -> int:
                body = [view(key, product_id=mark)]
                return http.post(f"https://127.0.0.1:{port}/events", json=body).status_code

            assert [send(f"before-{i}") for i in range(4)] == [200] * 4
            processed = [
                metric(node.get("/metrics").text, "qlevents_events_processed_total")
                for node in nodes
            ]
            nodes[0].kill()
            assert [send(f"after-{i}") for i in range(4)] == [200] * 4
            # nginx tried the dead node (refused) and passed those requests on.
            assert "Connection refused" in (tmp_path / "nginx" / "error.log").read_text()
        stored = stored_marks(cluster, prefix)
    finally:
        for node in nodes:
            if node.process is not None:
                node.stop()
        cluster.stop()
    assert processed == [2, 2]
    assert sorted(stored) == sorted(
        [f"before-{i}" for i in range(4)] + [f"after-{i}" for i in range(4)]
    )


class Shop(threading.Thread):
    """A shop's backend: the SDK's ``Client`` with its defaults, sending views one by one
    (its sender batches them) through the balancer until told to stop."""

    def __init__(self, n: int, key: str, endpoint: str) -> None:
        super().__init__(daemon=True)
        self.client = Client(key, endpoint)
        self.sent: list[str] = []
        self.n = n
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            mark = f"shop{self.n}-{len(self.sent)}"
            self.client.view(product_id=mark, price=1, permalink="https://shop.example/p")
            self.sent.append(mark)
            time.sleep(0.002)


def test_the_sdks_traffic_loses_nothing_when_a_nats_leader_and_an_ingest_node_die(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three shops on the SDK (defaults; the test CA through SSL_CERT_FILE) send through
    nginx while the stream's NATS leader is killed -9 (and restarted), then an ingest node:
    every event they handed to the SDK is in the stream exactly once, none dropped."""
    certificates = make_certificates(tmp_path / "tls")
    monkeypatch.setenv("SSL_CERT_FILE", str(certificates.ca))
    cluster = NatsCluster(tmp_path / "nats", 3).start()
    prefix = f"t{uuid.uuid4().hex[:10]}"
    nodes: list[RunningServer] = []
    shops: list[Shop] = []
    try:
        for n in (1, 2):
            nodes.append(ingest_node(tmp_path, f"ingest-{n}", cluster, prefix))
        key = add_account(cluster, prefix)
        site = site_for(free_port(), nodes, certificates)
        with running_nginx(tmp_path / "nginx", site) as port:
            shops = [Shop(n, key, f"https://127.0.0.1:{port}/events") for n in range(3)]
            for shop in shops:
                shop.start()
            time.sleep(1)
            leader = leader_index(cluster, prefix)
            cluster.kill(leader)
            time.sleep(3)
            cluster.restart(leader)
            nodes[0].kill()
            time.sleep(2)
            for shop in shops:
                shop.stopping.set()
                shop.join(10)
                assert shop.client.flush(60), shop.client.stats()
        stored = stored_marks(cluster, prefix)
    finally:
        for shop in shops:
            shop.client.close(timeout=5)
        for node in nodes:
            if node.process is not None:
                node.stop()
        cluster.stop()
    sent = [mark for shop in shops for mark in shop.sent]
    stats = [shop.client.stats() for shop in shops]
    assert [s["dropped"] for s in stats] == [0, 0, 0]
    assert len(stored) == len(set(stored)), "an event was stored twice"
    assert sorted(stored) == sorted(sent)
    print(f"{len(sent)} events sent by the SDK, {len(stored)} stored; retried:"
          f" {[s['retried'] for s in stats]}")  # fmt: skip
