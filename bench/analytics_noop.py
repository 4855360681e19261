"""A no-op endpoint in segment's format, for the SDK benchmark's analytics-python side.

POST /v1/batch takes ``{"batch": [...], ...}`` (gzip or not), counts the events and answers
``{"success": true}``; GET /count returns how many it received, so the benchmark can check
that analytics-python lost nothing either. Raw ASGI on uvicorn (uvloop, httptools, one
worker), the same stack as ``qlevents serve``, and it stores nothing: the peer's ceiling.

    python bench/analytics_noop.py --port 8099
"""

from __future__ import annotations

import argparse
import gzip
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import msgspec

Message = MutableMapping[str, Any]


class _Batch(msgspec.Struct):
    batch: list[msgspec.Raw] = []


_decode = msgspec.json.Decoder(_Batch).decode
#: Events received so far (a dict: mutated in place, no global statement).
counter = {"received": 0}


async def _answer(send: Callable[[Message], Awaitable[None]], body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def app(
    scope: Message,
    receive: Callable[[], Awaitable[Message]],
    send: Callable[[Message], Awaitable[None]],
) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    if scope["method"] == "GET":
        await _answer(send, b'{"count": %d}' % counter["received"])
        return
    chunks = []
    more = True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    body = b"".join(chunks)
    if (b"content-encoding", b"gzip") in scope["headers"]:
        body = gzip.decompress(body)
    counter["received"] += len(_decode(body).batch)
    await _answer(send, b'{"success": true}')


if __name__ == "__main__":
    import uvicorn

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8099)
    args = parser.parse_args()
    uvicorn.run(
        app, host="127.0.0.1", port=args.port, loop="uvloop", http="httptools",
        access_log=False, log_level="warning",
    )  # fmt: skip
