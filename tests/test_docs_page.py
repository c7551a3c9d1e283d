"""GET /docs: Swagger UI served by the gateway itself, driven in headless Chromium."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import pytest
from playwright.async_api import Page, Route, async_playwright, expect

from gateway.docs import PAGE_PATH
from tests.conftest import ROOT
from tests.helpers import BIND, documented_operations, registrations, session_id

# Debian's package; .ci/install-chromium puts it there (`make test` and .ci/run call it).
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
# Git-ignored; the screenshots of the last run, for a person to look at.
ARTIFACTS = ROOT / "test-artifacts"

ASSET_TYPES = {
    ".css": {"text/css"},
    # RFC 9239 names text/javascript; an older /etc/mime.types may still say
    # application/javascript, which every browser runs too.
    ".js": {"text/javascript", "application/javascript"},
    ".png": {"image/png"},
}


async def test_the_docs_page_loads_its_assets_from_the_gateway_alone(client):
    response = await client.get(PAGE_PATH)
    assert response.status == 200
    assert (response.content_type, response.charset) == ("text/html", "utf-8")
    page = await response.text()
    # No absolute URL at all: no CDN, nothing that needs the internet.
    assert "://" not in page
    assets = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert {Path(asset).suffix for asset in assets} == set(ASSET_TYPES)
    for asset in assets:
        served = await client.get(asset)
        assert served.status == 200, asset
        assert served.content_type in ASSET_TYPES[Path(asset).suffix], asset


async def test_the_document_names_the_gateway_it_was_served_from_as_its_server(client):
    document_url = str(client.make_url("/openapi.json"))
    document = await (await client.get("/openapi.json")).json()
    # A relative URL, resolved against the document's own, as OpenAPI says:
    # "Try it out" then calls this gateway whatever its host and port.
    assert [urljoin(document_url, server["url"]) for server in document["servers"]] == [
        str(client.make_url("/"))
    ]


def _descriptions(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "description" and isinstance(value, str):
                yield value
            else:
                yield from _descriptions(value)
    elif isinstance(node, list):
        for item in node:
            yield from _descriptions(item)


async def test_no_description_hides_a_placeholder_as_an_html_tag(client):
    document = await (await client.get("/openapi.json")).json()
    # Descriptions are CommonMark, so the page would drop a bare <hash> as a tag.
    outside_code = [re.sub(r"`[^`]*`", "", text) for text in _descriptions(document)]
    assert [text for text in outside_code if re.search(r"<[A-Za-z/!?]", text)] == []


# --- in the browser -----------------------------------------------------------------------


@dataclass
class DocsPage:
    """/docs open in Chromium, every request to another origin refused and recorded."""

    page: Page
    origin: str
    elsewhere: list[str] = field(default_factory=list)
    script_errors: list[str] = field(default_factory=list)

    async def open(self) -> None:
        await self.page.goto(self.origin + PAGE_PATH)
        await self.page.locator(".opblock").first.wait_for()

    def assert_offline_and_sound(self) -> None:
        assert self.elsewhere == [], "the page reached beyond the gateway"
        assert self.script_errors == []


@pytest.fixture
def chromium() -> Path:
    if not CHROMIUM.exists():
        pytest.skip(
            f"no Chromium at {CHROMIUM}, and it could not be installed (apt-get install "
            "chromium, as root): the /docs browser test did not run"
        )
    return CHROMIUM


@pytest.fixture
async def docs_page(client, chromium, request: pytest.FixtureRequest) -> AsyncIterator[DocsPage]:
    """The page, then, passed or failed, a screenshot of it named for the test."""
    origin = f"http://{client.host}:{client.port}"
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            docs = DocsPage(page, origin)

            async def same_origin_only(route: Route) -> None:
                if route.request.url.startswith(origin + "/"):
                    await route.continue_()
                else:
                    docs.elsewhere.append(route.request.url)
                    await route.abort()

            await page.route("**/*", same_origin_only)
            page.on("pageerror", lambda error: docs.script_errors.append(str(error)))
            yield docs
            await page.screenshot(path=ARTIFACTS / f"{request.node.name}.png", full_page=True)
        finally:
            await browser.close()


async def test_the_docs_page_lists_every_operation_of_the_document(client, docs_page):
    document = await (await client.get("/openapi.json")).json()
    await docs_page.open()
    listed = await docs_page.page.eval_on_selector_all(
        ".opblock",
        """blocks => blocks.map(block => [
            block.querySelector('.opblock-summary-method').textContent,
            block.querySelector('.opblock-summary-path').dataset.path,
        ])""",
    )
    shown = {(method, path) for method, path in listed}
    assert shown == documented_operations(document)
    # Both dialects and the internal API, not merely whatever the document holds.
    assert {"/push_tokens", f"/v2/{BIND}", "/internal/v1/targets"} <= {p for _, p in shown}
    docs_page.assert_offline_and_sound()


async def test_try_it_out_on_navixy_bind_answers_success_and_stores_the_binding(
    new_session, db, docs_page
):
    hash_ = await new_session("alice")
    await docs_page.open()
    page = docs_page.page
    bind = page.locator("#operations-Navixy-navixy_bind_post")
    await bind.locator(".opblock-summary").click()
    await expect(bind.locator(".opblock-description")).to_contain_text("NVX <hash>")
    await bind.get_by_role("button", name="Try it out").click()
    # The document's own example, with a live session in place of its hash.
    body = bind.locator("textarea.body-param__text")
    example = json.loads(await body.input_value())
    await body.fill(json.dumps({**example, "hash": hash_}))
    await bind.get_by_role("button", name="Execute").click()

    answer = bind.locator(".live-responses-table tbody tr.response")
    await expect(answer.locator(".response-col_status")).to_have_text("200")
    # The response body's panel (the headers' panel is a <pre> too).
    shown = await answer.locator(".highlight-code code").inner_text()
    assert json.loads(shown) == {"success": True}
    assert await bind.locator(".request-url pre").inner_text() == f"{docs_page.origin}/v2/{BIND}"

    [row] = await registrations(db)
    assert row["user_id"] == "alice"
    assert row["session_id"] == await session_id(db, hash_)
    assert (row["provider"], row["token"]) == ("fcm", example["token"])
    docs_page.assert_offline_and_sound()

    # The operation from its title down to the gateway's answer, without
    # the documented answers below it. Boxes are in the viewport, a clip in the page.
    top, bottom = await bind.bounding_box(), await answer.bounding_box()
    assert top is not None and bottom is not None
    scrolled: float = await page.evaluate("window.scrollY")
    await page.screenshot(
        path=ARTIFACTS / "docs-navixy-bind.png",
        full_page=True,
        clip={
            "x": top["x"],
            "y": top["y"] + scrolled,
            "width": top["width"],
            "height": bottom["y"] + bottom["height"] - top["y"],
        },
    )
