"""Running the service under uvicorn: listeners, workers, protocol, signals."""

from __future__ import annotations

import inspect
import os
import signal
import socket

import uvicorn
from uvicorn.supervisors import Multiprocess

from qlevents.server.config import Settings
from qlevents.server.logging import log_config

PROTOCOL = "qlevents.server.protocol:GuardedHttpToolsProtocol"


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def run_server(
    settings: Settings,
    *,
    host: str,
    port: int,
    admin_host: str,
    log_level: str,
    forwarded_allow_ips: str | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT; settings reach every worker through QLEVENTS_* variables."""
    os.environ.update(settings.to_env())
    if settings.workers > 1:
        # Each worker writes its metrics here; /metrics adds them up.
        metrics_dir = settings.data_dir / "metrics"
        metrics_dir.mkdir(parents=True, exist_ok=True)
        for stale in metrics_dir.glob("*.db"):
            stale.unlink()
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    config = uvicorn.Config(
        "qlevents.server.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=settings.workers,
        loop="uvloop",
        http=PROTOCOL,
        access_log=False,
        log_config=log_config(log_level),
        server_header=False,
        # X-Forwarded-For is believed only from the proxies named; by default from none, so
        # the access log shows the real peer and costs no middleware per request.
        proxy_headers=forwarded_allow_ips is not None,
        forwarded_allow_ips=forwarded_allow_ips,
        timeout_graceful_shutdown=30,
    )
    sockets = [config.bind_socket()]
    if settings.admin_port:
        sockets.append(_listen(admin_host, settings.admin_port))
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal to the handler it
    # found at start-up. Make that handler a no-op so a clean shutdown exits 0, as process
    # supervisors expect.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    if settings.workers > 1:
        if "target" in inspect.signature(Multiprocess).parameters:  # uvicorn < 0.50
            server = uvicorn.Server(config)
            Multiprocess(config, target=server.run, sockets=sockets).run()  # type: ignore[call-arg]
        else:
            Multiprocess(config, sockets=sockets).run()
    else:
        uvicorn.Server(config).run(sockets=sockets)
