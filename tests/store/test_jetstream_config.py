"""The shipped NATS configuration and the node file beside it; finding nats-server."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import tests.cluster
from qlevents.store.jetstream_config import (
    NODE_CONFIG,
    NatsNode,
    nats_server_binary,
    shipped_config,
    write_node_config,
)
from tests.cluster import require_nats_server

NODES = [NatsNode(f"n{i}", 4222 + i, 6222 + i, 8222 + i) for i in range(3)]


def test_the_shipped_configuration_fsyncs_every_write_and_answers_varz() -> None:
    """What the store relies on is in the file every node runs."""
    text = shipped_config()
    assert "sync_interval: always" in text
    assert 'to: "qlevents.sys.varz"' in text
    assert "max_msgs: 2000" in text
    assert 'include "node.conf"' in text


def test_a_cluster_nodes_file_names_it_and_routes_to_every_peer(tmp_path: Path) -> None:
    """node.conf: the node's addresses and data, a cluster block listing all routes."""
    config = write_node_config(tmp_path, NODES[1], NODES)
    assert config.read_text() == shipped_config()
    node = (tmp_path / NODE_CONFIG).read_text()
    assert 'QLEVENTS_NODE: "n1"' in node
    assert 'QLEVENTS_CLIENT_LISTEN: "127.0.0.1:4223"' in node
    assert f'QLEVENTS_STORE_DIR: "{tmp_path / "data"}"' in node
    assert 'listen: "127.0.0.1:6223"' in node
    assert "routes: [nats://127.0.0.1:6222, nats://127.0.0.1:6223, nats://127.0.0.1:6224]" in node


def test_a_single_server_has_no_cluster_block(tmp_path: Path) -> None:
    """A server alone would wait for routes to itself forever: no cluster block."""
    write_node_config(tmp_path, NODES[0], NODES[:1])
    assert "cluster" not in (tmp_path / NODE_CONFIG).read_text()


def test_the_server_extra_puts_nats_server_beside_python() -> None:
    """make dev / make serve install the binary the tests and make cluster run (and it is
    the one found before any on the PATH)."""
    require_nats_server()
    assert nats_server_binary() == Path(sys.executable).parent / "nats-server"


class TestWithoutTheBinary:
    @pytest.fixture(autouse=True)
    def no_binary(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(tests.cluster, "nats_server_binary", lambda: None)

    def test_cluster_tests_are_skipped_with_the_reason(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Outside CI a missing nats-server skips the cluster tests, saying why."""
        monkeypatch.delenv("CI", raising=False)
        with pytest.raises(pytest.skip.Exception, match="nats-server is not installed"):
            require_nats_server()

    def test_in_ci_they_fail_instead(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """With CI=true the cluster tests must run: a missing binary fails them."""
        monkeypatch.setenv("CI", "true")
        with pytest.raises(pytest.fail.Exception, match="CI=true"):
            require_nats_server()
