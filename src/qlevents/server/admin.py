"""The admin API: the CLI's account operations over HTTP, behind a bearer token.

    GET  /admin/accounts                     list
    POST /admin/accounts                     {"name": ..., "endpoint": optional URL} -> 201
    GET  /admin/accounts/{key}               show
    POST /admin/accounts/{key}/disable       disable (its events fail with disabled_client_key)
    POST /admin/accounts/{key}/enable        enable again
    POST /admin/accounts/{key}/move          {"endpoint": URL} home it on another installation
    POST /admin/accounts/{key}/limit         {"rate": events/s, "burst": events}; null: default

Disabled (every route answers 404) unless an admin token is configured.
"""

from __future__ import annotations

import hmac
from typing import Final

import msgspec

from qlevents.accounts import ACTIVE, DISABLED, AccountError, Status
from qlevents.server.directory import AccountDirectory
from qlevents.server.responses import send_json
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


class Admin:
    def __init__(self, directory: AccountDirectory, token: str) -> None:
        self.directory = directory
        self._token = token.encode()

    def authorized(self, scope: Scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, credential = value.partition(b" ")
                # Constant-time, so the time taken tells nothing about the token.
                return scheme.lower() == b"bearer" and hmac.compare_digest(
                    credential.strip(), self._token
                )
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> int:
        if not self.authorized(scope):
            await send_json(
                send,
                401,
                {"code": "unauthorized", "message": "send Authorization: Bearer <token>."},
            )
            return 401
        parts = scope["path"].strip("/").split("/")  # ["admin", "accounts", key?, action?]
        method = scope["method"]
        local = self.directory.local_endpoint
        try:
            body = await _read_small_body(receive) if method == "POST" else b""
            if parts == ["admin", "accounts"] and method == "GET":
                accounts = [a.as_dict(local) for a in self.directory.book.all()]
                return await _answer(send, 200, {"accounts": accounts})
            if parts == ["admin", "accounts"] and method == "POST":
                new = msgspec.json.decode(body, type=_NewAccount)
                account = self.directory.change(lambda b: b.add(new.name, new.endpoint))
                return await _answer(send, 201, account.as_dict(local))
            if len(parts) == 3 and parts[:2] == ["admin", "accounts"] and method == "GET":
                return await _answer(send, 200, self.directory.book.get(parts[2]).as_dict(local))
            if len(parts) == 4 and parts[:2] == ["admin", "accounts"] and method == "POST":
                key, action = parts[2], parts[3]
                if action in ("disable", "enable"):
                    new_status: Status = DISABLED if action == "disable" else ACTIVE
                    account = self.directory.change(lambda b: b.set_status(key, new_status))
                    return await _answer(send, 200, account.as_dict(local))
                if action == "limit":
                    limit = msgspec.json.decode(body, type=_Limit)
                    account = self.directory.change(
                        lambda b: b.set_limit(key, limit.rate, limit.burst)
                    )
                    return await _answer(send, 200, account.as_dict(local))
                if action == "move":
                    move = msgspec.json.decode(body, type=_Move)
                    account = self.directory.change(lambda b: b.move(key, move.endpoint, local))
                    return await _answer(send, 200, account.as_dict(local))
        except AccountError as exc:
            code = 404 if "no account" in str(exc) else 400
            return await _answer(send, code, {"code": "account_error", "message": str(exc)})
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return await _answer(send, 400, {"code": "invalid_body", "message": str(exc)})
        return await _answer(
            send, 404, {"code": "not_found", "message": f"no admin route {method} {scope['path']}"}
        )


async def _answer(send: Send, status: int, value: object) -> int:
    await send_json(send, status, value)
    return status


async def _read_small_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_ADMIN_BODY:
            raise AccountError(f"the admin request body is larger than {MAX_ADMIN_BODY} bytes")
        chunks.append(chunk)
        more = message.get("more_body", False)
    return b"".join(chunks)
