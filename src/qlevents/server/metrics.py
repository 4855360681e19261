"""Prometheus metrics of the service.

With ``--workers N`` each worker writes its values to ``PROMETHEUS_MULTIPROC_DIR`` (set by
``qlevents serve`` before the workers start) and ``/metrics`` adds them up across workers.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

from qlevents.store.base import CommitStats

if TYPE_CHECKING:
    from qlevents.store.jetstream import PublishStats

_LATENCY_BUCKETS: Final = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip
_GROUP_BUCKETS: Final = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

CONTENT_TYPE: Final = CONTENT_TYPE_LATEST


class Metrics:
    """The service's counters and histograms, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "qlevents_requests", "HTTP requests answered, by route and status.",
            ["route", "status"], registry=r,
        )  # fmt: skip
        self.events_processed = Counter(
            "qlevents_events_processed", "Events accepted and stored.", registry=r
        )
        self.events_failed = Counter(
            "qlevents_events_failed", "Events rejected, by the code of their first error.",
            ["code"], registry=r,
        )  # fmt: skip
        self.request_seconds = Histogram(
            "qlevents_request_duration_seconds", "Time to answer POST /events.",
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.commit_seconds = Histogram(
            "qlevents_commit_duration_seconds", "Time of one store commit (one fsync).",
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.commit_requests = Histogram(
            "qlevents_commit_group_requests", "Requests committed together (group commit).",
            buckets=_GROUP_BUCKETS, registry=r,
        )  # fmt: skip
        self.commit_events = Histogram(
            "qlevents_commit_group_events", "Events committed together (group commit).",
            buckets=(1, 10, 100, 1000, 10_000, 100_000), registry=r,
        )  # fmt: skip
        # The cluster store (JetStream): each append's publish, its retries and outcome.
        self.publish_seconds = Histogram(
            "qlevents_publish_duration_seconds",
            "Time of one append to the NATS stream, retries included.",
            buckets=(*_LATENCY_BUCKETS, 10.0, 20.0), registry=r,
        )  # fmt: skip
        self.publish_retries = Counter(
            "qlevents_publish_retries", "Publishes to the NATS stream sent again.", registry=r
        )
        self.publish_outcomes = Counter(
            "qlevents_publish_outcomes",
            "Appends to the NATS stream by outcome: stored, replayed (a key's first answer),"
            " full, unavailable, unknown (the last three answered 503).",
            ["outcome"], registry=r,
        )  # fmt: skip
        # On a cluster: dashboard activity a worker could not share with the other nodes.
        self.activity_dropped = Counter(
            "qlevents_activity_dropped",
            "Dashboard activity that never reached the other nodes: the worker's outbox was"
            " full while the cluster was out of reach (rows: live and failed events as sent;"
            " flushes: whole seconds of counts).",
            ["what"], registry=r,
        )  # fmt: skip
        self._requests_children: dict[tuple[str, int], Counter] = {}
        self._outcome_children: dict[str, Counter] = {}

    def request(self, route: str, status: int) -> None:
        child = self._requests_children.get((route, status))
        if child is None:
            child = self.requests.labels(route, str(status))
            self._requests_children[(route, status)] = child
        child.inc()

    def commit(self, stats: CommitStats) -> None:
        self.commit_seconds.observe(stats.seconds)
        self.commit_requests.observe(stats.requests)
        self.commit_events.observe(stats.events)

    def publish(self, stats: PublishStats) -> None:
        self.publish_seconds.observe(stats.seconds)
        if stats.attempts > 1:
            self.publish_retries.inc(stats.attempts - 1)
        child = self._outcome_children.get(stats.outcome)
        if child is None:
            child = self._outcome_children[stats.outcome] = self.publish_outcomes.labels(
                stats.outcome
            )
        child.inc()

    def activity_drop_observer(self) -> Callable[[int, int], None]:
        """What a cluster node's shared activity tells its drops (rows, flushes); from now
        on both counters show, at 0 until something is dropped."""
        rows = self.activity_dropped.labels("rows")
        flushes = self.activity_dropped.labels("flushes")

        def observe(dropped_rows: int, dropped_flushes: int) -> None:
            rows.inc(dropped_rows)
            flushes.inc(dropped_flushes)

        return observe

    def exposition(self) -> bytes:
        if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)
