"""Sharing a node's activity: deltas cut to the stream's message size, and the outbox a node
cut off from the cluster keeps, bounded (its drops counted), and published once the cluster
is back. Two ingest nodes' pages are in tests/test_cluster_dashboard.py."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest

from qlevents.server.activity import PROCESSED, ActivityLedger, ActivitySettings, Delta
from qlevents.server.activity_jetstream import SharedActivity, _Outbox, split
from qlevents.server.metrics import Metrics
from tests.cluster import NatsCluster

_read = msgspec.msgpack.Decoder(Delta).decode


def _delta(rows: int, body_bytes: int, processed: int = 1) -> Delta:
    body = "x" * body_bytes
    return Delta(
        "n1",
        29_000_000,
        counts=[("acc", PROCESSED, "", processed)],
        live=[("acc", 1.0, PROCESSED, "", f"P{i}", body, "[]") for i in range(rows)],
        failed=[("acc", 1.0, body.encode(), '[{"code": "invalid_type"}]') for _ in range(rows)],
    )


class TestSplit:
    def test_a_small_delta_is_one_message(self) -> None:
        """The usual flush: one message, as it was."""
        delta = _delta(3, 100)
        [message], dropped = split(delta)
        assert (_read(message), dropped) == (delta, 0)

    def test_a_large_delta_is_cut_under_the_limit_and_keeps_every_row(self) -> None:
        """Rows are packed into messages under the limit; the counts go once, in the first."""
        delta = _delta(40, 1000)
        messages, dropped = split(delta, limit=8192)
        parts = [_read(message) for message in messages]
        assert dropped == 0
        assert max(map(len, messages)) <= 8192
        assert [len(p.counts) for p in parts] == [1] + [0] * (len(parts) - 1)
        assert [row for p in parts for row in p.live] == delta.live
        assert [row for p in parts for row in p.failed] == delta.failed

    def test_a_row_over_the_limit_alone_is_dropped_and_counted(self) -> None:
        """An event as sent bigger than a message cannot go: counted, the others still go."""
        delta = msgspec.structs.replace(_delta(1, 100), live=[*_delta(1, 100).live])
        huge = ("acc", 1.0, b"y" * 10_000, "[]")
        messages, dropped = split(msgspec.structs.replace(delta, failed=[huge]), limit=4096)
        assert dropped == 1
        assert [row for m in messages for row in _read(m).failed] == []
        assert [row for m in messages for row in _read(m).live] == delta.live


class TestOutbox:
    def test_past_its_bound_the_oldest_rows_go_first_then_whole_flushes(self) -> None:
        """Cut off for long: the oldest flushes lose their rows (their counts stay), then
        the oldest flushes go whole; both counted, the newest flush always kept."""
        outbox = _Outbox(limit=20_000)
        for _ in range(3):
            outbox.put(_delta(2, 1000))  # ~4 KB each
        assert (outbox.dropped_rows, outbox.dropped_deltas, len(outbox)) == (0, 0, 3)
        outbox.put(_delta(4, 1000))  # over the bound: the oldest flush's 2 + 2 rows go
        assert (outbox.dropped_rows, outbox.dropped_deltas) == (4, 0)
        assert outbox.size <= 20_000
        first = outbox.peek()
        assert first is not None
        assert _read(first[1]).live == [] and _read(first[1]).counts != []
        small = _Outbox(limit=1000)
        for processed in range(100):
            small.put(_delta(0, 0, processed=processed))
        assert small.dropped_deltas > 0 and small.size <= 1000
        assert len(small) == 100 - small.dropped_deltas
        kept = []
        while (head := small.peek()) is not None:
            kept.append(_read(head[1]).counts[0][3])
            small.done(head[0])
        assert kept == list(range(small.dropped_deltas, 100))  # the oldest went

    def test_what_a_full_outbox_drops_is_counted_in_the_metrics(self, tmp_path: Path) -> None:
        """A node cut off from the cluster: its dropped rows and flushes reach /metrics."""
        metrics = Metrics()
        shared = SharedActivity(
            ["nats://127.0.0.1:1"], "t", ActivityLedger(tmp_path), ActivitySettings(),
            outbox_bytes=1000,
        )  # fmt: skip
        shared.drop_observer = metrics.activity_drop_observer()
        text = metrics.exposition().decode()
        assert 'qlevents_activity_dropped_total{what="rows"} 0.0' in text
        for processed in range(100):
            shared.offer(_delta(1, 300, processed=processed))
        assert shared.dropped_rows > 0 and shared.dropped_deltas > 0
        text = metrics.exposition().decode()
        rows, flushes = float(shared.dropped_rows), float(shared.dropped_deltas)
        assert f'qlevents_activity_dropped_total{{what="rows"}} {rows}' in text
        assert f'qlevents_activity_dropped_total{{what="flushes"}} {flushes}' in text

    def test_a_published_message_leaves_the_outbox(self) -> None:
        """``done`` with the head's id removes it; another id (a stale publish) does not."""
        outbox = _Outbox(limit=1 << 20)
        outbox.put(_delta(1, 10))
        outbox.put(_delta(1, 10))
        head = outbox.peek()
        assert head is not None
        outbox.done("not-the-head")
        assert len(outbox) == 2
        outbox.done(head[0])
        assert len(outbox) == 1 and outbox.peek() != head


class TestAcrossNodes:
    """Two nodes' SharedActivity on one NATS server (a stream of the test's own)."""

    @pytest.mark.anyio
    async def test_a_node_cut_off_publishes_its_deltas_once_the_cluster_is_back(
        self, tmp_path: Path
    ) -> None:
        """Node 1's flush reaches node 2's ledger; with the server down node 1 keeps its next
        flush (and its own ledger has it); the server back, node 2 gets it, once."""
        cluster = NatsCluster(tmp_path / "nats", 1).start()
        prefix = f"t{uuid.uuid4().hex[:12]}"
        ledgers = [ActivityLedger(tmp_path / "n1"), ActivityLedger(tmp_path / "n2")]
        shared = [
            SharedActivity(cluster.url.split(","), prefix, ledger, ActivitySettings())
            for ledger in ledgers
        ]
        try:
            for one in shared:
                await one.start()
            minute = int(time.time() // 60)
            first = Delta(ledgers[0].node_id, minute, counts=[("acc", PROCESSED, "", 3)])
            ledgers[0].apply(first, ActivitySettings())
            shared[0].offer(first)
            await _until(lambda: _processed(ledgers[1]) == 3)
            cluster.kill(0)
            second = Delta(ledgers[0].node_id, minute, counts=[("acc", PROCESSED, "", 4)])
            ledgers[0].apply(second, ActivitySettings())
            shared[0].offer(second)
            await asyncio.sleep(0.5)  # publishing fails meanwhile: the delta stays
            assert shared[0].unpublished == 1
            assert (_processed(ledgers[0]), _processed(ledgers[1])) == (7, 3)
            await asyncio.to_thread(cluster.restart, 0)
            await _until(lambda: _processed(ledgers[1]) == 7, within=20)
            assert shared[0].unpublished == 0
            assert _processed(ledgers[0]) == 7  # its own, read back from the stream: skipped
        finally:
            for one in shared:
                await one.stop(timeout=0.5)
            for ledger in ledgers:
                ledger.close()
            cluster.stop()


def _processed(ledger: ActivityLedger) -> int:
    return ledger.totals("acc", time.time() - 120).processed


async def _until(condition: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "not within the time allowed"
        await asyncio.sleep(0.05)
