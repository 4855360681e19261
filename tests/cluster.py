"""Real ``nats-server`` processes on loopback, for the cluster store's tests.

``NatsCluster(directory, size)`` runs ``size`` servers of this environment (the server extra
installs the binary in the venv) with the shipped configuration on free ports, waits until
JetStream answers on each, kills (SIGKILL) and restarts single nodes, and stops them all.
``jetstream_settings`` gives each test a stream of its own on a shared cluster.
Without the binary the tests that need it are skipped, and fail when ``CI=true``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest

from qlevents.store.factory import StoreSettings
from qlevents.store.jetstream_config import NatsNode, nats_server_binary, write_node_config
from qlevents.store.jetstream_layout import stream_name
from tests.support import free_port


def require_nats_server() -> Path:
    """The nats-server binary; skips the test without it (fails it when CI=true)."""
    binary = nats_server_binary()
    if binary is None:
        reason = "nats-server is not installed (the server extra puts it in the venv)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI=true: the cluster tests must run")
        pytest.skip(reason)
    return binary


class NatsCluster:
    """``size`` nats-server processes forming one cluster (or one server alone)."""

    def __init__(self, directory: Path, size: int, binary: Path | None = None) -> None:
        self.directory = directory
        self.binary = binary or require_nats_server()
        self.processes: list[subprocess.Popen[bytes] | None] = [None] * size
        self._lay_out(size)

    def _lay_out(self, size: int) -> None:
        """Free ports for every node, and their configuration files."""
        self.nodes = [NatsNode(f"n{i}", free_port(), free_port(), free_port()) for i in range(size)]
        self.configs = [
            write_node_config(self.directory / node.name, node, self.nodes, max_file_store="4GB")
            for node in self.nodes
        ]

    @property
    def url(self) -> str:
        """The value of ``--store``: every node's client URL."""
        return ",".join(node.client_url for node in self.nodes)

    def start(self, attempts: int = 3) -> NatsCluster:
        """Start every node; until all are ready. A port taken between choosing it and a node
        binding it (other processes on this machine choose free ports too) makes a node exit
        or a cluster that never elects its meta leader: then all over again, on new ports."""
        for attempt in range(attempts):
            for index in range(len(self.nodes)):
                self._spawn(index)
            try:
                self.wait_ready(range(len(self.nodes)))
                return self
            except RuntimeError:
                self.stop()
                if attempt == attempts - 1:
                    raise
                for node in self.nodes:
                    shutil.rmtree(self.directory / node.name, ignore_errors=True)
                self._lay_out(len(self.nodes))
        return self

    def kill(self, index: int) -> None:
        """SIGKILL node ``index`` (what a machine's death looks like to its peers)."""
        process = self.processes[index]
        assert process is not None, f"node {index} is not running"
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        self.processes[index] = None

    def restart(self, index: int, *, wait: bool = True) -> None:
        """Start node ``index`` again on its ports and data; ``wait``: until it is healthy."""
        self._spawn(index)
        if wait:
            self.wait_ready([index])

    def stop(self) -> None:
        for index, process in enumerate(self.processes):
            if process is not None:
                process.send_signal(signal.SIGKILL)
                process.wait(10)
                self.processes[index] = None

    def index_of(self, name: str) -> int:
        """The index of the node named ``name`` (as stream info names a leader)."""
        return [node.name for node in self.nodes].index(name)

    def _spawn(self, index: int) -> None:
        assert self.processes[index] is None, f"node {index} is running"
        node = self.nodes[index]
        with (self.directory / node.name / "server.log").open("ab") as log:
            self.processes[index] = subprocess.Popen(
                [str(self.binary), "-c", str(self.configs[index])],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self, indexes: range | list[int], timeout: float = 30.0) -> None:
        """Until each node's /healthz says JetStream is ready (meta leader known, its streams
        current)."""
        deadline = time.monotonic() + timeout
        for index in indexes:
            node, process = self.nodes[index], self.processes[index]
            assert process is not None
            while True:
                for other in indexes:  # a peer that died keeps this one from ever being ready
                    peer = self.processes[other]
                    if peer is not None and peer.poll() is not None:
                        name = self.nodes[other].name
                        raise RuntimeError(f"nats-server {name} exited:\n{self.log(other)}")
                try:
                    if httpx.get(f"{node.monitor_url}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"nats-server {node.name} not ready:\n{self.log(index)}")
                time.sleep(0.05)

    def log(self, index: int) -> str:
        path = self.directory / self.nodes[index].name / "server.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""


def jetstream_settings(cluster: NatsCluster, **overrides: object) -> StoreSettings:
    """Settings of a cluster store on a stream (and subjects) no other test uses."""
    values: dict[str, object] = {
        "store": cluster.url,
        "nats_prefix": f"t{uuid.uuid4().hex[:12]}",
        "nats_max_bytes": 64 << 20,
    }
    values.update(overrides)
    return StoreSettings(**values)  # type: ignore[arg-type]


async def delete_stream(cluster: NatsCluster, settings: StoreSettings) -> None:
    """Remove a test's stream, so that the shared cluster does not fill up."""
    nc = await nats.connect(cluster.url.split(","))
    try:
        await nc.jetstream().delete_stream(stream_name(settings.nats_prefix))
    finally:
        await nc.close()


def module_cluster(size: int) -> Callable[..., Any]:
    """A module-scoped fixture of ``size`` NATS servers shared by a test module's tests
    (tests that kill nodes start their own): ``nats_cluster = module_cluster(3)``."""

    @pytest.fixture(scope="module")
    def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
        started = NatsCluster(tmp_path_factory.mktemp("nats"), size)
        try:
            yield started.start()
        finally:
            started.stop()

    return cluster
