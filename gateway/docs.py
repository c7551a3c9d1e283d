"""GET /docs: Swagger UI reading /openapi.json, its assets served by the gateway itself."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from aiohttp import web

from gateway.expect import only_continue

PAGE_PATH = "/docs"
ASSETS_PATH = "/docs/assets"

# Every URL the page loads is on the gateway's own origin, so it works with no
# internet. validatorUrl: null stops Swagger UI asking validator.swagger.io
# about the document for its badge; "Try it out" calls the servers entry of
# the document, which is the origin the page was loaded from.
PAGE = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Push-token gateway API</title>
<link rel="stylesheet" href="{ASSETS_PATH}/swagger-ui.css">
<link rel="icon" type="image/png" href="{ASSETS_PATH}/favicon-32x32.png">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{ASSETS_PATH}/swagger-ui-bundle.js"></script>
<script>
window.ui = SwaggerUIBundle({{
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  validatorUrl: null,
  deepLinking: true,
  displayRequestDuration: true,
}});
</script>
</body>
</html>
""".encode()


def assets_directory() -> Path:
    """Swagger UI's dist files as the swagger-ui-py wheel ships them.

    Found without importing swagger_ui, whose framework glue would pull in
    jinja2 and PyYAML for nothing: the gateway only serves the files.
    """
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("swagger-ui-py is not installed: /docs has no Swagger UI to serve")
    directory = Path(spec.submodule_search_locations[0]) / "static"
    if not (directory / "swagger-ui-bundle.js").is_file():
        raise RuntimeError(f"no swagger-ui-bundle.js in {directory}: swagger-ui-py changed layout")
    return directory


async def serve_page(request: web.Request) -> web.Response:
    return web.Response(body=PAGE, content_type="text/html", charset="utf-8")


def setup_routes(app: web.Application) -> None:
    app.router.add_get(PAGE_PATH, serve_page, allow_head=False, expect_handler=only_continue)
    app.router.add_static(ASSETS_PATH, assets_directory(), expect_handler=only_continue)
