"""The API's own documentation pages, served with no CDN: Swagger UI's assets come from the package.

Litestar's render plugins load Swagger UI, Redoc, fonts and a favicon from CDNs by default, which
breaks offline and on closed networks. `swagger-ui-bundle-v2` ships Swagger UI 5 (which reads
OpenAPI 3.1) inside a wheel; its files are served under `/schema/assets`, and `/schema` and
`/schema/swagger` render that one UI. `/schema/openapi.json` and `/schema/openapi.yaml` give the
document itself.
"""

from __future__ import annotations

from pathlib import Path

from litestar.openapi.plugins import (
    JsonRenderPlugin,
    OpenAPIRenderPlugin,
    SwaggerRenderPlugin,
    YamlRenderPlugin,
)
from litestar.router import Router
from litestar.static_files import create_static_files_router
from swagger_ui_bundle import swagger_ui_path

ASSETS = "/schema/assets"


def render_plugins() -> list[OpenAPIRenderPlugin]:
    return [
        SwaggerRenderPlugin(
            path=["/", "/swagger"],
            js_url=f"{ASSETS}/swagger-ui-bundle.js",
            css_url=f"{ASSETS}/swagger-ui.css",
            standalone_preset_js_url=f"{ASSETS}/swagger-ui-standalone-preset.js",
            favicon=f"<link rel='icon' type='image/png' href='{ASSETS}/favicon-32x32.png'>",
        ),
        JsonRenderPlugin(path="/openapi.json"),
        YamlRenderPlugin(path="/openapi.yaml"),
    ]


def assets_router() -> Router:
    return create_static_files_router(
        path=ASSETS, directories=[Path(str(swagger_ui_path))], include_in_schema=False, tags=["health"]
    )
