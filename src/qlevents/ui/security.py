"""The dashboard's security: headers, sessions, CSRF tokens, sign-in rate limits.

- Every answer carries a strict Content-Security-Policy (scripts, styles and data from this
  origin only; no inline script, no eval, no framing) and ``Cache-Control: no-store`` (pages
  show client keys).
- A session is a random token in an HttpOnly, SameSite=Lax cookie (Secure when the request
  came over HTTPS); the book stores its hash only.
- Every state-changing request (POST) must carry the session's CSRF token (a form field, or
  the ``X-CSRF-Token`` header htmx sends); the sign-in form, before any session, uses a
  double-submit cookie.
- Sign-in failures are limited per email and per client address (in each worker's memory).
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import deque
from typing import Final

from qlevents.server.types import Message, Receive, Scope, Send

SESSION_COOKIE: Final = "qle_session"
SIGNIN_CSRF_COOKIE: Final = "qle_signin"
CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
    " connect-src 'self'; font-src 'self'; form-action 'self'; frame-ancestors 'none';"
    " base-uri 'none'"
)
_HEADERS: Final = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
]
_NO_STORE: Final = (b"cache-control", b"no-store")


class SecurityHeaders:
    """ASGI middleware: the security headers on every answer, no-store on all but static."""

    def __init__(self, app: object) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)  # type: ignore[operator]
            return
        static = scope["path"].startswith("/ui/static/")

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.extend(_HEADERS)
                if not static:
                    headers.append(_NO_STORE)
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, with_headers)  # type: ignore[operator]


def same_token(given: str | None, expected: str) -> bool:
    """Constant-time comparison of a submitted token with the expected one."""
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def new_token() -> str:
    return secrets.token_urlsafe(32)


class SignInLimiter:
    """At most ``per_email`` failed sign-ins per email and ``per_address`` per client address
    in ``window`` seconds; past either, sign-in is refused until the window has moved on."""

    def __init__(self, per_email: int = 5, per_address: int = 20, window: float = 900.0) -> None:
        self.per_email = per_email
        self.per_address = per_address
        self.window = window
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, name: str, now: float) -> deque[float]:
        times = self._failures.setdefault(name, deque())
        while times and times[0] <= now - self.window:
            times.popleft()
        return times

    def wait(self, email: str, address: str) -> float:
        """Seconds until this email from this address may try again (0: now)."""
        now = time.monotonic()
        waits = [0.0]
        for name, limit in (
            ("email:" + email, self.per_email),
            ("addr:" + address, self.per_address),
        ):
            times = self._recent(name, now)
            if len(times) >= limit:
                waits.append(times[len(times) - limit] + self.window - now)
        return max(waits)

    def failed(self, email: str, address: str) -> None:
        now = time.monotonic()
        for name in ("email:" + email, "addr:" + address):
            self._recent(name, now).append(now)
        if len(self._failures) > 100_000:  # bounded memory under a spray of emails
            self._failures = {k: v for k, v in self._failures.items() if self._recent(k, now)}

    def succeeded(self, email: str) -> None:
        self._failures.pop("email:" + email, None)
