"""The ASGI app in process: the route table of each listener, the shape of its errors per API,
and the metrics' route labels. (Over real HTTP: test_events_api.py, test_admin_api.py.)"""

from __future__ import annotations

import asyncio
import gc
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from qlevents import StoreOutcomeUnknownError, StoreUnavailableError
from qlevents.accounts import AccountBook
from qlevents.server import EventsApp, Settings
from qlevents.store import EventStore, MemoryEventStore
from qlevents.store.factory import StoreSettings
from tests.support import ADMIN_TOKEN, LocalApp, view

pytestmark = pytest.mark.anyio

AUTH = {"authorization": f"Bearer {ADMIN_TOKEN}"}
MAIN = "http://127.0.0.1:8080"
ADMIN_PORT = 8081
ADMIN = f"http://127.0.0.1:{ADMIN_PORT}"

Open = Callable[..., Any]


@asynccontextmanager
async def running(app: EventsApp) -> AsyncIterator[httpx.AsyncClient]:
    """The app through its lifespan, with a client that reaches it in process."""
    threshold = gc.get_threshold()
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def send(message: Any) -> None:
        await outbox.put(message)

    lifespan = asyncio.create_task(app({"type": "lifespan"}, inbox.get, send))
    await inbox.put({"type": "lifespan.startup"})
    assert (await outbox.get())["type"] == "lifespan.startup.complete"
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as client:
            yield client
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        assert (await outbox.get())["type"] == "lifespan.shutdown.complete"
        await lifespan
        # Start-up tunes the collector for a server process; give the test process its own back.
        gc.unfreeze()
        gc.set_threshold(*threshold)


@pytest.fixture
def make_app(tmp_path: Path) -> Callable[..., EventsApp]:
    def make(store: EventStore | None = None, **settings: Any) -> EventsApp:
        options = {
            "storage": StoreSettings(store="memory"),
            "access_log": False,
            "admin_token": ADMIN_TOKEN,
        }
        return EventsApp(Settings(data_dir=tmp_path, **{**options, **settings}), store=store)

    return make


def contract_error(answer: httpx.Response, status: int) -> dict[str, Any]:
    """The one error of an answer in the events contract's shape."""
    assert answer.status_code == status
    body = answer.json()
    assert body["processed"] == [] and body["failed"] == []
    [error] = body["errors"]
    assert error["index"] is None and error["field"] is None
    return dict(error)


def problem(answer: httpx.Response, status: int) -> dict[str, Any]:
    """An admin API error: exactly ``{"code", "message"}``."""
    assert answer.status_code == status
    body = answer.json()
    assert set(body) == {"code", "message"}
    return dict(body)


class TestMainListener:
    async def test_probes_and_documents_are_served(self, make_app: Open) -> None:
        """healthz, readyz, metrics and openapi.json answer GET, and HEAD with no body."""
        async with running(make_app()) as client:
            assert (await client.get(f"{MAIN}/healthz")).json() == {"status": "ok"}
            assert (await client.get(f"{MAIN}/readyz")).json() == {"status": "ready"}
            metrics = await client.get(f"{MAIN}/metrics")
            assert metrics.headers["content-type"].startswith("text/plain")
            assert "qlevents_requests_total" in metrics.text
            document = await client.get(f"{MAIN}/openapi.json")
            assert document.headers["content-type"] == "application/json"
            assert "/events" in document.json()["paths"]
            head = await client.head(f"{MAIN}/healthz")
            assert head.status_code == 200 and head.content == b""

    async def test_events_are_taken_in_process(self, make_app: Open) -> None:
        """POST /events, taken before the table, stores a valid event."""
        app = make_app()
        async with running(app) as client:
            key = app.directory.change(lambda book: book.add("shop")).client_key
            answer = await client.post(f"{MAIN}/events", json=[view(key)])
            assert answer.status_code == 200 and len(answer.json()["processed"]) == 1

    async def test_admin_api_is_beside_events_without_an_admin_port(self, make_app: Open) -> None:
        """With no --admin-port, /admin is on the main listener."""
        async with running(make_app()) as client:
            answer = await client.get(f"{MAIN}/admin/accounts", headers=AUTH)
            assert answer.status_code == 200 and answer.json() == {"accounts": []}

    async def test_no_admin_routes_without_a_token(self, make_app: Open) -> None:
        """Without an admin token nothing is mounted at /admin: 404 (in the admin's shape)."""
        async with running(make_app(admin_token="")) as client:
            answer = await client.get(f"{MAIN}/admin/accounts", headers=AUTH)
            assert problem(answer, 404)["code"] == "not_found"


class TestAdminListener:
    async def test_each_listener_has_only_its_own_routes(self, make_app: Open) -> None:
        """With --admin-port: the admin API there and only there, everything else not there."""
        async with running(make_app(admin_port=ADMIN_PORT)) as client:
            assert (await client.get(f"{ADMIN}/admin/accounts", headers=AUTH)).status_code == 200
            assert (await client.get(f"{MAIN}/admin/accounts", headers=AUTH)).status_code == 404
            for path in ("/healthz", "/metrics", "/openapi.json"):
                assert (await client.get(f"{ADMIN}{path}")).status_code == 404
                assert (await client.get(f"{MAIN}{path}")).status_code == 200
            on_admin = await client.post(f"{ADMIN}/events", json=[])
            assert contract_error(on_admin, 404)["code"] == "not_found"
            assert (await client.post(f"{MAIN}/events", json=[])).status_code == 200


class TestErrorShapes:
    async def test_unknown_path_is_404_in_the_events_contract(self, make_app: Open) -> None:
        """Outside the admin API, nothing at a path is the contract's 404, naming it."""
        async with running(make_app()) as client:
            error = contract_error(await client.post(f"{MAIN}/event"), 404)
            assert error == {
                "index": None,
                "field": None,
                "code": "not_found",
                "message": "there is nothing at POST /event.",
            }

    async def test_other_methods_on_events_are_405_with_allow(self, make_app: Open) -> None:
        """GET, PUT, HEAD, OPTIONS on /events: 405, Allow: POST, the contract's body."""
        async with running(make_app()) as client:
            for method in ("GET", "PUT", "OPTIONS"):
                answer = await client.request(method, f"{MAIN}/events")
                assert answer.headers["allow"] == "POST"
                error = contract_error(answer, 405)
                assert error["code"] == "method_not_allowed"
                assert (
                    error["message"]
                    == f"{method} is not allowed on /events; send events with POST."
                )
            head = await client.head(f"{MAIN}/events")
            assert head.status_code == 405 and head.headers["allow"] == "POST"

    async def test_a_method_a_probe_does_not_take_is_404(self, make_app: Open) -> None:
        """POST /healthz finds nothing there, as before the route table."""
        async with running(make_app()) as client:
            error = contract_error(await client.post(f"{MAIN}/healthz"), 404)
            assert error["message"] == "there is nothing at POST /healthz."

    async def test_admin_errors_are_problem_json(self, make_app: Open) -> None:
        """No token: 401; no such route or method: 404; all as {"code", "message"}."""
        async with running(make_app()) as client:
            unauthorized = problem(await client.get(f"{MAIN}/admin/accounts"), 401)
            assert unauthorized["code"] == "unauthorized"
            for method, path in (("GET", "/admin/nothing"), ("DELETE", "/admin/accounts")):
                answer = await client.request(method, f"{MAIN}{path}", headers=AUTH)
                assert problem(answer, 404) == {
                    "code": "not_found",
                    "message": f"no admin route {method} {path}",
                }

    async def test_admin_path_on_the_main_listener_is_admin_shaped(self, make_app: Open) -> None:
        """A request for the admin API where it is not served still gets the admin's shape."""
        async with running(make_app(admin_port=ADMIN_PORT)) as client:
            answer = await client.get(f"{MAIN}/admin/accounts", headers=AUTH)
            assert problem(answer, 404)["code"] == "not_found"

    async def test_a_bug_is_500_in_the_shape_of_its_api(
        self, make_app: Open, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """An unhandled error: 500 internal_error, the contract's shape or the admin's."""
        app = make_app()
        async with running(app) as client:

            def broken() -> None:
                raise RuntimeError("a bug")

            monkeypatch.setattr(app.directory.book, "all", broken)
            monkeypatch.setattr(app.store, "check_writable", broken)
            admin = problem(await client.get(f"{MAIN}/admin/accounts", headers=AUTH), 500)
            events = contract_error(await client.get(f"{MAIN}/readyz"), 500)
            page = (await client.get(f"{MAIN}/metrics")).text
        assert admin["code"] == events["code"] == "internal_error"
        assert 'qlevents_requests_total{route="error",status="500"} 2.0' in page


class TestAdminAnswers:
    async def test_oversized_body_is_413(self, make_app: Open) -> None:
        """A body over 64 KiB is refused with 413, whatever the route."""
        async with running(make_app()) as client:
            big = b'{"name": "' + b"x" * 65_536 + b'"}'
            answer = await client.post(f"{MAIN}/admin/accounts", content=big, headers=AUTH)
            assert problem(answer, 413) == {
                "code": "body_too_large",
                "message": "the admin request body is larger than 65536 bytes",
            }
            accounts = (await client.get(f"{MAIN}/admin/accounts", headers=AUTH)).json()
            assert accounts == {"accounts": []}

    async def test_unknown_account_is_404_on_every_route(self, make_app: Open) -> None:
        """Show, disable, enable, move and limit of a key no account has: 404 account_error."""
        async with running(make_app()) as client:
            base = f"{MAIN}/admin/accounts/qlk_missing"
            answers = [
                await client.get(base, headers=AUTH),
                await client.post(f"{base}/disable", headers=AUTH),
                await client.post(f"{base}/enable", headers=AUTH),
                await client.post(
                    f"{base}/move", json={"endpoint": "https://x/events"}, headers=AUTH
                ),
                await client.post(f"{base}/limit", json={"rate": 1}, headers=AUTH),
            ]
            for answer in answers:
                error = problem(answer, 404)
                assert error["code"] == "account_error"
                assert error["message"] == "no account has the client key 'qlk_miss…'"

    async def test_refused_values_are_400(self, make_app: Open) -> None:
        """A value the account book refuses is 400 account_error; a malformed body, invalid_body."""
        app = make_app()
        async with running(app) as client:
            key = app.directory.change(lambda book: book.add("shop")).client_key
            limit = await client.post(
                f"{MAIN}/admin/accounts/{key}/limit", json={"rate": -1}, headers=AUTH
            )
            assert problem(limit, 400)["code"] == "account_error"
            bad = await client.post(f"{MAIN}/admin/accounts", content=b"{", headers=AUTH)
            assert problem(bad, 400)["code"] == "invalid_body"


class TestMetricsLabels:
    async def test_each_request_is_counted_under_its_route(self, make_app: Open) -> None:
        """Route labels name the table's entry; what none took is "other"."""
        async with running(make_app()) as client:
            await client.get(f"{MAIN}/healthz")
            await client.get(f"{MAIN}/openapi.json")
            await client.get(f"{MAIN}/admin/accounts/qlk_missing", headers=AUTH)
            await client.get(f"{MAIN}/admin/nothing")
            await client.get(f"{MAIN}/events")
            await client.post(f"{MAIN}/events", content=b"[]")
            await client.get(f"{MAIN}/nothing")
            await client.post(f"{MAIN}/healthz")
            page = (await client.get(f"{MAIN}/metrics")).text
        counted = re.findall(r'qlevents_requests_total\{route="([^"]*)",status="(\d+)"\}', page)
        assert set(counted) == {
            ("/healthz", "200"),
            ("/openapi.json", "200"),
            ("/admin", "404"),
            ("/admin", "401"),
            ("/events", "405"),
            ("/events", "200"),
            ("other", "404"),
        }


class _FailingStore(MemoryEventStore):
    """Fault injection: every append fails with the given error."""

    def __init__(self, error: StoreUnavailableError) -> None:
        super().__init__()
        self.error = error

    async def append(self, *args: Any, **kwargs: Any) -> Any:
        raise self.error


class TestStoreFailures:
    @pytest.mark.parametrize(
        ("error", "says"),
        [
            (StoreUnavailableError("disk full", retry_after=3), "none of them was: disk full"),
            (
                StoreOutcomeUnknownError("no quorum in 10 s", retry_after=3),
                "they may or may not be stored",
            ),
        ],
    )
    async def test_a_store_failure_is_a_503_that_says_what_is_known(
        self, make_app: Callable[..., EventsApp], tmp_path: Path, error: Exception, says: str
    ) -> None:
        """Nothing stored and an unknown outcome are both 503 + Retry-After, each message true."""
        book = AccountBook(tmp_path)
        key = book.add("shop").client_key
        book.close()
        async with running(make_app(store=_FailingStore(error))) as client:
            answer = await client.post(f"{MAIN}/events", json=[view(key)])
        entry = contract_error(answer, 503)
        assert entry["code"] == "store_unavailable" and says in entry["message"]
        assert answer.headers["retry-after"] == "3"


class TestDryRun:
    async def test_a_dry_run_answers_as_a_real_request_and_stores_nothing(
        self, make_app: Callable[..., EventsApp], tmp_path: Path
    ) -> None:
        """?dry_run=true: the same processed/failed/errors, Dry-Run: true, nothing stored."""
        book = AccountBook(tmp_path)
        key = book.add("shop").client_key
        book.close()
        store = MemoryEventStore()
        body = [view(key), view(key, price="12"), view("qlk_nobody")]
        async with running(make_app(store=store)) as client:
            dry = await client.post(f"{MAIN}/events?dry_run=true", json=body)
            assert dry.headers["dry-run"] == "true"
            assert await store.read() == []
            real = await client.post(f"{MAIN}/events", json=body)
        assert "dry-run" not in real.headers
        dry_body, real_body = dry.json(), real.json()
        assert dry_body["failed"] == real_body["failed"]
        assert dry_body["errors"] == real_body["errors"]
        assert len(dry_body["processed"]) == len(real_body["processed"]) == 1
        assert [e["id"] for e in real_body["processed"]] == [e.id for _, e in await store.read()]

    async def test_a_bad_dry_run_value_is_a_400(self, make_app: Callable[..., EventsApp]) -> None:
        """dry_run takes true/false/1/0; anything else is refused before anything is stored."""
        async with running(make_app()) as client:
            answer = await client.post(f"{MAIN}/events?dry_run=maybe", json=[])
        assert contract_error(answer, 400)["code"] == "invalid_query"


class TestShutdown:
    def test_a_step_that_never_returns_does_not_keep_the_worker_alive(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The dashboard's stop hanging (a cluster gone quiet mid-close): the lifespan still
        completes its shutdown after SHUTDOWN_SECONDS, and says so."""
        import qlevents.server.app as app_module

        monkeypatch.setattr(app_module, "SHUTDOWN_SECONDS", 0.2)
        local = LocalApp(tmp_path)
        local.start()

        async def never() -> None:
            await asyncio.Event().wait()

        monkeypatch.setattr(local.app.dashboard, "stop", never)
        with caplog.at_level("ERROR", logger="qlevents.server"):
            local.stop()  # asserts lifespan.shutdown.complete
        assert "stopping anyway" in caplog.text
