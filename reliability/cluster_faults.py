"""Cluster faults: kill -9 NATS servers under the cluster store, again and again.

    .venv/bin/python -m reliability.cluster_faults [--cycles 6] [--clients 8] [--seed N]

A three-node cluster with the shipped configuration (sync always, R3) on loopback, and one
cluster store (JetStreamEventStore, default timeouts). Half the clients send 20-event
requests with an Idempotency-Key and retry the same request after every 503 until it is
acknowledged; the other half send without a key and never retry. Each cycle kills one
node for a few seconds, or two (no quorum) for longer than an append retries, restarts them
and waits for traffic to flow.
At the end the truth is read from the stream:

* every acknowledged event is stored (``lost`` must be 0);
* no event is stored twice (a key makes a client's retry a replay; without a key the store's
  own retries must not store twice);
* a request without a key that was refused with StoreUnavailableError (not
  StoreOutcomeUnknownError) stored nothing.

Prints one line per cycle and a summary; exits 1 if any check failed.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tests.cluster import NatsCluster
from tests.store.events import stored

from qlevents import StoreOutcomeUnknownError, StoreUnavailableError
from qlevents.store import jetstream_api as api
from qlevents.store.base import IdempotencyRecord
from qlevents.store.factory import StoreSettings, build_store
from qlevents.store.jetstream import JetStreamEventStore

EVENTS_PER_REQUEST = 20


@dataclass
class Ledger:
    acknowledged: set[str] = field(default_factory=set)
    refused: set[str] = field(default_factory=set)
    """Events of keyless requests refused with StoreUnavailableError: must not be stored."""
    unknown: set[str] = field(default_factory=set)
    """Events of keyless requests whose outcome is unknown: may be stored."""
    answers: Counter[str] = field(default_factory=Counter)
    last_ack: float = field(default_factory=time.monotonic)
    longest_gap: float = 0.0

    def ack(self, ids: list[str]) -> None:
        now = time.monotonic()
        self.longest_gap = max(self.longest_gap, now - self.last_ack)
        self.last_ack = now
        self.acknowledged.update(ids)


async def client(store: JetStreamEventStore, number: int, ledger: Ledger, stop: asyncio.Event):
    keyed = number % 2 == 0
    for request in range(1_000_000):
        if stop.is_set():
            return
        events = stored(EVENTS_PER_REQUEST, prefix=f"c{number}-{request}-")
        ids = [event.id for event in events]
        key = IdempotencyRecord("k1", f"c{number}-{request}", b"f", b"{}") if keyed else None
        while True:
            try:
                await store.append(events, key)
            except StoreOutcomeUnknownError:
                ledger.answers["unknown"] += 1
                if keyed:
                    await asyncio.sleep(0.1)
                    continue
                ledger.unknown.update(ids)
            except StoreUnavailableError:
                ledger.answers["unavailable"] += 1
                if keyed:
                    await asyncio.sleep(0.1)
                    continue
                ledger.refused.update(ids)
            else:
                ledger.answers["stored"] += 1
                ledger.ack(ids)
            break


async def leader_of(store: JetStreamEventStore, cluster: NatsCluster) -> int:
    assert store._nc is not None
    while True:
        try:
            info = await api.stream_info(store._nc, store.stream, 1.0)
            if info.cluster is not None and info.cluster.leader is not None:
                return cluster.index_of(info.cluster.leader)
        except Exception:
            pass
        await asyncio.sleep(0.1)


async def flowing(ledger: Ledger, requests: int = 20, timeout: float = 60.0) -> bool:
    start = ledger.answers["stored"]
    deadline = time.monotonic() + timeout
    while ledger.answers["stored"] < start + requests:
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def run(args: argparse.Namespace, directory: Path) -> bool:
    rng = random.Random(args.seed)
    cluster = NatsCluster(directory, 3).start()
    store = build_store(StoreSettings(store=cluster.url, nats_max_bytes=1 << 30), directory)
    assert isinstance(store, JetStreamEventStore)
    ok = True
    try:
        await store.open()
        ledger, stop = Ledger(), asyncio.Event()
        tasks = [asyncio.create_task(client(store, n, ledger, stop)) for n in range(args.clients)]
        await flowing(ledger)
        for cycle in range(1, args.cycles + 1):
            leader = await leader_of(store, cluster)
            fault = args.fault or rng.choice(["follower", "leader", "any", "two"])
            victims = {
                "follower": [rng.choice([i for i in range(3) if i != leader])],
                "leader": [leader],
                "any": [rng.randrange(3)],
                "two": rng.sample(range(3), 2),
            }[fault]
            before = ledger.answers.copy()
            started = time.monotonic()
            for index in victims:
                cluster.kill(index)
            # Two down: longer than an append retries (10 s), so that appends fail.
            await asyncio.sleep(rng.uniform(11.0, 15.0) if fault == "two" else rng.uniform(1, 6))
            await asyncio.gather(*(asyncio.to_thread(cluster.restart, i) for i in victims))
            recovered = await flowing(ledger)
            ok &= recovered
            delta = ledger.answers - before
            print(
                f"cycle {cycle:2d}: kill {fault:8s} {victims}  {time.monotonic() - started:5.1f} s"
                f"  stored {delta['stored']:5d}  unavailable {delta['unavailable']:3d}"
                f"  unknown {delta['unknown']:3d}  {'recovered' if recovered else 'STUCK'}",
                flush=True,
            )
        steady_start, steady_acks = time.monotonic(), len(ledger.acknowledged)
        await asyncio.sleep(3)
        rate = (len(ledger.acknowledged) - steady_acks) / (time.monotonic() - steady_start)
        stop.set()
        await asyncio.gather(*tasks)
        ids = [event.id for _, event in await store.read(limit=100_000_000)]
        counts = Counter(ids)
        duplicates = sum(1 for n in counts.values() if n > 1)
        lost = len(ledger.acknowledged - counts.keys())
        refused_stored = len(ledger.refused & counts.keys())
        unexplained = len(counts.keys() - ledger.acknowledged - ledger.unknown)
        print(
            f"\nacknowledged {len(ledger.acknowledged)}  stored {len(ids)}  lost {lost}"
            f"  duplicates {duplicates}  refused-but-stored {refused_stored}"
            f"  stored-unexplained {unexplained}  longest gap {ledger.longest_gap:.1f} s"
            f"  steady {rate:,.0f} events/s ({args.clients} clients, {EVENTS_PER_REQUEST}"
            " events per request)"
        )
        ok &= lost == 0 and duplicates == 0 and refused_stored == 0 and unexplained == 0
    finally:
        await store.close()
        cluster.stop()
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=6)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--fault", choices=["follower", "leader", "any", "two"], help="only this fault"
    )
    args = parser.parse_args()
    if args.seed is None:
        args.seed = random.randrange(1 << 30)
    print(f"seed {args.seed}")
    with tempfile.TemporaryDirectory(prefix="qlevents-cluster-") as directory:
        ok = asyncio.run(run(args, Path(directory)))
    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
