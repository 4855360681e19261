"""Operating the service: health, readiness, metrics, the access log, shutdown, workers,
and the OpenAPI document checked against what the server does.

Tests that only send requests and read answers (or the log lines of their own requests)
use the session's shared server; those that stop, restart or configure one start their own.
"""

from __future__ import annotations

import json
import re
import signal
import threading
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from qlevents.server import openapi
from tests.support import (
    ADMIN_TOKEN,
    RunningServer,
    child_pids,
    conversion,
    metric,
    running_server,
    view,
)


class TestProbes:
    def test_healthz_and_readyz(self, shared_server: RunningServer) -> None:
        """/healthz says alive; /readyz says the store takes writes."""
        assert shared_server.get("/healthz").json() == {"status": "ok"}
        assert shared_server.get("/readyz").json() == {"status": "ready"}


class TestMetrics:
    def test_counts_processed_failed_and_commits(
        self, shared_server: RunningServer, account: str
    ) -> None:
        """/metrics counts events by outcome and code, requests, and commit group sizes."""
        before = shared_server.get("/metrics").text
        shared_server.post([view(account), view(account), {"event": "view"}, view("qlk_x")])
        after = shared_server.get("/metrics").text

        def counted(name: str, labels: str = "") -> float:
            """What ``name`` counted for this test's request."""
            return metric(after, name, labels) - metric(before, name, labels, default=0)

        assert counted("qlevents_events_processed_total") == 2
        assert counted("qlevents_events_failed_total", 'code="missing_field"') == 1
        assert counted("qlevents_events_failed_total", 'code="unknown_client_key"') == 1
        assert counted("qlevents_requests_total", 'route="/events",status="200"') == 1
        assert counted("qlevents_commit_group_requests_count") >= 1
        assert counted("qlevents_commit_duration_seconds_count") >= 1
        assert counted("qlevents_request_duration_seconds_count") == 1

    def test_workers_share_one_store_and_one_metrics_page(
        self, serve: Callable[..., RunningServer]
    ) -> None:
        """With --workers 2 every event is stored once and /metrics adds up both workers."""
        server = serve("--workers", "2")
        key = server.client_key
        with httpx.Client() as client:
            for i in range(40):
                client.post(server.events_url, json=[view(key, product_id=f"p{i}")])
        assert len(server.stored()) == 40
        text = server.get("/metrics").text
        assert metric(text, "qlevents_events_processed_total") == 40
        assert server.stop(signal.SIGTERM) == 0


class TestAccessLog:
    def test_one_line_per_request_with_status_counts_and_duration(
        self, shared_server: RunningServer, account: str
    ) -> None:
        """Each request logs one line: status, processed and failed counts, duration."""
        mark = shared_server.log_mark()
        shared_server.post([view(account), {"event": "x"}])
        shared_server.post(b"nope")
        first, second = shared_server.wait_for_log('"POST /events"', count=2, since=mark)
        assert re.search(r'"POST /events" 200 processed=1 failed=1 [0-9.]+ms$', first)
        assert re.search(r'"POST /events" 400 processed=0 failed=0 [0-9.]+ms$', second)

    def test_control_characters_in_the_path_stay_on_one_line(
        self, shared_server: RunningServer
    ) -> None:
        """A path with a newline is escaped: one request, one log line."""
        mark = shared_server.log_mark()
        shared_server.get("/a%0Ab")
        [line] = shared_server.wait_for_log('"GET /a', since=mark)
        assert "\\n" in line


class TestForwardedFor:
    def test_x_forwarded_for_is_ignored_by_default(self, shared_server: RunningServer) -> None:
        """Without --forwarded-allow-ips the log shows the real peer, not what a client claims."""
        mark = shared_server.log_mark()
        shared_server.post(b"[]", headers={"x-forwarded-for": "203.0.113.9"})
        [line] = shared_server.wait_for_log('"POST /events"', since=mark)
        assert "203.0.113.9" not in line and "127.0.0.1:" in line

    def test_x_forwarded_for_from_a_trusted_proxy(
        self, serve: Callable[..., RunningServer]
    ) -> None:
        """Behind a named proxy, the log shows the address the proxy forwarded for."""
        server = serve("--forwarded-allow-ips", "127.0.0.1")
        server.post(b"[]", headers={"x-forwarded-for": "203.0.113.9"})
        [line] = server.wait_for_log('"POST /events"')
        assert "203.0.113.9" in line


class TestShutdown:
    def test_sigterm_finishes_in_flight_requests_and_exits_0(self, server: RunningServer) -> None:
        """SIGTERM during traffic: every 200 answered is stored, and the exit code is 0."""
        key = server.client_key
        answered: list[dict[str, Any]] = []
        stop = threading.Event()

        def traffic() -> None:
            with httpx.Client(timeout=5) as client:
                while not stop.is_set():
                    try:
                        response = client.post(server.events_url, json=[view(key)] * 10)
                    except httpx.HTTPError:
                        return
                    if response.status_code == 200:
                        answered.extend(response.json()["processed"])

        threads = [threading.Thread(target=traffic) for _ in range(4)]
        for t in threads:
            t.start()
        while len(answered) < 200:
            threading.Event().wait(0.01)
        code = server.stop(signal.SIGTERM)
        stop.set()
        for t in threads:
            t.join()
        assert code == 0
        stored = {e["id"] for e in server.stored()}
        assert {e["id"] for e in answered} <= stored

    def test_no_writer_process_outlives_the_server(self, server: RunningServer) -> None:
        """The store's writer process ends with its server, even after kill -9."""
        assert server.post([view(server.client_key)]).status_code == 200
        assert server.process is not None
        writers = child_pids(server.process.pid)
        assert len(writers) == 1, writers
        assert "qlevents.store.sqlite_writer" in read_cmdline(writers[0])
        server.stop(signal.SIGKILL)  # waits up to 20 s for the writer to be gone
        assert not running(writers[0])
        assert len(server.restart().stored()) == 1


def read_cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


class TestFirstRun:
    def test_serve_creates_a_demo_account_and_prints_its_key(
        self, shared_server: RunningServer
    ) -> None:
        """The first `serve` prints a client key and endpoint that work with the spec's curl."""
        log = shared_server.log()
        assert "client key: qlk_" in log and shared_server.events_url in log
        assert shared_server.client_key in log
        assert shared_server.post([view(shared_server.client_key)]).json()["processed"]

    def test_second_run_creates_nothing(self, server: RunningServer) -> None:
        """Restarting with accounts present creates no second demo account."""
        server.restart()
        assert server.log().count("First run") == 1


# --- the OpenAPI document ------------------------------------------------------------------

DOC = json.loads((resources.files("qlevents.server") / "openapi.json").read_text())


def schema_for(path: str, method: str, status: int) -> dict[str, Any]:
    response = DOC["paths"][path][method]["responses"][str(status)]
    ref = response["content"]["application/json"]["schema"]
    return {**ref, "components": DOC["components"]}


@pytest.fixture(scope="module")
def small_body_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server with a 1 MB body limit (a 413 costs a 1 MB body, not 5 MiB)."""
    with running_server(
        tmp_path_factory.mktemp("small-body"),
        "--max-body-bytes", "1000000", "--admin-token", ADMIN_TOKEN,
    ) as server:  # fmt: skip
        yield server


class TestOpenAPI:
    def test_committed_document_is_current(self) -> None:
        """openapi.json equals what the generator makes from the wire types (make openapi)."""
        assert json.loads(openapi.render()) == DOC

    def test_served_document_is_the_committed_one(self, shared_server: RunningServer) -> None:
        """GET /openapi.json serves the document kept in the repository."""
        assert shared_server.get("/openapi.json").json() == DOC

    def test_document_is_valid_openapi_31_json_schema(self) -> None:
        """Every schema in the document is a valid JSON Schema (2020-12, OpenAPI 3.1)."""
        assert DOC["openapi"] == "3.1.0"
        for schema in DOC["components"]["schemas"].values():
            jsonschema.Draft202012Validator.check_schema(schema)

    @pytest.mark.parametrize(
        ("body", "headers", "status"),
        [
            ("valid", {}, 200),
            ("mixed", {}, 200),
            (b"nope", {}, 400),
            (b"[]" + b" " * 2_000_000, {}, 413),
            (b"[]", {"content-encoding": "br"}, 415),
        ],
    )
    def test_answers_match_the_document(
        self, small_body_server: RunningServer, body: Any, headers: dict[str, str], status: int
    ) -> None:
        """Answers of every documented status validate against the document's schema."""
        server = small_body_server
        key = server.create_account("openapi")
        if body == "valid":
            body = [view(key), conversion(key)]
        elif body == "mixed":
            body = [view(key), {"event": "conversion", "units": 0}, 3]
        answer = server.post(body, headers=headers)
        assert answer.status_code == status
        assert answer.headers["content-type"] == "application/json"
        jsonschema.validate(answer.json(), schema_for("/events", "post", status))

    def test_requests_valid_by_the_document_are_processed(
        self, shared_server: RunningServer, account: str
    ) -> None:
        """The spec's examples validate against the request schema and are processed."""
        server = shared_server
        sent = [view(account), conversion(account)]
        request_schema = {
            "$ref": "#/components/schemas/EventBatch",
            "components": DOC["components"],
        }
        jsonschema.validate(sent, request_schema)
        assert len(server.post(sent).json()["processed"]) == 2
