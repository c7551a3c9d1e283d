"""GET /docs: Swagger UI served by the gateway itself, driven in headless Chromium."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urljoin

from gateway.docs import PAGE_PATH

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
