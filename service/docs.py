"""The interactive API docs (``/docs``), served with their assets from the API itself.

FastAPI's default page loads Swagger UI from a CDN, which leaves an offline or locked-down
install with a blank page. Swagger UI's files (swagger-ui-dist, Apache-2.0, with its LICENSE and
NOTICE beside them) are vendored under ``service/static/swagger``; ``README.md`` there says
which release and how to update it. ReDoc, which would need a CDN too, is off.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

SWAGGER_DIR = Path(__file__).resolve().parent / "static" / "swagger"
ASSETS_PATH = "/docs/assets"


def install_docs(app: FastAPI, docs_url: str = "/docs") -> None:
    """``docs_url`` and its assets; the app must be built with ``docs_url=None``."""
    app.mount(ASSETS_PATH, StaticFiles(directory=SWAGGER_DIR), name="swagger-assets")

    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_PATH}/favicon-32x32.png",
            # The validator badge would fetch an image from swagger.io.
            swagger_ui_parameters={"validatorUrl": None},
        )

    app.add_route(docs_url, swagger_ui, include_in_schema=False)
