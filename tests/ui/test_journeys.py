"""The dashboard's journeys, in a real browser against a real ``qlevents serve``."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.ui.conftest import (
    OPERATOR_EMAIL,
    Site,
    assert_accessible,
    member,
    screenshot,
)

pytestmark = pytest.mark.usefixtures("chromium")
NewPage = Callable[..., Any]


def _view(key: str, **changes: Any) -> dict[str, Any]:
    event = {"client_key": key, "event": "view", "price": 12.5, "product_id": "SKU-1",
             "permalink": "https://shop.example/sku-1"}  # fmt: skip
    event.update(changes)
    return event


def _expect(page: Any) -> Any:
    from playwright.sync_api import expect

    return expect(page)


def test_sign_in_find_the_endpoint_and_run_the_copied_curl(site: Site, new_page: NewPage) -> None:
    """A member signs in, opens Integration Settings, copies the curl and it works."""
    page = new_page()
    page.goto("/ui/")
    screenshot(page, "signin")
    page.get_by_label("Email").fill(member("shop"))
    page.get_by_label("Password").fill("a long test password")
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("link", name="Integration Settings").click()
    _expect(page.locator("#endpoint")).to_have_text(site.server.events_url)
    screenshot(page, "integration-settings")
    page.locator("#curl-view + button.copy").click()
    copied = page.evaluate("navigator.clipboard.readText()")
    assert site.key("shop") in copied and site.server.events_url in copied
    ran = subprocess.run(["bash", "-c", copied], capture_output=True, text=True, check=True)
    answer = json.loads(ran.stdout)
    assert [e["product_id"] for e in answer["processed"]] == ["123-AA-X23"]
    assert page.console_errors == []


def test_event_arrives_live_with_its_error_then_fixed_it_is_processed(
    site: Site, new_page: NewPage
) -> None:
    """A broken event appears in Live events with its error; the fixed one as processed.
    (Counted by this test's product id: an earlier test's event may still arrive.)"""
    product = "SKU-LIVE"
    page = new_page(member("shop"))
    page.goto(f"/ui/a/{site.id('shop')}/live")
    _expect(page.locator("#sampling")).to_contain_text("New events appear within 2 s.")
    ours = page.locator("#live-rows tr", has_text=product)
    broken = _view(site.key("shop"), product_id=product, price="12.5")
    httpx.post(site.server.events_url, json=[broken])
    failed = page.locator("#live-rows tr.failed", has_text=product).first
    _expect(failed).to_contain_text("invalid_type")
    _expect(ours).to_have_count(1)
    failed.locator("summary").click()
    _expect(failed).to_contain_text("price must be a JSON number")
    httpx.post(site.server.events_url, json=[_view(site.key("shop"), product_id=product)])
    newest = page.locator("#live-rows tr").first
    _expect(newest).to_contain_text("processed")
    _expect(newest).to_contain_text(product)
    _expect(ours).to_have_count(2)
    screenshot(page, "live")
    assert page.console_errors == []


def test_pause_stops_new_rows_until_resumed(site: Site, new_page: NewPage) -> None:
    """While paused nothing is added; resuming brings the waiting events."""
    page = new_page(member("shop"))
    page.goto(f"/ui/a/{site.id('shop')}/live?product_id=PAUSED-1")
    page.get_by_role("button", name="Pause").click()
    httpx.post(site.server.events_url, json=[_view(site.key("shop"), product_id="PAUSED-1")])
    page.wait_for_timeout(2500)  # longer than two polls: paused, nothing may arrive
    _expect(page.locator("#live-rows tr")).to_have_count(0)
    page.get_by_role("button", name="Resume").click()
    _expect(page.locator("#live-rows tr")).to_have_count(1)


def test_rotated_key_keeps_working_until_its_grace_period_ends(
    site: Site, new_page: NewPage
) -> None:
    """Rotate in the browser; the old key stores events, then is refused as expired."""
    old_key = site.key("rotating")
    page = new_page(member("rotating"))
    page.goto(f"/ui/a/{site.id('rotating')}/settings")
    page.get_by_role("button", name="Create a new key").click()
    _expect(page.locator(".alert")).to_contain_text("New key created")
    new_key = page.locator("#client-key").text_content()
    assert new_key and new_key != old_key
    _expect(page.locator("table.keys")).to_contain_text("in grace period")
    screenshot(page, "settings")
    stored = httpx.post(site.server.events_url, json=[_view(old_key)]).json()
    assert stored["processed"], stored
    deadline = time.monotonic() + 15
    while True:
        answer = httpx.post(site.server.events_url, json=[_view(old_key)]).json()
        if answer["errors"] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert answer["errors"][0]["code"] == "expired_client_key"
    assert httpx.post(site.server.events_url, json=[_view(new_key)]).json()["processed"]
    page.reload()
    _expect(page.locator("table.keys")).to_contain_text("expired")


def test_operator_moves_an_account_and_the_shop_sees_its_new_endpoint(
    site: Site, new_page: NewPage
) -> None:
    """The operator moves the account; the member's page shows the new endpoint, and the
    events still sent here are listed as wrong-endpoint with where they belong."""
    operator = new_page(OPERATOR_EMAIL)
    operator.get_by_role("link", name="moving").click()
    operator.get_by_role("link", name="Integration Settings").click()
    new_home = "https://evt-eu.example.com/events"
    operator.get_by_label("Home endpoint").fill(new_home)
    operator.get_by_role("button", name="Move the account").click()
    _expect(operator.locator(".alert")).to_contain_text(new_home)
    shop = new_page(member("moving"))
    shop.goto(f"/ui/a/{site.id('moving')}/settings")
    _expect(shop.locator("#endpoint")).to_have_text(new_home)
    deadline = time.monotonic() + 10
    while True:  # the server sees the move within its poll interval
        answer = httpx.post(site.server.events_url, json=[_view(site.key("moving"))]).json()
        if answer["errors"] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert answer["errors"][0]["endpoint"] == new_home
    _open_when(shop, f"/ui/a/{site.id('moving')}/errors", ".alert.bad")
    _expect(shop.locator(".alert.bad")).to_contain_text(new_home)
    screenshot(shop, "errors-wrong-endpoint")


def _open_when(page: Any, path: str, selector: str, timeout: float = 10.0) -> None:
    """Open ``path`` again until ``selector`` is on it (the ledger is written every second)."""
    deadline = time.monotonic() + timeout
    page.goto(path)
    while page.locator(selector).count() == 0 and time.monotonic() < deadline:
        page.wait_for_timeout(300)
        page.goto(path)


def test_member_cannot_open_another_accounts_pages(site: Site, new_page: NewPage) -> None:
    """Another account's settings page is a 404 that shows none of its data."""
    page = new_page(member("shop"))
    answer = page.goto(f"/ui/a/{site.id('other')}/settings")
    assert answer.status == 404
    assert site.key("other") not in page.content()
    assert page.goto("/ui/accounts").status == 404


def test_validate_answers_as_the_api_and_stores_nothing(site: Site, new_page: NewPage) -> None:
    """Pasting a broken event shows the API's answer; nothing reaches Live events."""
    page = new_page(member("shop"))
    page.goto(f"/ui/a/{site.id('shop')}/validate")
    body = json.dumps([_view(site.key("shop"), product_id="VALIDATE-ONLY", units=2)])
    page.get_by_label("JSON body").fill(body)
    page.get_by_role("button", name="Validate").click()
    _expect(page.locator("#answer")).to_contain_text('"processed"')
    page.get_by_role("button", name="Send a test event").click()
    _expect(page.get_by_role("heading", name="The answer: HTTP 200")).to_be_visible()
    _expect(page.locator("#answer")).to_contain_text("123-AA-X23")
    page.goto(f"/ui/a/{site.id('shop')}/validate")
    page.get_by_label("JSON body").fill(
        '[{"client_key": "' + site.key("shop") + '", "event": "buy"}]'
    )
    page.get_by_role("button", name="Validate").click()
    _expect(page.locator("#answer")).to_contain_text("unknown_event")
    screenshot(page, "validate")
    time.sleep(1.5)  # past a flush of the ledger: a stored event would be listed by now
    page.goto(f"/ui/a/{site.id('shop')}/live?product_id=VALIDATE-ONLY")
    _expect(page.locator("#live-rows tr")).to_have_count(0)


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("overview", "/ui/a/{shop}/overview?range=1h"),
        ("errors", "/ui/a/{shop}/errors"),
        ("live-page", "/ui/a/{shop}/live"),
        ("validate-page", "/ui/a/{shop}/validate"),
        ("settings-page", "/ui/a/{shop}/settings"),
        ("accounts", "/ui/accounts"),
        ("users", "/ui/users"),
    ],
)
def test_every_page_is_accessible(site: Site, new_page: NewPage, name: str, path: str) -> None:
    """axe-core finds no serious or critical violation; the page loads without errors."""
    page = new_page(OPERATOR_EMAIL)
    page.goto(path.format(shop=site.id("shop")))
    page.wait_for_load_state("networkidle")
    if name == "overview":
        _expect(page.locator("#chart canvas")).to_be_visible()
    screenshot(page, name)
    assert_accessible(page)
    assert page.console_errors == []


def test_sign_in_page_is_accessible(site: Site, new_page: NewPage) -> None:
    """The sign-in page passes axe-core too."""
    page = new_page()
    page.goto("/ui/signin")
    assert_accessible(page)
    assert re.search("Sign in", page.title())
