"""GET /docs: Swagger UI served by the gateway itself, driven in headless Chromium."""

from __future__ import annotations

from urllib.parse import urljoin


async def test_the_document_names_the_gateway_it_was_served_from_as_its_server(client):
    document_url = str(client.make_url("/openapi.json"))
    document = await (await client.get("/openapi.json")).json()
    # A relative URL, resolved against the document's own, as OpenAPI says:
    # "Try it out" then calls this gateway whatever its host and port.
    assert [urljoin(document_url, server["url"]) for server in document["servers"]] == [
        str(client.make_url("/"))
    ]
