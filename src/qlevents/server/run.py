"""Running the service under uvicorn: listeners, workers, protocol, the log, signals."""

from __future__ import annotations

import inspect
import os
import signal
import socket
from multiprocessing import resource_tracker
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.supervisors import Multiprocess

from qlevents.server.config import Settings
from qlevents.server.logging import LogFile, log_config
from qlevents.settings import SettingsError

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
    """Serve until SIGTERM/SIGINT; settings reach every worker through QLEVENTS_* variables.

    With a log file, SIGHUP reopens it; without one, SIGHUP is ignored by a single process
    and, with workers, restarts them one by one (uvicorn's supervisor).
    """
    log_file = _log_file(settings.log_file, settings.workers) if settings.log_file else None
    try:
        _run(settings, host, port, admin_host, log_level, forwarded_allow_ips, log_file)
    finally:
        if log_file is not None:
            log_file.close()


def _log_file(name: str, workers: int) -> LogFile:
    path = Path(name).resolve()
    if workers > 1:
        # Workers are spawned, which starts multiprocessing's resource tracker; it lives until
        # this process exits. Started after the log's pipe it would hold the pipe open, and the
        # exit would wait out LogFile's drain (5 s) for it: started first, its rare lines (leaked
        # semaphores) go to the standard error the server was given.
        resource_tracker.ensure_running()
    try:
        return LogFile(path)
    except OSError as exc:
        raise SettingsError(f"cannot open the log file {path}: {exc.strerror or exc}") from None


class _Supervisor(Multiprocess):
    """uvicorn's supervisor of the workers, where SIGHUP reopens the log file (which only this
    process writes: the workers' lines reach it through a pipe) instead of restarting them."""

    def __init__(self, *args: Any, log_file: LogFile, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.log_file = log_file

    def handle_hup(self) -> None:
        self.log_file.reopen()


def _run(
    settings: Settings,
    host: str,
    port: int,
    admin_host: str,
    log_level: str,
    forwarded_allow_ips: str | None,
    log_file: LogFile | None,
) -> None:
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
        supervisor: type[Multiprocess] = Multiprocess
        options: dict[str, Any] = {"sockets": sockets}
        if log_file is not None:
            supervisor, options["log_file"] = _Supervisor, log_file
        if "target" in inspect.signature(Multiprocess).parameters:  # uvicorn < 0.50
            options["target"] = uvicorn.Server(config).run
        supervisor(config, **options).run()
    else:
        if log_file is None:
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
        else:
            signal.signal(signal.SIGHUP, lambda signum, frame: log_file.reopen())
        uvicorn.Server(config).run(sockets=sockets)
