"""Server benchmark: qlevents vs a naive FastAPI peer vs a no-op ceiling, side by side.

For every (round, body, target) it starts a fresh server on a free loopback port with a
fresh data directory, warms it up, then drives it with ``wrk -t1 -c32 --latency`` and
``bench/post_events.lua`` (POST of a fixed body; counts 200 answers; prints one JSON line).
Targets are interleaved in rounds and the medians reported, because the machine is shared
and noisy. After each qlevents run it checks that no acknowledged event was lost: the store
holds at least (200 answers x events per request) events, and exactly what /metrics says
was processed.

    .venv/bin/python bench/server_bench.py            # full run, ~5 minutes
    .venv/bin/python bench/server_bench.py --quick    # smoke run, ~1 minute
    .venv/bin/python bench/server_bench.py --baseline ../old-checkout   # and an older qlevents

``--baseline DIR`` adds a fourth target, ``baseline``: ``qlevents serve`` from another
checkout (its own ``.venv``), measured in the same rounds as the others, so that a change is
compared with the commit before it side by side rather than across runs.

Exit status: 0 when the run was sound (targets missed or not), 1 when it was broken (a
server failed to start, an answer was not 200, events were lost), 2 when wrk is missing.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
LUA = BENCH_DIR / "post_events.lua"
HOST = "127.0.0.1"
TARGETS = ("qlevents", "peer", "noop")
#: The older qlevents of --baseline: measured like qlevents, from another checkout.
BASELINE = "baseline"
BODY_SIZES = (1, 100)

# The targets.
MIN_PEER_RATIO = {1: 10.0, 100: 20.0}
MIN_CEILING_SHARE = 0.70
MAX_P99_MS = 15.0
MAX_RSS_MB = 150.0


class BrokenRun(Exception):
    """The run cannot be trusted: a server did not start, an answer was not 200, loss."""


# --- machine and tools ---------------------------------------------------------------------


def ensure_wrk() -> str:
    """The path of wrk, installing the Debian package if we may; exits 2 if we may not."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() != 0:
        print(
            "wrk is not installed. Install it with:\n  sudo apt-get install -y wrk\n"
            "(or build it from https://github.com/wg/wrk) and run the benchmark again.",
            file=sys.stderr,
        )
        sys.exit(2)
    print("wrk is missing: apt-get install -y wrk", flush=True)
    install = ["apt-get", "install", "-y", "wrk"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(install, env=env, timeout=600, check=False).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, timeout=600, check=False)
        subprocess.run(install, env=env, timeout=600, check=False)
    found = shutil.which("wrk")
    if not found:
        print("Error: could not install wrk; install it by hand.", file=sys.stderr)
        sys.exit(2)
    return found


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    wrk_version = subprocess.run(
        ["wrk", "-v"], capture_output=True, text=True, timeout=10, check=False
    )
    versions = {}
    for module in ("uvicorn", "fastapi", "pydantic", "msgspec", "uvloop", "httptools"):
        with contextlib.suppress(Exception):
            versions[module] = __import__(module).__version__
    git = [["git", "rev-parse", "--short", "HEAD"], ["git", "status", "--porcelain", "src"]]
    head, dirty = (
        subprocess.run(c, cwd=REPO, capture_output=True, text=True, timeout=10, check=False)
        for c in git
    )
    return {
        "commit": head.stdout.strip() + (" (src/ modified)" if dirty.stdout.strip() else ""),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "wrk": (wrk_version.stdout + wrk_version.stderr).strip().split(" Copyright")[0],
        "load_average_at_start": os.getloadavg(),
        "versions": versions,
    }


# --- request bodies ------------------------------------------------------------------------


def make_events(client_key: str, count: int) -> list[dict[str, Any]]:
    """``count`` valid events: views and, every third one, a conversion."""
    events: list[dict[str, Any]] = []
    for i in range(count):
        product = f"SKU-{100_000 + i}"
        if i % 3 == 2:
            events.append(
                {
                    "client_key": client_key,
                    "price": round(19.99 * (1 + i % 5), 2),
                    "product_id": product,
                    "event": "conversion",
                    "vid": f"v-{i:06d}",
                    "tags": ["user:returning"],
                    "channels": ["online"],
                    "units": 1 + i % 4,
                }
            )
        else:
            events.append(
                {
                    "client_key": client_key,
                    "price": round(123.41 + i, 2),
                    "product_id": product,
                    "event": "view",
                    "permalink": f"https://shop.com/p/{product}",
                    "vid": f"v-{i:06d}",
                    "tags": ["user:new"],
                    "channels": ["online"],
                }
            )
    return events


def write_body(directory: Path, client_key: str, count: int) -> Path:
    path = directory / f"body-{count}.json"
    path.write_bytes(json.dumps(make_events(client_key, count), separators=(",", ":")).encode())
    return path


# --- servers -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    target: str
    port: int
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    client_key: str = "qlk_" + "peer-accepts-any-key".ljust(32, "0")  # as long as real keys
    #: The checkout whose qlevents a "baseline" target runs.
    checkout: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/events"

    def command(self) -> list[str]:
        port = str(self.port)
        if self.target in ("qlevents", BASELINE):
            # Defaults, as operators run it: sqlite store, synchronous=FULL, access log on.
            return [self.python(), "-m", "qlevents", "serve",
                    "--host", HOST, "--port", port, "--data-dir", str(self.data_dir)]  # fmt: skip
        uvicorn = [sys.executable, "-m", "uvicorn", "--host", HOST, "--port", port,
                   "--loop", "uvloop", "--http", "httptools", "--workers", "1",
                   "--app-dir", str(BENCH_DIR)]  # fmt: skip
        if self.target == "peer":
            return [*uvicorn, "peer_fastapi:app"]  # uvicorn's access log on, as by default
        return [*uvicorn, "--no-access-log", "noop_app:app"]

    def python(self) -> str:
        """The interpreter of this target's qlevents (the baseline's own venv)."""
        if self.target == BASELINE:
            assert self.checkout is not None
            return str(self.checkout / ".venv" / "bin" / "python")
        return sys.executable

    def start(self, timeout: float = 30.0) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if self.target in ("qlevents", BASELINE):
            # The account through the CLI of the qlevents being measured (each its own book).
            added = subprocess.run(
                [self.python(), "-m", "qlevents", "accounts", "add", "bench", "--json",
                 "--data-dir", str(self.data_dir)],
                capture_output=True, text=True, timeout=60, check=False, env=env,
            )  # fmt: skip
            if added.returncode != 0:
                raise BrokenRun(f"{self.target}: accounts add failed: {added.stderr}")
            self.client_key = json.loads(added.stdout)["client_key"]
        elif self.target == "peer":
            env["PEER_DB"] = str(self.data_dir / "peer-events.sqlite3")
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=log,
                env=env,
                cwd=self.data_dir,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BrokenRun(f"{self.target} exited at start:\n{self.log_tail()}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                if http_get(self.port, "/healthz") is not None:
                    return
            time.sleep(0.1)
        raise BrokenRun(f"{self.target} did not answer within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self, timeout: float = 20.0) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)

    def rss(self) -> dict[str, float]:
        """Peak (VmHWM) and current (VmRSS) resident memory in MB, children included."""
        assert self.process is not None
        peak = current = 0.0
        for pid in [self.process.pid, *descendants(self.process.pid)]:
            status = proc_status(pid)
            peak += status.get("VmHWM", 0) / 1024
            current += status.get("VmRSS", 0) / 1024
        return {"peak_mb": round(peak, 1), "current_mb": round(current, 1)}

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


def git_commit(checkout: Path) -> str:
    """The short commit of ``checkout``."""
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=checkout, capture_output=True, text=True, timeout=10, check=False,
    )  # fmt: skip
    return done.stdout.strip() or "unknown"


def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes] | None:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def proc_status(pid: int) -> dict[str, int]:
    values: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in ("VmHWM", "VmRSS", "PPid"):
                values[name] = int(rest.split()[0])
    return values


def descendants(root: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            ppid = proc_status(int(entry.name)).get("PPid")
            if ppid is not None:
                parents.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = [root]
    while todo and len(found) < 1000:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@contextlib.contextmanager
def running(server: Server, started: list[Server]) -> Iterator[Server]:
    started.append(server)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        started.remove(server)


# --- wrk -----------------------------------------------------------------------------------


def run_wrk(url: str, body: Path, seconds: float, connections: int) -> dict[str, Any]:
    command = [
        "wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "5s", "--latency",
        "-s", str(LUA), url, "--", str(body),
    ]  # fmt: skip
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    match = re.search(r"^BENCH_RESULT (\{.*\})$", done.stdout, re.MULTILINE)
    if done.returncode != 0 or match is None:
        raise BrokenRun(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    result: dict[str, Any] = json.loads(match.group(1))
    result["req_per_s"] = result["requests"] / (result["duration_us"] / 1e6)
    result["ok_per_s"] = result["ok"] / (result["duration_us"] / 1e6)
    return result


def processed_total(port: int) -> int | None:
    with contextlib.suppress(OSError, http.client.HTTPException, TypeError):
        answer = http_get(port, "/metrics", timeout=5.0)
        assert answer is not None
        match = re.search(rb"^qlevents_events_processed_total ([0-9.e+]+)$", answer[1], re.M)
        return int(float(match.group(1))) if match else None
    return None


def settled_total(port: int, timeout: float = 10.0) -> int | None:
    """/metrics' processed events once requests still in flight after wrk stopped are done."""
    last = processed_total(port)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = processed_total(port)
        if now == last:
            return now
        last = now
    return last


def stored_count(path: Path) -> int:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])
    finally:
        conn.close()


# --- one measurement -----------------------------------------------------------------------


def measure(
    target: str, events: int, args: argparse.Namespace, work: Path, started: list[Server]
) -> dict[str, Any]:
    data_dir = Path(tempfile.mkdtemp(prefix=f"{target}-{events}-", dir=work))
    server = Server(target, free_port(), data_dir, data_dir / "server.log")
    server.checkout = args.baseline
    with running(server, started):
        body = write_body(data_dir, server.client_key, events)
        warm = run_wrk(server.url, body, args.warmup, args.connections)
        result = run_wrk(server.url, body, args.duration, args.connections)
        result["rss"] = server.rss()
        result["body_bytes"] = body.stat().st_size
        ours = target in ("qlevents", BASELINE)
        metrics_total = settled_total(server.port) if ours else None
        log_path = server.log_path
    answered = (warm["ok"] + result["ok"]) * events
    bad = sum(r["other"] + r["non2xx"] for r in (warm, result))
    if bad:
        raise BrokenRun(f"{target}/{events}: {bad} answers were not 200 (log: {log_path})")
    if target != "noop":
        db = data_dir / ("events.sqlite3" if ours else "peer-events.sqlite3")
        stored = stored_count(db)
        result["loss_check"] = {
            "answered_200_events": answered,
            "stored_events": stored,
            "metrics_processed_events": metrics_total,
            # Requests still in flight when wrk stopped: stored, their answer never read.
            "stored_unanswered_events": stored - answered,
        }
        if stored < answered:
            raise BrokenRun(f"{target}/{events}: {answered} events acknowledged, {stored} stored")
        if ours and metrics_total != stored:
            raise BrokenRun(
                f"{target}/{events}: /metrics says {metrics_total} processed, {stored} stored"
            )
    if not args.keep:
        shutil.rmtree(data_dir, ignore_errors=True)
    return result


# --- the report ----------------------------------------------------------------------------


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[int, dict[str, Any]]]:
    summary: dict[str, dict[int, dict[str, Any]]] = {}
    for target in (*TARGETS, BASELINE):
        for events in BODY_SIZES:
            mine = [r for r in runs if r["target"] == target and r["events"] == events]
            if not mine:
                continue
            rps = [r["ok_per_s"] for r in mine]
            summary.setdefault(target, {})[events] = {
                "req_per_s": statistics.median(rps),
                "req_per_s_min": min(rps),
                "req_per_s_max": max(rps),
                "events_per_s": statistics.median(rps) * events,
                "p50_ms": statistics.median(r["p50_us"] for r in mine) / 1000,
                "p99_ms": statistics.median(r["p99_us"] for r in mine) / 1000,
                "peak_rss_mb": max(r["rss"]["peak_mb"] for r in mine),
                "rss_mb": statistics.median(r["rss"]["current_mb"] for r in mine),
                "body_bytes": mine[0]["body_bytes"],
                "socket_errors": sum(
                    r["connect"] + r["read"] + r["write"] + r["timeout"] for r in mine
                ),
                "rounds": len(mine),
            }
    return summary


def checks(summary: dict[str, dict[int, dict[str, Any]]]) -> list[tuple[str, str, str, bool]]:
    q = summary["qlevents"]
    out: list[tuple[str, str, str, bool]] = []
    for events in BODY_SIZES:
        ratio = q[events]["events_per_s"] / summary["peer"][events]["events_per_s"]
        goal = MIN_PEER_RATIO[events]
        out.append(
            (f"events/s vs peer, {events} event(s)/request", f"{ratio:.1f}x", f">= {goal:g}x",
             ratio >= goal)
        )  # fmt: skip
    share = q[1]["req_per_s"] / summary["noop"][1]["req_per_s"]
    out.append(
        ("req/s vs no-op ceiling, 1 event/request", f"{share:.0%}", f">= {MIN_CEILING_SHARE:.0%}",
         share >= MIN_CEILING_SHARE)
    )  # fmt: skip
    for events in BODY_SIZES:
        p99 = q[events]["p99_ms"]
        out.append(
            (f"p99 latency, {events} event(s)/request", f"{p99:.1f} ms", f"<= {MAX_P99_MS:g} ms",
             p99 <= MAX_P99_MS)
        )  # fmt: skip
    peak = max(q[e]["peak_rss_mb"] for e in BODY_SIZES)
    out.append(("server peak RSS", f"{peak:.0f} MB", f"<= {MAX_RSS_MB:g} MB", peak <= MAX_RSS_MB))
    return out


def report(
    summary: dict[str, dict[int, dict[str, Any]]], info: dict[str, Any], args: argparse.Namespace
) -> str:
    lines = [
        f"Machine: {info['nproc']} CPUs ({info['cpu']}), {info['memory_gb']} GB,"
        f" Linux {info['kernel']}, Python {info['python']}, {info['wrk']};"
        f" load average {info['load_average_at_start'][0]:.2f} at start,"
        f" {info.get('load_average_at_end', [0.0])[0]:.2f} at the end.",
        f"qlevents at commit {info['commit']}.",
        f"Run: wrk -t1 -c{args.connections} on loopback, {args.rounds} rounds x"
        f" {len(summary)} targets x {len(BODY_SIZES)} bodies, {args.duration:g} s each after"
        f" {args.warmup:g} s of warm-up, fresh server and data dir each; medians"
        " (req/s range over rounds). req/s counts 200 answers.",
        "",
        "| target | body | req/s (min-max) | events/s | p50 | p99 | peak RSS |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    names = {
        "qlevents": "qlevents (SQLite FULL, group commit)",
        "peer": "peer: FastAPI + pydantic v2, commit/request",
        "noop": "no-op ASGI (ceiling)",
        BASELINE: f"baseline: qlevents at {info.get('baseline_commit', '?')}",
    }
    for target in [t for t in (*TARGETS, BASELINE) if t in summary]:
        for events in BODY_SIZES:
            s = summary[target][events]
            size = s["body_bytes"] / 1024
            lines.append(
                f"| {names[target]} | {events} event{'s' if events > 1 else ''}"
                f" ({size:.1f} KB) | {s['req_per_s']:,.0f} ({s['req_per_s_min']:,.0f}"
                f"-{s['req_per_s_max']:,.0f}) | {s['events_per_s']:,.0f} | {s['p50_ms']:.2f} ms"
                f" | {s['p99_ms']:.2f} ms | {s['peak_rss_mb']:.0f} MB |"
            )
    lines += ["", "| target | measured | goal | result |", "|---|---:|---:|---|"]
    for name, measured, goal, ok in checks(summary):
        lines.append(f"| {name} | {measured} | {goal} | {'PASS' if ok else 'FAIL'} |")
    if BASELINE in summary:
        lines += ["", "| body | qlevents / baseline, req/s | p99 qlevents vs baseline |",
                  "|---|---:|---:|"]  # fmt: skip
        for events in BODY_SIZES:
            now, before = summary["qlevents"][events], summary[BASELINE][events]
            lines.append(
                f"| {events} event{'s' if events > 1 else ''}"
                f" | {now['req_per_s'] / before['req_per_s']:.2f}"
                f" | {now['p99_ms']:.2f} ms vs {before['p99_ms']:.2f} ms |"
            )
    q100 = summary["qlevents"][100]["events_per_s"] / summary["noop"][100]["events_per_s"]
    lines += [
        "",
        f"qlevents reaches {q100:.0%} of the no-op ceiling's events/s with 100-event bodies"
        " (no goal).",
        "Notes: qlevents runs with its defaults (SQLite WAL synchronous=FULL, access log on,"
        " to a file) and checks client keys against its accounts; the peer accepts any"
        " client_key (no account checks) and logs with uvicorn's access log; the no-op app"
        " reads the body and answers a fixed JSON, no log. All three: uvicorn, uvloop,"
        " httptools, 1 worker. wrk shares the machine's CPUs with the server.",
    ]
    errors = {t: sum(s["socket_errors"] for s in summary[t].values()) for t in summary}
    if any(errors.values()):
        lines.append(f"wrk socket errors (connect/read/write/timeout): {errors}.")
    return "\n".join(lines) + "\n"


# --- main ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per measurement")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 round of 2 s")
    parser.add_argument(
        "--targets", default=",".join(TARGETS), help="comma-separated subset (for profiling)"
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help="another checkout (with its .venv) whose qlevents to measure beside this one",
    )
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results")
    parser.add_argument("--keep", action="store_true", help="keep data dirs and server logs")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.warmup, args.rounds = 2.0, 1.0, 1
    if not (0 < args.duration <= 600 and 0 < args.warmup <= 60 and 1 <= args.rounds <= 20):
        parser.error("need 0 < --duration <= 600, 0 < --warmup <= 60, 1 <= --rounds <= 20")
    if args.baseline is not None:
        args.baseline = args.baseline.resolve()
        if not (args.baseline / ".venv" / "bin" / "python").exists():
            parser.error(f"--baseline {args.baseline}: no .venv/bin/python there (make install)")
    return args


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Ctrl-C and SIGTERM both stop the servers we started (they run in sessions of their own).
    signal.signal(signal.SIGINT, _interrupted)
    signal.signal(signal.SIGTERM, _interrupted)
    ensure_wrk()
    targets = [t for t in args.targets.split(",") if t]
    if args.baseline is not None and BASELINE not in targets:
        targets.append(BASELINE)
    if not set(targets) <= {*TARGETS, BASELINE}:
        print(f"Error: --targets must be among {', '.join(TARGETS)}", file=sys.stderr)
        return 2
    info = machine()
    if args.baseline is not None:
        info["baseline_commit"] = git_commit(args.baseline)
    started: list[Server] = []
    runs: list[dict[str, Any]] = []
    work = Path(tempfile.mkdtemp(prefix="qlevents-bench-"))
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    total = args.rounds * len(BODY_SIZES) * len(targets)
    say: Callable[[str], None] = lambda text: print(text, flush=True)  # noqa: E731
    say(f"{total} runs of {args.warmup:g}+{args.duration:g} s; servers' logs under {work}")
    try:
        for round_no in range(args.rounds):
            for events in BODY_SIZES:
                # Rotate the order every round so no target always runs first or last.
                shift = round_no % len(targets)
                for target in targets[shift:] + targets[:shift]:
                    result = measure(target, events, args, work, started)
                    result.update(target=target, events=events, round=round_no + 1)
                    runs.append(result)
                    say(
                        f"round {round_no + 1} {target:8} {events:3} event(s):"
                        f" {result['ok_per_s']:9,.0f} req/s  p50 {result['p50_us'] / 1000:6.2f}"
                        f" ms  p99 {result['p99_us'] / 1000:6.2f} ms"
                        f"  peak RSS {result['rss']['peak_mb']:5.0f} MB"
                    )
    except BrokenRun as exc:
        print(f"BROKEN RUN: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        for server in list(started):
            server.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    info["load_average_at_end"] = os.getloadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    raw = {"machine": info, "args": {k: str(v) for k, v in vars(args).items()}, "runs": runs}
    if set(TARGETS) <= set(targets):
        summary = summarize(runs)
        table = report(summary, info, args)
        raw["summary"] = summary
        raw["checks"] = checks(summary)
        (args.out / f"server-bench-{stamp}.md").write_text(table)
        (args.out / "server-bench-latest.md").write_text(table)
        say("\n" + table)
    (args.out / f"server-bench-{stamp}.json").write_text(json.dumps(raw, indent=2))
    say(f"raw numbers: {args.out / f'server-bench-{stamp}.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
