"""Answers: the events API's contract shape, the admin API's problem shape, and the refusal
of a whole request that carries one."""

from __future__ import annotations

from typing import Any, Final

import msgspec
from starlette.responses import JSONResponse

from qlevents.events import ErrorEntry, EventsResponse
from qlevents.server.types import Send

JSON: Final = (b"content-type", b"application/json")
encode: Final = msgspec.json.Encoder().encode


class RequestRejected(Exception):
    """The request as a whole cannot be taken; carries the status and the error entry."""

    def __init__(
        self, status: int, code: str, message: str, headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


async def send_body(
    send: Send,
    status: int,
    body: bytes,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
    content_type: tuple[bytes, bytes] = JSON,
) -> None:
    headers = [content_type, (b"content-length", str(len(body)).encode())]
    if extra_headers:
        headers.extend(extra_headers)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def request_error(code: str, message: str) -> bytes:
    """The body of an answer about the whole request (``"index": null``)."""
    return encode(EventsResponse(errors=[ErrorEntry(None, None, code, message)]))


async def send_request_error(
    send: Send,
    status: int,
    code: str,
    message: str,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """An error of the events API, in the contract's ``{"processed", "failed", "errors"}``."""
    await send_body(send, status, request_error(code, message), extra_headers)


async def send_problem(
    send: Send,
    status: int,
    code: str,
    message: str,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """An error of the admin API: ``{"code", "message"}``."""
    await send_body(send, status, encode({"code": code, "message": message}), extra_headers)


class MsgspecJSONResponse(JSONResponse):
    """A Starlette JSON answer encoded by msgspec, byte for byte as the rest of the service."""

    def render(self, content: Any) -> bytes:
        return encode(content)
