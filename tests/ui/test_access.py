"""No route of the dashboard lets a member reach another account's data, and every form
needs its CSRF token. The routes are read from the app itself: a new route is covered."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.routing import Mount, Route

from qlevents.accounts import AccountBook
from qlevents.server.activity import ActivityLedger
from qlevents.ui import Deps, build_ui
from qlevents.ui.security import CSP
from qlevents.users import UserStore
from tests.ui.conftest import OPERATOR_EMAIL, SignedIn, Site, member
from tests.ui.conftest import sign_in as _sign_in

#: Routes any visitor or signed-in user may use: they show no account's data.
OPEN: frozenset[tuple[str, str]] = frozenset(
    {("GET", "/"), ("GET", "/ui/"), ("GET", "/ui/signin"), ("POST", "/ui/signin"),
     ("POST", "/ui/signout")}
)  # fmt: skip


def _routes(tmp_path: Path) -> list[tuple[str, str]]:
    """(method, path template) of every route of the dashboard, from the app, as served."""
    deps = Deps(book=AccountBook(tmp_path), users=UserStore(tmp_path),
                ledger=ActivityLedger(tmp_path), ingest=None, local_endpoint="http://x/events")  # type: ignore[arg-type]  # fmt: skip
    found: list[tuple[str, str]] = []

    def walk(routes: list[object], prefix: str) -> None:
        for route in routes:
            if isinstance(route, Mount) and route.path != "/static":
                walk(list(route.routes), prefix + route.path)
            elif isinstance(route, Route):
                found.extend((m, prefix + route.path) for m in route.methods or () if m != "HEAD")

    walk(list(build_ui(deps).routes), "/ui")  # the server mounts the dashboard at /ui
    for opened in (deps.book, deps.users, deps.ledger):
        opened.close()
    return found


_clients: list[SignedIn] = []


def sign_in(site: Site, email: str) -> SignedIn:
    client = _sign_in(site, email)
    _clients.append(client)
    return client


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _clients:
        _clients.pop().close()


@pytest.fixture(scope="module")
def routes(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, str]]:
    return _routes(tmp_path_factory.mktemp("routes"))


def _path(template: str, account_id: str) -> str:
    return re.sub(r"\{account_id(:str)?\}", account_id, template)


def test_the_route_list_is_read_from_the_app(routes: list[tuple[str, str]]) -> None:
    """The walk finds the account pages and the operator pages (it is not empty)."""
    assert ("GET", "/ui/a/{account_id:str}/settings") in routes
    assert ("POST", "/ui/accounts") in routes
    assert len(routes) > 20


def test_member_gets_404_for_every_route_of_another_account(
    site: Site, routes: list[tuple[str, str]]
) -> None:
    """Every account route, every method, with another account's id: 404, none of its data."""
    client = sign_in(site, member("shop"))
    other_id, other_key = site.accounts["other"]
    checked = 0
    for method, template in routes:
        if "{account_id" not in template:
            continue
        answer = client.request(method, _path(template, other_id), data={"csrf": client.csrf})
        assert answer.status_code == 404, (method, template, answer.status_code)
        assert other_key not in answer.text and "other" not in answer.text.split("<main")[-1]
        checked += 1
    assert checked >= 10


def test_member_reaches_own_account_pages(site: Site, routes: list[tuple[str, str]]) -> None:
    """The same GET routes with the member's own account answer (the test above can fail)."""
    client = sign_in(site, member("shop"))
    for method, template in routes:
        if method == "GET" and "{account_id" in template:
            answer = client.get(_path(template, site.id("shop")))
            assert answer.status_code in (200, 204, 303), (template, answer.status_code)


def test_member_gets_404_for_every_operator_route(
    site: Site, routes: list[tuple[str, str]]
) -> None:
    """Routes outside an account (accounts, users) are the operator's: 404 for a member;
    the operator routes of the member's own account too (move, limit, status)."""
    client = sign_in(site, member("shop"))
    for method, template in routes:
        if (method, template) in OPEN:
            continue
        if "{account_id" in template and "/admin/" not in template:
            continue
        answer = client.request(
            method, _path(template, site.id("shop")), data={"csrf": client.csrf, "name": "x"}
        )
        assert answer.status_code == 404, (method, template, answer.status_code)


def test_signed_out_visitor_is_sent_to_sign_in_everywhere(
    site: Site, routes: list[tuple[str, str]]
) -> None:
    """Without a session, every route but sign-in redirects there (or 401 for data)."""
    import httpx

    with httpx.Client(base_url=site.url) as client:
        for method, template in routes:
            if (method, template) in OPEN:
                continue
            answer = client.request(method, _path(template, site.id("shop")))
            assert answer.status_code in (303, 401), (method, template, answer.status_code)
            if answer.status_code == 303:
                assert answer.headers["location"] == "/ui/signin"


def test_operator_reaches_every_account(site: Site) -> None:
    """An operator opens any account's pages."""
    client = sign_in(site, OPERATOR_EMAIL)
    for account_id, _ in site.accounts.values():
        assert client.get(f"/ui/a/{account_id}/settings").status_code == 200


class TestForms:
    def test_post_without_the_csrf_token_is_refused(self, site: Site) -> None:
        """A state-changing request without the session's token: 403, nothing changed."""
        client = sign_in(site, member("shop"))
        answer = client.post(f"/ui/a/{site.id('shop')}/settings/rotate", data={"grace": "60"})
        assert answer.status_code == 403
        settings = client.get(f"/ui/a/{site.id('shop')}/settings").text
        assert site.key("shop") in settings

    def test_sign_in_without_its_csrf_cookie_is_refused(self, site: Site) -> None:
        """A sign-in form posted from elsewhere (no double-submit cookie): 403."""
        import httpx

        form = {"csrf": "x", "email": member("shop"), "password": "y"}
        answer = httpx.post(f"{site.url}/ui/signin", data=form)
        assert answer.status_code == 403

    def test_session_cookie_is_httponly_and_samesite(self, site: Site) -> None:
        """The session cookie cannot be read by scripts or sent by other sites' forms."""
        import httpx

        client = httpx.Client(base_url=site.url)
        _clients.append(client)  # type: ignore[arg-type]
        form = client.get("/ui/signin").text
        token = re.search(r'name="csrf" value="([^"]+)"', form)
        assert token is not None
        answer = client.post("/ui/signin", data={"csrf": token.group(1), "email": member("shop"),
                                                 "password": "a long test password"})  # fmt: skip
        cookie = answer.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=lax" in cookie and "path=/ui" in cookie
        assert "secure" not in cookie  # plain HTTP here; Secure behind HTTPS

    def test_sign_in_attempts_are_limited_per_email(self, site: Site) -> None:
        """After 5 wrong passwords for one email, even the right one waits: 429."""
        import httpx

        client = httpx.Client(base_url=site.url)
        _clients.append(client)  # type: ignore[arg-type]
        token = re.search(r'name="csrf" value="([^"]+)"', client.get("/ui/signin").text)
        assert token is not None
        email = member("rotating")
        codes = [
            client.post("/ui/signin", data={"csrf": token.group(1), "email": email,
                                            "password": "wrong password!"}).status_code
            for _ in range(5)
        ]  # fmt: skip
        assert codes == [401] * 5
        right = client.post("/ui/signin", data={"csrf": token.group(1), "email": email,
                                                "password": "a long test password"})  # fmt: skip
        assert right.status_code == 429
        assert "Too many failed sign-ins" in right.text

    def test_every_page_has_a_strict_csp(self, site: Site) -> None:
        """No inline script, no eval, no framing, this origin only; pages are not cached."""
        client = sign_in(site, member("shop"))
        answer = client.get(f"/ui/a/{site.id('shop')}/settings")
        assert answer.headers["content-security-policy"] == CSP
        assert "unsafe" not in CSP and "script-src 'self'" in CSP
        assert answer.headers["cache-control"] == "no-store"
        assert "<script>" not in answer.text and " on" + "click=" not in answer.text

    def test_no_client_key_in_any_url_or_log_line(self, site: Site) -> None:
        """Dashboard URLs name accounts by id; the access log never shows a key."""
        client = sign_in(site, member("shop"))
        page = client.get(f"/ui/a/{site.id('shop')}/settings").text
        for href in re.findall(r'(?:href|action|hx-get)="([^"]+)"', page):
            assert "qlk_" not in href
        assert site.key("shop") not in site.server.log()
