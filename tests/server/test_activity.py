"""The activity ledger: counts, lag, failed events as sent and the live ring, bounded."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from qlevents.events import ErrorEntry, StoredEvent
from qlevents.server.activity import (
    FAILED,
    PROCESSED,
    ActivityLedger,
    ActivityRecorder,
    ActivitySettings,
    Delta,
)

KEYS = {"qlk_a": "acc_a", "qlk_b": "acc_b", "qlk_moved": "acc_m"}


def _stored(key: str, n: int, product: str = "P1") -> list[StoredEvent]:
    return [
        StoredEvent(id=f"id{i}", received_at="t", client_key=key, event="view",
                    product_id=product, price=1.0, permalink="https://s.example/p")
        for i in range(n)
    ]  # fmt: skip


def _failed(key: str, code: str, index: int = 0, **extra: str) -> tuple[msgspec.Raw, ErrorEntry]:
    raw = msgspec.Raw(json.dumps({"client_key": key, "event": "view", "product_id": "X9"}).encode())
    return raw, ErrorEntry(index, "price", code, f"{code} message", **extra)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[ActivityLedger]:
    opened = ActivityLedger(tmp_path)
    yield opened
    opened.close()


def _recorder(ledger: ActivityLedger, **settings: float) -> ActivityRecorder:
    return ActivityRecorder(ledger, KEYS.get, ActivitySettings(**settings))  # type: ignore[arg-type]


class TestCounts:
    def test_processed_and_failed_are_counted_per_account(self, ledger: ActivityLedger) -> None:
        """Each account's processed and failed events, failed by code, add up exactly."""
        recorder = _recorder(ledger)
        now = time.time()
        bad, error = _failed("qlk_a", "invalid_type")
        recorder.record(_stored("qlk_a", 3), [bad], [error], now, now + 0.002)
        recorder.record(_stored("qlk_b", 2) + _stored("qlk_a", 1), [], [], now, now + 0.004)
        recorder.flush()
        totals = ledger.totals("acc_a", now - 60)
        assert (totals.processed, totals.failed, totals.by_code) == (4, 1, {"invalid_type": 1})
        assert ledger.totals("acc_b", now - 60).processed == 2
        assert ledger.last_event("acc_a") == pytest.approx(now)

    def test_an_event_counts_once_under_its_first_problem(self, ledger: ActivityLedger) -> None:
        """Two problems of one event: one failure, under the first code (as /metrics)."""
        recorder = _recorder(ledger)
        raw, first = _failed("qlk_a", "invalid_type")
        _, second = _failed("qlk_a", "too_long")
        recorder.record([], [raw], [first, second], time.time(), time.time())
        recorder.flush()
        assert ledger.totals("acc_a", time.time() - 60).by_code == {"invalid_type": 1}

    def test_wrong_endpoint_is_kept_with_the_endpoint(self, ledger: ActivityLedger) -> None:
        """Events sent here for an account homed elsewhere: counted by their right endpoint."""
        recorder = _recorder(ledger)
        url = "https://eu.example/events"
        raw, error = _failed("qlk_moved", "wrong_endpoint", endpoint=url)
        _, again = _failed("qlk_moved", "wrong_endpoint", index=1, endpoint=url)
        recorder.record([], [raw, raw], [error, again], time.time(), time.time())
        recorder.flush()
        totals = ledger.totals("acc_m", time.time() - 60)
        assert totals.wrong_endpoint == {"https://eu.example/events": 2}

    def test_unknown_keys_are_counted_under_no_account(self, ledger: ActivityLedger) -> None:
        """A key no account has still shows up, under the empty account."""
        recorder = _recorder(ledger)
        raw, error = _failed("qlk_nobody", "unknown_client_key")
        recorder.record([], [raw], [error], time.time(), time.time())
        recorder.flush()
        assert ledger.totals("", time.time() - 60).by_code == {"unknown_client_key": 1}

    def test_lag_is_receipt_to_durable(self, ledger: ActivityLedger) -> None:
        """Mean and worst of the requests' receipt-to-durable times."""
        recorder = _recorder(ledger)
        now = time.time()
        recorder.record(_stored("qlk_a", 1), [], [], now, now + 0.010)
        recorder.record(_stored("qlk_a", 1), [], [], now, now + 0.030)
        recorder.flush()
        n, mean, worst = ledger.lag("acc_a", now - 60)
        assert (n, mean, worst) == (2, pytest.approx(0.020), pytest.approx(0.030))

    def test_series_has_a_slot_per_step(self, ledger: ActivityLedger) -> None:
        """The chart's series covers the range with zeros where nothing happened."""
        recorder = _recorder(ledger)
        recorder.record(_stored("qlk_a", 5), [], [], time.time(), time.time())
        recorder.flush()
        times, processed, failed = ledger.series("acc_a", time.time() - 3600, 5)
        assert len(times) == len(processed) == len(failed) >= 12
        assert sum(processed) == 5 and sum(failed) == 0


class TestBounds:
    def test_live_ring_samples_above_its_rate_and_counts_the_rest(
        self, ledger: ActivityLedger
    ) -> None:
        """Above live_per_second the ring keeps a sample; the skipped are counted."""
        recorder = _recorder(ledger, live_per_second=5)
        recorder.record(_stored("qlk_a", 8), [], [], time.time(), time.time())
        recorder.flush()
        assert len(ledger.live("acc_a")) == 5
        assert ledger.totals("acc_a", time.time() - 60).live_skipped == 3

    def test_processed_and_failed_share_the_live_rate(self, ledger: ActivityLedger) -> None:
        """live_per_second counts both outcomes; what it leaves out of either is counted."""
        recorder = _recorder(ledger, live_per_second=2)
        pairs = [_failed("qlk_a", "invalid_type", index=i) for i in range(3)]
        now = time.time()
        recorder.record(_stored("qlk_a", 1), [r for r, _ in pairs], [e for _, e in pairs], now, now)
        recorder.flush()
        assert [e.outcome for e in ledger.live("acc_a")] == ["failed", "processed"]
        totals = ledger.totals("acc_a", now - 60)
        assert (totals.processed, totals.failed, totals.live_skipped) == (1, 3, 2)

    def test_live_ring_keeps_the_newest(self, ledger: ActivityLedger) -> None:
        """Only live_keep events per account stay, the newest."""
        recorder = _recorder(ledger, live_keep=4)
        for i in range(3):
            recorder.record(_stored("qlk_a", 3, product=f"P{i}"), [], [], time.time(), time.time())
            recorder.flush()
        kept = ledger.live("acc_a")
        assert len(kept) == 4 and kept[0].product_id == "P2"

    def test_live_filters(self, ledger: ActivityLedger) -> None:
        """Filter by outcome, code and product id; newest first; after a cursor."""
        recorder = _recorder(ledger)
        raw, error = _failed("qlk_a", "invalid_type")
        recorder.record(_stored("qlk_a", 1), [raw], [error], time.time(), time.time())
        recorder.flush()
        failed = ledger.live("acc_a", outcome="failed")
        assert [(e.code, e.product_id) for e in failed] == [("invalid_type", "X9")]
        assert json.loads(failed[0].body)["product_id"] == "X9"
        assert failed[0].errors[0]["code"] == "invalid_type"
        assert [e.outcome for e in ledger.live("acc_a", product_id="P1")] == ["processed"]
        newest = ledger.live("acc_a")[0].id
        assert ledger.live("acc_a", after=newest) == []

    def test_failed_events_are_kept_as_sent_and_bounded(self, ledger: ActivityLedger) -> None:
        """At most failed_per_second kept per flush, all counted; export gives NDJSON."""
        recorder = _recorder(ledger, failed_per_second=2)
        pairs = [_failed("qlk_a", "invalid_type", index=i) for i in range(5)]
        raws = [raw for raw, _ in pairs]
        recorder.record([], raws, [e for _, e in pairs], time.time(), time.time())
        recorder.flush()
        assert ledger.totals("acc_a", time.time() - 60).failed == 5
        kept = ledger.failed_events("acc_a")
        assert len(kept) == 2 and kept[0].body == bytes(raws[0])
        lines = [json.loads(line) for line in ledger.export_failed("acc_a")]
        assert [line["event"]["product_id"] for line in lines] == ["X9", "X9"]
        assert lines[0]["errors"][0]["code"] == "invalid_type"

    def test_failed_keep_holds_after_every_write(self, ledger: ActivityLedger) -> None:
        """The newest failed_keep per account stay, flush after flush (not once a minute)."""
        recorder = _recorder(ledger, failed_keep=3)
        for n in range(3):
            raw = msgspec.Raw(json.dumps({"client_key": "qlk_a", "product_id": f"F{n}"}).encode())
            errors = [ErrorEntry(i, "price", "missing_field", "price is required") for i in (0, 1)]
            recorder.record([], [raw, raw], errors, time.time(), 0.0)
            recorder.flush()
            assert len(ledger.failed_events("acc_a")) == min(2 * (n + 1), 3)
        kept = [json.loads(e.body)["product_id"] for e in ledger.failed_events("acc_a")]
        assert kept == ["F2", "F2", "F1"]

    def test_failed_events_older_than_failed_days_go(self, ledger: ActivityLedger) -> None:
        """Failed events received more than failed_days ago are deleted; newer ones stay."""
        recorder = _recorder(ledger, failed_days=1)
        old, error = _failed("qlk_a", "invalid_type")
        new, _ = _failed("qlk_b", "invalid_type")
        recorder.record([], [old], [error], time.time() - 2 * 86400, 0.0)
        recorder.record([], [new], [error], time.time() - 0.5 * 86400, 0.0)
        recorder.flush()
        assert ledger.failed_events("acc_a") == []
        assert len(ledger.failed_events("acc_b")) == 1

    def test_export_by_client_key_includes_keys_no_account_has(
        self, ledger: ActivityLedger
    ) -> None:
        """--client-key picks the events sent with it; an unknown key's account is null."""
        recorder = _recorder(ledger)
        for key in ("qlk_a", "qlk_nobody"):
            raw, error = _failed(key, "unknown_client_key")
            recorder.record([], [raw], [error], time.time(), 0.0)
        recorder.flush()
        lines = [json.loads(line) for line in ledger.export_failed(client_key="qlk_nobody")]
        assert [(line["account"], line["event"]["client_key"]) for line in lines] == [
            (None, "qlk_nobody")
        ]
        assert [json.loads(line)["account"] for line in ledger.export_failed()] == ["acc_a", None]

    def test_key_uses_are_written_at_most_once_a_minute(self, ledger: ActivityLedger) -> None:
        """The last use of each key reaches the account book, not on every flush."""
        written: list[dict[str, float]] = []
        recorder = ActivityRecorder(ledger, KEYS.get, key_uses=lambda u: written.append(dict(u)))
        recorder.record(_stored("qlk_a", 1), [], [], 100.0, 100.0)
        recorder.flush()
        recorder.record(_stored("qlk_b", 1), [], [], 101.0, 101.0)
        recorder.flush()
        assert written == [{"qlk_a": 100.0}]


class TestStop:
    @pytest.mark.anyio
    async def test_stop_waits_for_a_write_already_running(self, ledger: ActivityLedger) -> None:
        """Stopping during a flush waits for it: the two writes never overlap (they share
        one SQLite connection, and the books are closed right after stop)."""
        import asyncio
        import threading

        recorder = _recorder(ledger, activity_flush_seconds=0.01)
        inside, overlaps = threading.Lock(), []
        write = recorder._write

        def slow_write(pending: object) -> None:
            if not inside.acquire(blocking=False):
                overlaps.append(pending)
                return
            try:
                time.sleep(0.2)
                write(pending)  # type: ignore[arg-type]
            finally:
                inside.release()

        recorder._write = slow_write  # type: ignore[method-assign]
        recorder.record(_stored("qlk_a", 1), [], [], time.time(), time.time())
        await recorder.start()
        await asyncio.sleep(0.05)  # the first flush is in its thread now
        await recorder.stop()
        assert overlaps == []


def _delta(origin: str, processed: int = 1, account: str = "acc_a") -> Delta:
    now = time.time()
    return Delta(
        origin,
        int(now // 60),
        counts=[(account, PROCESSED, "", processed)],
        last=[(account, now)],
        live=[(account, now, PROCESSED, "", "P1", "{}", "[]")],
    )


class TestSharedDeltas:
    """The deltas of a cluster's activity stream, applied once by sequence."""

    def test_a_sequence_applied_again_counts_once(self, ledger: ActivityLedger) -> None:
        """A redelivered batch (or one overlapping the last) adds only what is new."""
        ledger.applied_sequence("stream-1")
        first = ledger.apply_shared([(1, _delta("n2")), (2, _delta("n2"))], ActivitySettings())
        again = ledger.apply_shared([(2, _delta("n2")), (3, _delta("n2"))], ActivitySettings())
        assert (first, again) == (2, 1)
        assert ledger.totals("acc_a", time.time() - 60).processed == 3
        assert len(ledger.live("acc_a")) == 3
        assert ledger.applied_sequence("stream-1") == 3

    def test_the_nodes_own_deltas_are_not_added_twice(self, ledger: ActivityLedger) -> None:
        """Its own flushes are in the ledger already: skipped, their sequence passed."""
        ledger.applied_sequence("stream-1")
        ledger.apply(_delta(ledger.node_id, 5), ActivitySettings())
        added = ledger.apply_shared(
            [(1, _delta(ledger.node_id, 5)), (2, _delta("n2", 1))], ActivitySettings()
        )
        assert added == 1
        assert ledger.totals("acc_a", time.time() - 60).processed == 6
        assert ledger.applied_sequence("stream-1") == 2

    def test_workers_applying_the_same_stream_at_once_count_it_once(self, tmp_path: Path) -> None:
        """Two workers of a node (two connections to one file), each applying the whole
        stream in its own batches concurrently: every delta counted exactly once."""
        deltas = [(sequence, _delta("n2")) for sequence in range(1, 301)]
        workers = [ActivityLedger(tmp_path), ActivityLedger(tmp_path)]
        workers[0].applied_sequence("stream-1")

        def apply_all(worker: ActivityLedger, size: int) -> None:
            for start in range(0, len(deltas), size):
                worker.apply_shared(deltas[start : start + size], ActivitySettings())

        threads = [
            threading.Thread(target=apply_all, args=(worker, size))
            for worker, size in zip(workers, (7, 11), strict=True)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        try:
            assert workers[0].totals("acc_a", time.time() - 60).processed == 300
            assert workers[1].applied_sequence("stream-1") == 300
        finally:
            for worker in workers:
                worker.close()

    def test_a_stream_made_anew_is_read_from_its_start(self, ledger: ActivityLedger) -> None:
        """Another stream identity (deleted and created again): its sequences start over."""
        ledger.applied_sequence("created-1")
        ledger.apply_shared([(1, _delta("n2")), (2, _delta("n2"))], ActivitySettings())
        assert ledger.applied_sequence("created-1") == 2
        assert ledger.applied_sequence("created-2") == 0
        assert ledger.apply_shared([(1, _delta("n2"))], ActivitySettings()) == 1

    def test_a_nodes_id_is_kept_with_its_ledger(self, tmp_path: Path) -> None:
        """Every worker of a node (and a restart) has the same id; another node another."""
        first, again = ActivityLedger(tmp_path / "a"), ActivityLedger(tmp_path / "a")
        other = ActivityLedger(tmp_path / "b")
        try:
            assert first.node_id == again.node_id != other.node_id
        finally:
            for opened in (first, again, other):
                opened.close()

    def test_a_flush_is_handed_to_share_as_written(self, ledger: ActivityLedger) -> None:
        """On a cluster each flush's delta (by account id, its origin this node) is shared."""
        shared: list[Delta] = []
        recorder = ActivityRecorder(ledger, KEYS.get, share=shared.append)
        now = time.time()
        bad, error = _failed("qlk_b", "invalid_type")
        recorder.record(_stored("qlk_a", 2), [bad], [error], now, now + 0.01)
        recorder.flush()
        recorder.flush()  # nothing new: nothing shared
        [delta] = shared
        assert delta.origin == ledger.node_id
        assert sorted(delta.counts) == [
            ("acc_a", PROCESSED, "", 2),
            ("acc_b", FAILED, "invalid_type", 1),
        ]
        assert [row[0] for row in delta.failed] == ["acc_b"]
        assert json.loads(delta.failed[0][3])[0]["code"] == "invalid_type"
