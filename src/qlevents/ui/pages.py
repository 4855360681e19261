"""The dashboard's pages and data endpoints, as a Starlette app mounted under ``/ui/``.

Every account page lives under ``/ui/a/{account_id}/``: ``account_id`` is the account's stable,
non-secret id (a client key never appears in a URL). :meth:`Pages.account` is the one gate:
it answers 404, as for an account that does not exist, when the signed-in user may not see
the account; operator pages answer 404 to members. A test walks every route of this app.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Final
from urllib.parse import urlencode

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from qlevents._exceptions import StoreUnavailableError
from qlevents.accounts import (
    ACTIVE,
    DEFAULT_GRACE_SECONDS,
    DISABLED,
    Account,
    AccountBook,
    AccountError,
    Status,
    mask_key,
)
from qlevents.error_codes import ERROR_CODES
from qlevents.server.activity import ActivityLedger
from qlevents.server.ingest import Ingest
from qlevents.ui import views
from qlevents.ui.security import (
    SESSION_COOKIE,
    SIGNIN_CSRF_COOKIE,
    SecurityHeaders,
    SignInLimiter,
    new_token,
    same_token,
)
from qlevents.ui.validate import dry_run
from qlevents.users import MEMBER, OPERATOR, SESSION_SECONDS, Session, UserError, UserStoreLike

MAX_FORM_BYTES: Final = 5 * 1024 * 1024 + 64 * 1024
LIVE_PAGE: Final = 100
GRACE_CHOICES: Final = [
    (DEFAULT_GRACE_SECONDS, "24 hours (default)"),
    (3600.0, "1 hour"),
    (7 * 86400.0, "7 days"),
    (0.0, "none: the old key stops now"),
]


class _SignInRequired(Exception):
    pass


@dataclass
class Deps:
    """What the pages read and change."""

    book: AccountBook
    """The dashboard's own connection to the account book (one call at a time: ``lock``)."""
    users: UserStoreLike
    ledger: ActivityLedger
    ingest: Ingest
    local_endpoint: str
    key_grace_seconds: float = DEFAULT_GRACE_SECONDS
    live_per_second: int = 20
    cluster: bool = False
    """The node is one of a cluster's: other nodes' events reach its pages a little later."""
    lock: threading.Lock = field(default_factory=threading.Lock)


Handler = Callable[[Request], Awaitable[Response]]


class Pages:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps
        self.limiter = SignInLimiter()
        folder = resources.files("qlevents.ui") / "templates"
        self.templates = Jinja2Templates(directory=str(folder))
        env = self.templates.env
        env.filters["ago"] = views.ago
        env.filters["ago_minute"] = views.ago_minute
        env.filters["capitalize_first"] = lambda text: text[:1].upper() + text[1:]
        env.filters["utc"] = views.utc
        env.filters["counted"] = views.counted
        env.filters["mask"] = mask_key
        env.globals["error_codes"] = ERROR_CODES

    # --- helpers ---------------------------------------------------------------------------

    def _book(self, call: Callable[[AccountBook], Any]) -> Any:
        with self.deps.lock:
            return call(self.deps.book)

    async def book(self, call: Callable[[AccountBook], Any]) -> Any:
        return await run_in_threadpool(self._book, call)

    async def session(self, request: Request) -> Session:
        """The signed-in user's session, or a redirect to the sign-in page."""
        if "session" not in request.state._state:
            token = request.cookies.get(SESSION_COOKIE)
            found = await run_in_threadpool(self.deps.users.session, token) if token else None
            request.state.session = found
        if request.state.session is None:
            raise _SignInRequired
        session: Session = request.state.session
        return session

    async def operator(self, request: Request) -> Session:
        session = await self.session(request)
        if not session.user.is_operator:
            raise HTTPException(404)
        return session

    async def account(self, request: Request) -> tuple[Session, Account]:
        """The account of the URL, if the signed-in user may see it; else 404."""
        session = await self.session(request)
        account_id = request.path_params["account_id"]
        if not session.user.may_see(account_id):
            raise HTTPException(404)
        try:
            account: Account = await self.book(lambda b: b.get_by_id(account_id))
        except AccountError:
            raise HTTPException(404) from None
        return session, account

    async def form(self, request: Request, session: Session | None) -> FormData:
        """The posted form, once its CSRF token matched (403 otherwise)."""
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > MAX_FORM_BYTES:
            raise HTTPException(413)
        form = await request.form(max_part_size=MAX_FORM_BYTES)
        given = form.get("csrf")
        token = given if isinstance(given, str) else request.headers.get("x-csrf-token")
        expected = session.csrf if session else request.cookies.get(SIGNIN_CSRF_COOKIE, "")
        if not expected or not same_token(token, expected):
            raise HTTPException(403, "the form is stale or was not sent by this dashboard")
        return form

    def render(
        self, request: Request, name: str, context: dict[str, Any], status: int = 200
    ) -> Response:
        session = getattr(request.state, "session", None)
        context.setdefault("user", session.user if session else None)
        context.setdefault("csrf", session.csrf if session else "")
        context.setdefault("now", time.time())
        return self.templates.TemplateResponse(request, name, context, status_code=status)

    async def account_page(
        self, request: Request, name: str, page: str, context: dict[str, Any]
    ) -> Response:
        """A page of one account, with the account's header and tabs."""
        context.setdefault("local", self.deps.local_endpoint)
        context["page"] = page
        return self.render(request, name, context)

    # --- sign-in ---------------------------------------------------------------------------

    async def home(self, request: Request) -> Response:
        session = await self.session(request)
        user = session.user
        if user.is_operator:
            return RedirectResponse("/ui/accounts", 303)
        return RedirectResponse(f"/ui/a/{user.account_id}/overview", 303)

    async def signin_page(self, request: Request) -> Response:
        token = request.cookies.get(SIGNIN_CSRF_COOKIE) or new_token()
        response = self.render(request, "signin.html", {"signin_csrf": token, "error": None})
        self._signin_cookie(request, response, token)
        return response

    def _signin_cookie(self, request: Request, response: Response, token: str) -> None:
        https = request.url.scheme == "https"
        response.set_cookie(SIGNIN_CSRF_COOKIE, token, max_age=3600, path="/ui/signin",
                            httponly=True, samesite="lax", secure=https)  # fmt: skip

    async def signin(self, request: Request) -> Response:
        form = await self.form(request, None)
        email = str(form.get("email", "")).strip().lower()[:254]
        password = str(form.get("password", ""))
        address = request.client.host if request.client else "?"
        token = request.cookies.get(SIGNIN_CSRF_COOKIE, "")
        wait = self.limiter.wait(email, address)
        if wait > 0:
            minutes = int(wait // 60) + 1
            context = {"signin_csrf": token, "email": email,
                       "error": f"Too many failed sign-ins: try in {minutes} min."}  # fmt: skip
            return self.render(request, "signin.html", context, status=429)
        user = await run_in_threadpool(self.deps.users.authenticate, email, password)
        if user is None:
            self.limiter.failed(email, address)
            context = {"signin_csrf": token, "email": email,
                       "error": "That email and password do not match an active user."}  # fmt: skip
            return self.render(request, "signin.html", context, status=401)
        self.limiter.succeeded(email)
        cookie, _ = await run_in_threadpool(self.deps.users.open_session, user)
        response = RedirectResponse("/ui/", 303)
        https = request.url.scheme == "https"
        response.set_cookie(SESSION_COOKIE, cookie, max_age=int(SESSION_SECONDS), path="/ui",
                            httponly=True, samesite="lax", secure=https)  # fmt: skip
        response.delete_cookie(SIGNIN_CSRF_COOKIE, path="/ui/signin")
        return response

    async def signout(self, request: Request) -> Response:
        session = await self.session(request)
        await self.form(request, session)
        token = request.cookies.get(SESSION_COOKIE, "")
        await run_in_threadpool(self.deps.users.close_session, token)
        response = RedirectResponse("/ui/signin", 303)
        response.delete_cookie(SESSION_COOKIE, path="/ui")
        return response

    # --- an account's pages ----------------------------------------------------------------

    async def account_home(self, request: Request) -> Response:
        _, account = await self.account(request)
        return RedirectResponse(f"/ui/a/{account.id}/overview", 303)

    async def overview(self, request: Request) -> Response:
        _, account = await self.account(request)
        range_name = request.query_params.get("range", "24h")
        if range_name not in views.RANGES:
            range_name = "24h"
        context = await run_in_threadpool(
            views.overview, self.deps.ledger, account, self.deps.local_endpoint, range_name,
            time.time(),
        )  # fmt: skip
        context["account"] = account
        return await self.account_page(request, "overview.html", "overview", context)

    async def chart(self, request: Request) -> Response:
        _, account = await self.account(request)
        range_name = request.query_params.get("range", "24h")
        seconds, step = views.RANGES.get(range_name, views.RANGES["24h"])
        times, processed, failed = await run_in_threadpool(
            self.deps.ledger.series, account.id, time.time() - seconds, step
        )
        return JSONResponse(
            {"step_minutes": step, "times": times, "processed": processed, "failed": failed}
        )

    async def errors(self, request: Request) -> Response:
        _, account = await self.account(request)
        now = time.time()

        def gather() -> dict[str, Any]:
            ledger = self.deps.ledger
            return {
                "rows": views.error_rows(ledger, account.id, now),
                "day": ledger.totals(account.id, now - views.DAY),
                "failed": [
                    {"at": f.received_at, "body": views.pretty(f.body), "errors": f.errors}
                    for f in ledger.failed_events(account.id, 20)
                ],
            }

        context = await run_in_threadpool(gather)
        context["account"] = account
        return await self.account_page(request, "errors.html", "errors", context)

    async def failed_export(self, request: Request) -> Response:
        _, account = await self.account(request)
        lines = await run_in_threadpool(lambda: list(self.deps.ledger.export_failed(account.id)))
        return StreamingResponse(
            iter(lines),
            media_type="application/x-ndjson",
            headers={"content-disposition": f'attachment; filename="failed-{account.id}.ndjson"'},
        )

    def _live_filters(self, request: Request) -> dict[str, str]:
        query = request.query_params
        outcome = query.get("outcome", "")
        return {
            "outcome": outcome if outcome in ("processed", "failed") else "",
            "code": query.get("code", "")[:64],
            "product_id": query.get("product_id", "")[:256],
        }

    async def live(self, request: Request) -> Response:
        _, account = await self.account(request)
        filters = self._live_filters(request)
        now = time.time()

        def gather() -> dict[str, Any]:
            events = self.deps.ledger.live(account.id, after=0, limit=LIVE_PAGE, **filters)
            skipped = self.deps.ledger.totals(account.id, now - 60).live_skipped
            return {"rows": views.live_rows(events), "skipped": skipped,
                    "after": events[0].id if events else 0}  # fmt: skip

        context = await run_in_threadpool(gather)
        context.update(account=account, filters=filters, filter_query=urlencode(filters),
                       live_per_second=self.deps.live_per_second, cluster=self.deps.cluster,
                       codes=sorted(ERROR_CODES))  # fmt: skip
        return await self.account_page(request, "live.html", "live", context)

    async def live_rows(self, request: Request) -> Response:
        """The events after ``after`` (htmx polls this): rows to prepend, and the poller
        again with its new cursor; 204 when nothing is new."""
        _, account = await self.account(request)
        filters = self._live_filters(request)
        after_text = request.query_params.get("after", "0")
        after = int(after_text) if after_text.isdigit() else 0
        events = await run_in_threadpool(
            lambda: self.deps.ledger.live(account.id, after=after, limit=LIVE_PAGE, **filters)
        )
        if not events:
            return Response(status_code=204)
        context = {"account": account, "rows": views.live_rows(events), "after": events[0].id,
                   "filter_query": urlencode(filters), "oob": True}  # fmt: skip
        return self.render(request, "_live_rows.html", context)

    async def settings(self, request: Request) -> Response:
        _, account = await self.account(request)
        return await self._settings_page(request, account, None)

    async def _settings_page(
        self, request: Request, account: Account, message: str | None, status: int = 200
    ) -> Response:
        now = time.time()

        def gather() -> dict[str, Any]:
            with self.deps.lock:
                previous = self.deps.book.previous_keys(account.id)
                keys = [account.client_key, *(k.client_key for k in previous)]
                uses = self.deps.book.key_uses(keys)
            return {"keys": views.keys_view(account, previous, uses, now)}

        context = await run_in_threadpool(gather)
        endpoint = account.home(self.deps.local_endpoint)
        view, conversions = views.curl_examples(account.client_key, endpoint)
        context.update(
            account=account, endpoint=endpoint, curl_view=view, curl_conversions=conversions,
            sdk=views.sdk_lines(account.client_key, endpoint), message=message,
            grace_choices=GRACE_CHOICES, default_grace=self.deps.key_grace_seconds,
        )  # fmt: skip
        response = await self.account_page(request, "settings.html", "settings", context)
        response.status_code = status
        return response

    async def rotate(self, request: Request) -> Response:
        session, account = await self.account(request)
        form = await self.form(request, session)
        try:
            grace = float(str(form.get("grace", self.deps.key_grace_seconds)))
            rotated, old = await self.book(lambda b: b.rotate_key(account.client_key, grace))
        except (ValueError, AccountError) as exc:
            return await self._settings_page(request, account, f"Not rotated: {exc}", 400)
        until = "now" if old.expires_at <= time.time() else views.utc(old.expires_at)
        message = (f"New key created. The old key ({mask_key(old.client_key)}) works until"
                   f" {until}; replace it everywhere before then.")  # fmt: skip
        return await self._settings_page(request, rotated, message)

    async def expire_old_keys(self, request: Request) -> Response:
        session, account = await self.account(request)
        await self.form(request, session)

        def expire(book: AccountBook) -> int:
            ended = 0
            for old in book.previous_keys(account.id):
                if old.expires_at > time.time():
                    book.expire_key(old.client_key)
                    ended += 1
            return ended

        ended = await self.book(expire)
        return await self._settings_page(request, account, f"Old keys stopped now: {ended}.")

    async def validate(self, request: Request) -> Response:
        _, account = await self.account(request)
        context = {"account": account, "body": views.sample_event(account.client_key),
                   "answer": None, "status": None, "summary": None}  # fmt: skip
        return await self.account_page(request, "validate.html", "validate", context)

    async def validate_post(self, request: Request) -> Response:
        session, account = await self.account(request)
        form = await self.form(request, session)
        if form.get("sample"):
            body = views.sample_event(account.client_key)
        else:
            body = str(form.get("body", ""))
        status, answer = await run_in_threadpool(dry_run, self.deps.ingest, body.encode())
        summary = views.answer_summary(answer)
        context = {"account": account, "body": body, "status": status,
                   "answer": views.pretty(answer), "summary": summary}  # fmt: skip
        return await self.account_page(request, "validate.html", "validate", context)

    # --- operator --------------------------------------------------------------------------

    async def accounts(self, request: Request, message: str | None = None) -> Response:
        await self.operator(request)
        now = time.time()

        def gather() -> dict[str, Any]:
            accounts = self._book(lambda b: b.all())
            health = self.deps.ledger.health(now - views.DAY)
            unknown = self.deps.ledger.totals("", now - views.DAY)
            return {"accounts": accounts, "health": health, "unknown": unknown}

        context = await run_in_threadpool(gather)
        context.update(local=self.deps.local_endpoint, message=message)
        return self.render(request, "accounts.html", context)

    async def create_account(self, request: Request) -> Response:
        session = await self.operator(request)
        form = await self.form(request, session)
        name = str(form.get("name", ""))
        endpoint = str(form.get("endpoint", "")).strip() or None
        try:
            account = await self.book(lambda b: b.add(name, endpoint))
        except AccountError as exc:
            return await self.accounts(request, f"Not created: {exc}")
        return RedirectResponse(f"/ui/a/{account.id}/settings", 303)

    async def account_status(self, request: Request) -> Response:
        session = await self.operator(request)
        _, account = await self.account(request)
        form = await self.form(request, session)
        status: Status = DISABLED if form.get("status") == DISABLED else ACTIVE
        updated = await self.book(lambda b: b.set_status(account.client_key, status))
        return await self._settings_page(request, updated, f"The account is now {status}.")

    async def account_move(self, request: Request) -> Response:
        session = await self.operator(request)
        _, account = await self.account(request)
        form = await self.form(request, session)
        local = self.deps.local_endpoint
        try:
            moved = await self.book(
                lambda b: b.move(account.client_key, str(form.get("endpoint", "")), local)
            )
        except AccountError as exc:
            return await self._settings_page(request, account, f"Not moved: {exc}", 400)
        return await self._settings_page(
            request, moved, f"The account's endpoint is now {moved.home(local)}."
        )

    async def account_limit(self, request: Request) -> Response:
        session = await self.operator(request)
        _, account = await self.account(request)
        form = await self.form(request, session)
        try:
            rate_text = str(form.get("rate", "")).strip()
            burst_text = str(form.get("burst", "")).strip()
            rate = float(rate_text) if rate_text else None
            burst = float(burst_text) if burst_text else None
            updated = await self.book(lambda b: b.set_limit(account.client_key, rate, burst))
        except (ValueError, AccountError) as exc:
            return await self._settings_page(request, account, f"Not changed: {exc}", 400)
        return await self._settings_page(request, updated, "The rate limit is saved.")

    async def users(self, request: Request, message: str | None = None) -> Response:
        await self.operator(request)

        def gather() -> dict[str, Any]:
            accounts = self._book(lambda b: b.all())
            return {"users": self.deps.users.all(), "accounts": accounts,
                    "names": {a.id: a.name for a in accounts}}  # fmt: skip

        context = await run_in_threadpool(gather)
        context["message"] = message
        return self.render(request, "users.html", context)

    async def create_user(self, request: Request) -> Response:
        session = await self.operator(request)
        form = await self.form(request, session)
        account_id = str(form.get("account", ""))
        try:
            email, password = str(form.get("email", "")), str(form.get("password", ""))
            if account_id == OPERATOR:
                user = await run_in_threadpool(self.deps.users.add, email, password, OPERATOR)
            else:
                await self.book(lambda b: b.get_by_id(account_id))
                user = await run_in_threadpool(
                    self.deps.users.add, email, password, MEMBER, account_id
                )
        except (UserError, AccountError) as exc:
            return await self.users(request, f"Not added: {exc}")
        return await self.users(request, f"Added {user.email}.")

    async def disable_user(self, request: Request) -> Response:
        session = await self.operator(request)
        form = await self.form(request, session)
        email = str(form.get("email", ""))
        try:
            await run_in_threadpool(self.deps.users.disable, email)
        except UserError as exc:
            return await self.users(request, f"Not disabled: {exc}")
        return await self.users(request, f"Disabled {email}: signed out everywhere.")


def routes(pages: Pages) -> list[BaseRoute]:
    """Every route of the dashboard (under /ui)."""
    a = "/a/{account_id:str}"
    return [
        Route("/", pages.home, methods=["GET"]),
        Route("/signin", pages.signin_page, methods=["GET"]),
        Route("/signin", pages.signin, methods=["POST"]),
        Route("/signout", pages.signout, methods=["POST"]),
        Route("/accounts", pages.accounts, methods=["GET"]),
        Route("/accounts", pages.create_account, methods=["POST"]),
        Route("/users", pages.users, methods=["GET"]),
        Route("/users", pages.create_user, methods=["POST"]),
        Route("/users/disable", pages.disable_user, methods=["POST"]),
        Route(a, pages.account_home, methods=["GET"]),
        Route(a + "/overview", pages.overview, methods=["GET"]),
        Route(a + "/chart.json", pages.chart, methods=["GET"]),
        Route(a + "/errors", pages.errors, methods=["GET"]),
        Route(a + "/failed.ndjson", pages.failed_export, methods=["GET"]),
        Route(a + "/live", pages.live, methods=["GET"]),
        Route(a + "/live/rows", pages.live_rows, methods=["GET"]),
        Route(a + "/settings", pages.settings, methods=["GET"]),
        Route(a + "/settings/rotate", pages.rotate, methods=["POST"]),
        Route(a + "/settings/expire", pages.expire_old_keys, methods=["POST"]),
        Route(a + "/validate", pages.validate, methods=["GET"]),
        Route(a + "/validate", pages.validate_post, methods=["POST"]),
        Route(a + "/admin/status", pages.account_status, methods=["POST"]),
        Route(a + "/admin/move", pages.account_move, methods=["POST"]),
        Route(a + "/admin/limit", pages.account_limit, methods=["POST"]),
    ]


def build_ui(deps: Deps) -> Starlette:
    """The dashboard as an ASGI app, for the server's route table to mount at ``/ui``."""
    pages = Pages(deps)
    static = StaticFiles(directory=str(resources.files("qlevents.ui") / "static"))

    async def sign_in_first(request: Request, exc: Exception) -> Response:
        if request.headers.get("hx-request") or request.url.path.endswith(".json"):
            return Response(status_code=401)
        return RedirectResponse("/ui/signin", 303)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            text = "There is no such page, or it is not yours to see."
        else:
            text = exc.detail
        return pages.render(request, "error.html", {"status": exc.status_code, "text": text},
                            status=exc.status_code)  # fmt: skip

    async def cluster_away(request: Request, exc: Exception) -> Response:
        # On a cluster, a change (a sign-in's session too) needs the NATS servers.
        answer = pages.render(request, "error.html", {"status": 503, "text": str(exc)}, status=503)
        answer.headers["Retry-After"] = "5"
        return answer

    app = Starlette(
        routes=[Mount("/static", app=static, name="static"), *routes(pages)],
        exception_handlers={
            _SignInRequired: sign_in_first,
            HTTPException: http_error,
            StoreUnavailableError: cluster_away,
        },
    )
    app.add_middleware(SecurityHeaders)
    return app
