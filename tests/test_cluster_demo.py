"""``make cluster`` (qlevents.cluster_demo): three NATS nodes and two ingest nodes that
serve the spec's examples from either endpoint, share accounts and keys, store a retried
request once, stop together on Ctrl-C, and keep their data across a restart."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.cluster import require_nats_server
from tests.support import PORTS, child_pids, conversion, port_is_free, view, wait_gone

READY_LINE = "Ctrl-C stops every process."


#: The ports of a demo, from its base: NATS clients, routes and monitors (base+0..2, +100..102,
#: +200..202), then the two ingest nodes (+300, +301).
DEMO_OFFSETS = [offset + i for offset in (0, 100, 200) for i in range(3)] + [300, 301]


def _free_ports() -> tuple[tuple[int, int], int]:
    """The two ingest nodes' ports and the NATS base of a demo whose eleven ports are all
    free, in this test process's slice of ports (tests/support.py)."""
    for base in range(PORTS.start, PORTS.stop - DEMO_OFFSETS[-1], 7):
        if all(port_is_free(base + offset) for offset in DEMO_OFFSETS):
            return (base + 300, base + 301), base
    raise RuntimeError("no free ports")


@dataclass
class Demo:
    process: subprocess.Popen[str]
    endpoints: list[str]
    key: str
    token: str
    store: str
    output: str

    def qlevents(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "qlevents", *args, "--store", self.store],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def exported(self) -> list[dict[str, Any]]:
        done = self.qlevents("events", "export")
        assert done.returncode == 0, done.stderr
        return [json.loads(line) for line in done.stdout.splitlines()]


def start_demo(directory: Path, ports: tuple[int, int], base: int) -> Demo:
    process = subprocess.Popen(
        [sys.executable, "-m", "qlevents.cluster_demo", "--dir", str(directory),
         "--ports", f"{ports[0]},{ports[1]}", "--nats-port", str(base)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            process.wait(60)  # reaped here, not warned about in a later test
            process.stdout.close()
            raise RuntimeError("the demo exited:\n" + "".join(lines))
        lines.append(line)
        if line.strip() == READY_LINE:
            output = "".join(lines)
            return Demo(
                process,
                re.findall(r"endpoint: +(\S+)", output),
                re.findall(r"client key: +(\S+)", output)[0],
                re.findall(r"admin token: +(\S+)", output)[0],
                re.findall(r"store: +(\S+)", output)[0],
                output,
            )
    process.kill()
    process.wait(60)
    process.stdout.close()
    raise RuntimeError("the demo did not start:\n" + "".join(lines))


def interrupt(demo: Demo) -> list[int]:
    """Ctrl-C the demo; the processes it had started."""
    children = child_pids(demo.process.pid)
    demo.process.send_signal(signal.SIGINT)
    assert demo.process.wait(60) == 0
    return children


def _close(demo: Demo) -> None:
    if demo.process.stdout is not None:
        demo.process.stdout.close()


@pytest.fixture
def run_demo(tmp_path: Path) -> Iterator[Callable[[], Demo]]:
    """Starts the demo on free ports in the test's directory (again: on the same data)."""
    require_nats_server()

    ports, base = _free_ports()
    started: list[Demo] = []

    def run() -> Demo:
        demo = start_demo(tmp_path / "cluster", ports, base)
        started.append(demo)
        return demo

    yield run
    for demo in started:
        if demo.process.poll() is None:
            for pid in child_pids(demo.process.pid):
                os.kill(pid, signal.SIGKILL)
            demo.process.kill()
            demo.process.wait()
        _close(demo)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    """One demo for the tests that only send and read (each reading its own account's)."""
    require_nats_server()

    started = start_demo(tmp_path_factory.mktemp("demo") / "cluster", *_free_ports())
    try:
        yield started
    finally:
        wait_gone(interrupt(started), 30)
        _close(started)


def test_the_specs_examples_to_either_endpoint_are_stored_once(demo: Demo) -> None:
    """The spec's two curl examples, one to each ingest node: export shows each event once;
    a keyed retry through the other node gets the first answer and stores nothing."""
    assert len(demo.endpoints) == 2
    first = httpx.post(demo.endpoints[0], json=[view(demo.key)], timeout=30)
    second = httpx.post(
        demo.endpoints[1],
        json=[conversion(demo.key), conversion(demo.key, price=60, units=3)],
        timeout=30,
    )
    assert first.status_code == second.status_code == 200
    keyed = {"idempotency-key": "order-1"}
    answer = httpx.post(demo.endpoints[0], json=[view(demo.key)], headers=keyed, timeout=30)
    retried = httpx.post(demo.endpoints[1], json=[view(demo.key)], headers=keyed, timeout=30)
    assert retried.json() == answer.json()
    ids = [event["id"] for event in demo.exported() if event["client_key"] == demo.key]
    sent = [e["id"] for r in (first, second, answer) for e in r.json()["processed"]]
    assert sorted(ids) == sorted(sent)
    tail = demo.qlevents("events", "tail", "--client-key", demo.key)
    assert [json.loads(line)["id"] for line in tail.stdout.splitlines()] == ids
    metrics = httpx.get(demo.endpoints[1].replace("/events", "/metrics")).text
    assert 'qlevents_publish_outcomes_total{outcome="stored"}' in metrics
    assert 'qlevents_activity_dropped_total{what="rows"} 0.0' in metrics  # counted, none


def test_an_account_made_through_one_node_works_on_the_other(demo: Demo) -> None:
    """An account added with the admin API of node 1, or `accounts add --store`, is taken
    by node 2 within a few seconds; disabled there, node 1 refuses it."""
    admin = demo.endpoints[0].replace("/events", "/admin/accounts")
    made = httpx.post(
        admin, json={"name": "shop"}, headers={"authorization": f"Bearer {demo.token}"}
    )
    assert made.status_code == 201
    key = made.json()["client_key"]
    deadline = time.monotonic() + 5
    while httpx.post(demo.endpoints[1], json=[view(key)]).json()["errors"]:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    added = demo.qlevents("accounts", "add", "cli shop", "--json")
    assert added.returncode == 0, added.stderr
    disabled = demo.qlevents("accounts", "disable", "cli shop")
    assert disabled.returncode == 0, disabled.stderr
    cli_key = json.loads(added.stdout)["client_key"]
    deadline = time.monotonic() + 5
    while not httpx.post(demo.endpoints[0], json=[view(cli_key)]).json()["errors"]:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    error = httpx.post(demo.endpoints[0], json=[view(cli_key)]).json()["errors"][0]
    assert error["code"] == "disabled_client_key"


def test_ctrl_c_stops_everything_and_the_data_survives_a_restart(
    run_demo: Callable[[], Demo],
) -> None:
    """SIGINT stops the five processes; started again, the demo has its key and events."""
    demo = run_demo()
    stored = httpx.post(demo.endpoints[0], json=[view(demo.key)], timeout=30).json()
    children = interrupt(demo)
    assert len(children) >= 5
    wait_gone(children, 30)
    again = run_demo()
    assert again.key == demo.key
    assert [e["id"] for e in again.exported()] == [stored["processed"][0]["id"]]
    follow = subprocess.Popen(
        [sys.executable, "-m", "qlevents", "events", "tail", "--follow", "--store", again.store],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert follow.stdout is not None
    assert json.loads(follow.stdout.readline())["id"] == stored["processed"][0]["id"]
    later = httpx.post(again.endpoints[1], json=[view(again.key)], timeout=30).json()
    assert json.loads(follow.stdout.readline())["id"] == later["processed"][0]["id"]
    follow.send_signal(signal.SIGINT)
    assert follow.wait(30) == 0
    follow.stdout.close()
    wait_gone(interrupt(again), 30)


def test_without_a_quorum_readyz_is_503_and_keys_are_still_checked(
    run_demo: Callable[[], Demo],
) -> None:
    """Two NATS nodes killed: both nodes' /readyz answers 503, and the account checks go on
    from the snapshot (an unknown key is still refused at once). That events are then answered
    503 + Retry-After, in time, is proved under traffic in test_cluster_faults_http.py."""
    demo = run_demo()
    nats = [pid for pid in child_pids(demo.process.pid) if _is_nats(pid)]
    assert len(nats) == 3
    for pid in nats[:2]:
        os.kill(pid, signal.SIGKILL)
    for endpoint in demo.endpoints:
        ready = endpoint.replace("/events", "/readyz")
        deadline = time.monotonic() + 30
        while httpx.get(ready, timeout=30).status_code != 503:
            assert time.monotonic() < deadline
            time.sleep(0.2)
    unknown = httpx.post(demo.endpoints[1], json=[view("qlk_nobody")], timeout=60)
    assert unknown.status_code == 200
    assert unknown.json()["errors"][0]["code"] == "unknown_client_key"


def _is_nats(pid: int) -> bool:
    try:
        return "nats-server" in Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:
        return False


def test_a_restart_waits_for_the_demo_key_instead_of_making_another(tmp_path: Path) -> None:
    """Started again, the demo takes the key it remembered once the account book holds it
    (a book still loading after the restart does not make a second demo account); a key
    the book never shows stops the demo with a message."""
    from qlevents.accounts_jetstream import JetStreamAccountBook
    from qlevents.cluster_demo import _demo_key
    from tests.cluster import NatsCluster

    cluster = NatsCluster(tmp_path / "nats", 1).start()
    remembered = tmp_path / "demo-key"
    try:
        first = _demo_key(cluster.url, remembered, lambda: False)
        assert remembered.read_text().strip() == first
        assert _demo_key(cluster.url, remembered, lambda: False) == first
        book = JetStreamAccountBook(cluster.url.split(","))
        try:
            assert [a.name for a in book.all()] == ["demo"]
        finally:
            book.close()
        remembered.write_text("qlk_notinthebook\n")
        with pytest.raises(SystemExit, match="not in the cluster's account book"):
            _demo_key(cluster.url, remembered, lambda: False, timeout=0.5)
    finally:
        cluster.stop()
