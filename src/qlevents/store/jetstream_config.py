"""The NATS server configuration qlevents ships, and the per-node file that goes beside it.

``nats-server.conf`` (in this package) is the same on every node; ``node.conf`` names the
node, its addresses and data directory, and the routes to its peers. The cluster tests and
``make cluster`` write both with :func:`write_node_config`; docs/cluster.md shows them.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Final

SERVER_CONFIG: Final = "nats-server.conf"
NODE_CONFIG: Final = "node.conf"


@dataclass(frozen=True, slots=True)
class NatsNode:
    """One NATS server's name and the ports it listens on."""

    name: str
    client_port: int
    cluster_port: int
    monitor_port: int
    host: str = "127.0.0.1"

    @property
    def client_url(self) -> str:
        return f"nats://{self.host}:{self.client_port}"

    @property
    def route_url(self) -> str:
        return f"nats://{self.host}:{self.cluster_port}"

    @property
    def monitor_url(self) -> str:
        return f"http://{self.host}:{self.monitor_port}"


def shipped_config() -> str:
    """The text of the shipped ``nats-server.conf``."""
    return resources.files("qlevents.store").joinpath(SERVER_CONFIG).read_text("utf-8")


def write_node_config(
    directory: Path,
    node: NatsNode,
    peers: Sequence[NatsNode],
    *,
    max_file_store: str = "16GB",
    cluster_name: str = "qlevents",
) -> Path:
    """Write the shipped configuration and ``node``'s ``node.conf`` into ``directory`` (its
    data goes in ``directory/data``). ``peers`` are all the cluster's nodes, ``node`` among
    them; with no other peer the server runs alone (no cluster block). Returns the path to
    give ``nats-server -c``."""
    directory.mkdir(parents=True, exist_ok=True)
    values = {
        "QLEVENTS_NODE": json.dumps(node.name),
        "QLEVENTS_CLIENT_LISTEN": json.dumps(f"{node.host}:{node.client_port}"),
        "QLEVENTS_MONITOR_LISTEN": json.dumps(f"{node.host}:{node.monitor_port}"),
        "QLEVENTS_STORE_DIR": json.dumps(str(directory / "data")),
        "QLEVENTS_MAX_FILE_STORE": max_file_store,
    }
    text = "".join(f"{name}: {value}\n" for name, value in values.items())
    if any(peer != node for peer in peers):
        routes = ", ".join(peer.route_url for peer in peers)
        text += (
            "cluster {\n"
            f"  name: {json.dumps(cluster_name)}\n"
            f"  listen: {json.dumps(f'{node.host}:{node.cluster_port}')}\n"
            f"  routes: [{routes}]\n"
            "}\n"
        )
    (directory / NODE_CONFIG).write_text(text, "utf-8")
    config = directory / SERVER_CONFIG
    config.write_text(shipped_config(), "utf-8")
    return config


def nats_server_binary() -> Path | None:
    """The ``nats-server`` of this environment (the server extra installs it beside the
    Python interpreter), else one on the PATH; None if there is none."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return beside
    found = shutil.which("nats-server")
    return Path(found) if found else None
