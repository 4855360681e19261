"""The admin API: the CLI's account operations over HTTP, behind a bearer token.

    GET  /admin/accounts                     list
    POST /admin/accounts                     {"name": ..., "endpoint": optional URL} -> 201
    GET  /admin/accounts/{key}               show
    POST /admin/accounts/{key}/disable       disable (its events fail with disabled_client_key)
    POST /admin/accounts/{key}/enable        enable again
    POST /admin/accounts/{key}/move          {"endpoint": URL} home it on another installation
    POST /admin/accounts/{key}/limit         {"rate": events/s, "burst": events}; null: default

Mounted at /admin (app.py) only when an admin token is configured. Every answer, errors
included, is JSON; an error is ``{"code", "message"}``: 401 without the token, 404 for no such
route or account, 400 for a body or value it refuses, 413 for a body over 64 KiB, 503 (with
Retry-After) when the book cannot take a change (a cluster node cut off from its quorum).
"""

from __future__ import annotations

import hmac
from contextlib import aclosing
from typing import Final

import msgspec
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.routing import Route, Router

from qlevents._exceptions import StoreUnavailableError
from qlevents.accounts import ACTIVE, DISABLED, AccountError, AccountNotFoundError, Status
from qlevents.server.directory import AccountDirectory
from qlevents.server.responses import MsgspecJSONResponse, send_problem
from qlevents.server.types import Receive, Scope, Send

MAX_ADMIN_BODY: Final = 64 * 1024


class _NewAccount(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    endpoint: str | None = None


class _Move(msgspec.Struct, forbid_unknown_fields=True):
    endpoint: str


class _Limit(msgspec.Struct, forbid_unknown_fields=True):
    rate: float | None = None
    burst: float | None = None


class _BodyTooLarge(Exception):
    pass


class Admin:
    """The admin API as an ASGI app: the token check, then its own route table."""

    def __init__(self, directory: AccountDirectory, token: str) -> None:
        self.directory = directory
        self._token = token.encode()
        self.routes = Router(
            [
                Route("/accounts", self.list_accounts, methods=["GET"]),
                Route("/accounts", self.add_account, methods=["POST"]),
                Route("/accounts/{key}", self.show_account, methods=["GET"]),
                Route("/accounts/{key}/disable", self.disable_account, methods=["POST"]),
                Route("/accounts/{key}/enable", self.enable_account, methods=["POST"]),
                Route("/accounts/{key}/move", self.move_account, methods=["POST"]),
                Route("/accounts/{key}/limit", self.limit_account, methods=["POST"]),
            ],
            redirect_slashes=False,
        )

    def authorized(self, scope: Scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, credential = value.partition(b" ")
                # Constant-time, so the time taken tells nothing about the token.
                return scheme.lower() == b"bearer" and hmac.compare_digest(
                    credential.strip(), self._token
                )
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.authorized(scope):
            await send_problem(send, 401, "unauthorized", "send Authorization: Bearer <token>.")
            return
        try:
            await self.routes(scope, receive, send)
        except HTTPException:  # no such route, or not with this method
            await send_problem(
                send, 404, "not_found", f"no admin route {scope['method']} {scope['path']}"
            )
        except StoreUnavailableError as exc:  # the cluster's book takes no change now
            await send_problem(send, 503, "unavailable", str(exc), [(b"retry-after", b"2")])
        except AccountNotFoundError as exc:
            await send_problem(send, 404, "account_error", str(exc))
        except AccountError as exc:
            await send_problem(send, 400, "account_error", str(exc))
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            await send_problem(send, 400, "invalid_body", str(exc))
        except _BodyTooLarge:
            await send_problem(
                send,
                413,
                "body_too_large",
                f"the admin request body is larger than {MAX_ADMIN_BODY} bytes",
            )

    # --- the routes ----------------------------------------------------------------------

    async def list_accounts(self, request: Request) -> MsgspecJSONResponse:
        local = self.directory.local_endpoint
        return MsgspecJSONResponse(
            {"accounts": [a.as_dict(local) for a in self.directory.book.all()]}
        )

    async def add_account(self, request: Request) -> MsgspecJSONResponse:
        new = msgspec.json.decode(await _small_body(request), type=_NewAccount)
        account = await self.directory.change_async(lambda book: book.add(new.name, new.endpoint))
        return MsgspecJSONResponse(account.as_dict(self.directory.local_endpoint), 201)

    async def show_account(self, request: Request) -> MsgspecJSONResponse:
        account = self.directory.book.get(request.path_params["key"])
        return MsgspecJSONResponse(account.as_dict(self.directory.local_endpoint))

    async def disable_account(self, request: Request) -> MsgspecJSONResponse:
        return await self._set_status(request, DISABLED)

    async def enable_account(self, request: Request) -> MsgspecJSONResponse:
        return await self._set_status(request, ACTIVE)

    async def move_account(self, request: Request) -> MsgspecJSONResponse:
        move = msgspec.json.decode(await _small_body(request), type=_Move)
        key, local = request.path_params["key"], self.directory.local_endpoint
        account = await self.directory.change_async(
            lambda book: book.move(key, move.endpoint, local)
        )
        return MsgspecJSONResponse(account.as_dict(local))

    async def limit_account(self, request: Request) -> MsgspecJSONResponse:
        limit = msgspec.json.decode(await _small_body(request), type=_Limit)
        key = request.path_params["key"]
        account = await self.directory.change_async(
            lambda book: book.set_limit(key, limit.rate, limit.burst)
        )
        return MsgspecJSONResponse(account.as_dict(self.directory.local_endpoint))

    async def _set_status(self, request: Request, status: Status) -> MsgspecJSONResponse:
        await _small_body(request)  # none is needed, but one over the limit is still refused
        key = request.path_params["key"]
        account = await self.directory.change_async(lambda book: book.set_status(key, status))
        return MsgspecJSONResponse(account.as_dict(self.directory.local_endpoint))


async def _small_body(request: Request) -> bytes:
    """The request's body, refused past MAX_ADMIN_BODY bytes (413) without reading on."""
    chunks: list[bytes] = []
    size = 0
    async with aclosing(request.stream()) as stream:
        async for chunk in stream:
            size += len(chunk)
            if size > MAX_ADMIN_BODY:
                raise _BodyTooLarge
            chunks.append(chunk)
    return b"".join(chunks)
