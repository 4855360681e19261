"""Fixtures of the dashboard's tests: a real ``qlevents serve`` per module with users in its
data directory, and one headless Chromium (Debian's) per session, driven by Playwright.

Without Chromium the browser tests skip, with the reason, except under ``CI=true``, where
they fail: CI must run them (``make test`` installs Chromium when it runs as root).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from qlevents.accounts import AccountBook
from qlevents.users import MEMBER, OPERATOR, UserStore
from tests.support import RunningServer, free_port

CHROMIUM = os.environ.get("QLEVENTS_CHROMIUM", "/usr/lib/chromium/chromium")
PASSWORD = "a long test password"
#: The grace period a rotated key gets on the test server (its default).
GRACE_SECONDS = 3
AXE = Path(__file__).parent / "vendor" / "axe.min.js"


@dataclass
class Site:
    """The running server, its accounts (name -> (id, key)) and users (email)."""

    server: RunningServer
    accounts: dict[str, tuple[str, str]]
    #: A browser's cookies once signed in with the form, by email (see ``new_page``).
    signed_in: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.server.url

    def key(self, name: str) -> str:
        return self.accounts[name][1]

    def id(self, name: str) -> str:
        return self.accounts[name][0]


def member(name: str) -> str:
    return f"{name}@shop.example"


OPERATOR_EMAIL = "ops@qlevents.example"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """A server with the demo account, three more, a member user each and an operator."""
    root = tmp_path_factory.mktemp("site")
    data = root / "data"
    book = AccountBook(data)
    users = UserStore(data)
    accounts: dict[str, tuple[str, str]] = {}
    try:
        for name in ("shop", "other", "rotating", "moving"):
            account = book.add(name)
            accounts[name] = (account.id, account.client_key)
            users.add(member(name), PASSWORD, MEMBER, account.id)
        users.add(OPERATOR_EMAIL, PASSWORD, OPERATOR)
    finally:
        book.close()
        users.close()
    server = RunningServer(data, free_port(), [], root / "server.log")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("QLEVENTS_KEY_GRACE_SECONDS", str(GRACE_SECONDS))
        server.start()
    try:
        yield Site(server, accounts)
    finally:
        server.discard()


class SignedIn(httpx.Client):
    """An HTTP client with a dashboard session, and the session's CSRF token."""

    csrf: str


def sign_in(site: Site, email: str) -> SignedIn:
    """Sign in with the form, as a browser would (its CSRF cookie included)."""
    client = SignedIn(base_url=site.url, follow_redirects=False)
    form = client.get("/ui/signin").text
    token = re.search(r'name="csrf" value="([^"]+)"', form)
    assert token is not None
    answer = client.post(
        "/ui/signin", data={"csrf": token.group(1), "email": email, "password": PASSWORD}
    )
    assert answer.status_code == 303, answer.text
    page = client.get("/ui/", follow_redirects=True).text
    csrf = re.search(r'name="csrf" value="([^"]+)"', page)
    assert csrf is not None
    client.csrf = csrf.group(1)
    return client


# --- the browser -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def chromium() -> str:
    if os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    reason = f"Chromium is not installed at {CHROMIUM} (as root, `make test` installs it)"
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(f"CI must run the browser tests: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser(chromium: str) -> Iterator[Any]:
    """Chromium for a module's journeys. Not the session's: Playwright's sync API keeps an
    asyncio loop running in this thread while it is started, and a later module's
    ``asyncio.run`` (or anyio test) in the same test process would find it there."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium)
        yield launched
        launched.close()


@pytest.fixture
def new_page(browser: Any, site: Site) -> Iterator[Any]:
    """``new_page(email)``: a page in a fresh browser context, signed in as ``email``."""
    contexts: list[Any] = []

    def open_page(email: str | None = None) -> Any:
        # The first page of an email signs in with the form; later ones start with its
        # cookies (one argon2 hash and ~1 s less each). A test that ends its session must
        # forget it: site.signed_in.pop(email).
        context = browser.new_context(
            base_url=site.url,
            viewport={"width": 1280, "height": 900},
            permissions=["clipboard-read", "clipboard-write"],
            storage_state=site.signed_in.get(email) if email is not None else None,
        )
        context.set_default_timeout(10_000)
        contexts.append(context)
        page = context.new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.console_errors = errors
        if email is not None and email not in site.signed_in:
            page.goto("/ui/signin")
            page.get_by_label("Email").fill(email)
            page.get_by_label("Password").fill(PASSWORD)
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url(re.compile(r"/ui/(a/|accounts)"))
            site.signed_in[email] = context.storage_state()
        return page

    yield open_page
    for context in contexts:
        context.close()


def screenshot(page: Any, name: str) -> None:
    """Save a full-page screenshot: into QLEVENTS_SCREENSHOTS (docs/images/dashboard to update
    the docs' pictures), else beside the test's temporary files."""
    folder = Path(os.environ.get("QLEVENTS_SCREENSHOTS") or "/tmp/qlevents-ui-screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / f"{name}.png"), full_page=True)


def assert_accessible(page: Any) -> None:
    """axe-core, run in the page, finds no violation of serious or critical impact."""
    # Evaluated through the DevTools protocol, which the page's CSP does not govern (a
    # <script> tag would be refused, as it should be).
    page.evaluate(AXE.read_text() + "\n;0")
    result = page.evaluate("async () => await axe.run(document, {resultTypes: ['violations']})")
    serious = [
        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]
    assert serious == [], "\n".join(serious)
