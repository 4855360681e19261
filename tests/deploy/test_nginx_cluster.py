"""deploy/nginx/qlevents-cluster.conf, run for real: Debian's nginx (TLS, as in
test_nginx_tls.py) in front of two ingest nodes on a three-node NATS cluster. Requests are
spread over both nodes; one node killed -9, nginx sends the next requests to the other; the
stream holds each event once. Skips without nginx, except under CI=true."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.cluster import NatsCluster
from tests.deploy.test_nginx_tls import MAIN, Certificates, make_certificates, tool
from tests.support import RunningServer, free_port, metric, view
from tests.test_cluster_faults_http import add_account, ingest_node, stored_marks

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
        deadline = time.monotonic() + 20
        while True:
            assert process.poll() is None, (prefix / "error.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "nginx did not start listening"
                time.sleep(0.05)
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
