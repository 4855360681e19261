"""The issue's "done when": a web app with the two lines, the server killed during traffic.

A plain WSGI app (what Flask and Django are underneath) served by wsgiref in a thread; the
client is made once at import time, as the README says; requests come from four threads;
the qlevents server is SIGKILLed and restarted in the middle. Every view and every
conversion is stored exactly once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import httpx
import pytest

from qlevents import Client
from tests.client.conftest import eventually, product_ids
from tests.support import RunningServer


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def shop_app(qlevents: Client) -> Callable[..., Iterable[bytes]]:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ["PATH_INFO"]
        if path.startswith("/products/"):
            product_id = path.rsplit("/", 1)[1]
            qlevents.view(
                product_id=product_id,
                price=19.99,
                permalink=f"https://shop.example{path}",
            )
        elif path.startswith("/checkout/"):
            order = path.rsplit("/", 1)[1]
            qlevents.enqueue(
                [
                    {"event": "conversion", "product_id": f"{order}-{line}", "price": 10.5,
                     "units": line + 1}
                    for line in range(3)
                ]
            )  # fmt: skip
        start_response("200 OK", [("content-type", "text/plain")])
        return [b"ok"]

    return app


@pytest.fixture
def shop(server: RunningServer) -> Iterator[tuple[str, Client]]:
    """The shop's web server, with its qlevents client (the two lines)."""
    qlevents = Client(server.client_key, endpoint=server.events_url, backoff_cap=0.5)
    httpd: WSGIServer = make_server("127.0.0.1", 0, shop_app(qlevents), handler_class=QuietHandler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02})
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", qlevents
    httpd.shutdown()
    httpd.server_close()
    thread.join(10)
    qlevents.close(timeout=10)


class TestWebAppDuringServerRestart:
    def test_every_event_is_stored_exactly_once(
        self, server: RunningServer, shop: tuple[str, Client]
    ) -> None:
        """Views and checkouts from 4 threads; server SIGKILLed and restarted; none lost."""
        url, qlevents = shop
        expected: list[str] = []
        lock = threading.Lock()

        def browse(worker: int) -> None:
            with httpx.Client(base_url=url) as http:
                for i in range(150):
                    if i % 10 == 9:
                        order = f"o{worker}-{i}"
                        http.post(f"/checkout/{order}")
                        ids = [f"{order}-{line}" for line in range(3)]
                    else:
                        http.get(f"/products/v{worker}-{i}")
                        ids = [f"v{worker}-{i}"]
                    with lock:
                        expected.extend(ids)

        browsers = [threading.Thread(target=browse, args=(n,)) for n in range(4)]
        for browser in browsers:
            browser.start()
        eventually(lambda: qlevents.stats()["stored"] >= 50, what="traffic to flow")
        server.kill()
        server.start()
        for browser in browsers:
            browser.join()
        assert qlevents.flush(60)
        stored = product_ids(server.stored())
        assert len(stored) == len(set(stored)), "an event was stored twice"
        assert stored == sorted(expected)
