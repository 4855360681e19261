"""A browser on a cluster: signed in through node 1, the live page served by node 2 shows
an event node 1 answered, as it arrives."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.cluster_site import OPERATOR_EMAIL, PASSWORD, ClusterSite, running_cluster_site
from tests.support import view
from tests.ui.conftest import screenshot


@pytest.fixture(scope="module")
def cluster_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterSite]:
    with running_cluster_site(tmp_path_factory.mktemp("cluster-ui")) as started:
        yield started


def test_signed_in_on_node_1_the_live_page_of_node_2_shows_node_1s_event(
    cluster_site: ClusterSite, browser: Any
) -> None:
    """Sign in on node 1, open Live events on node 2 with the same cookie (another node
    behind the balancer), send an event to node 1: its row arrives on node 2's page."""
    from playwright.sync_api import expect

    first, second = cluster_site.nodes
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(10_000)
    try:
        page = context.new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(f"{first.url}/ui/signin")
        page.get_by_label("Email").fill(OPERATOR_EMAIL)
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(f"{first.url}/ui/**")
        # The session cookie is the host's (127.0.0.1, any port), as behind one balancer.
        page.goto(f"{second.url}/ui/a/{cluster_site.account_id}/live")
        expect(page.get_by_role("heading", name="Live events")).to_be_visible()
        product = f"NODE1-{uuid.uuid4().hex[:6]}"
        answer = httpx.post(first.events_url, json=[view(cluster_site.key, product_id=product)])
        assert answer.status_code == 200
        newest = page.locator("#live-rows tr").first
        expect(newest).to_contain_text(product)
        expect(newest).to_contain_text("processed")
        screenshot(page, "cluster-live-node-2")
        assert errors == []
    finally:
        context.close()
