"""/docs: Swagger UI served from the files of the swagger-ui-bundle wheel (Swagger UI
4.15.5, Apache-2.0), so the page fetches nothing from the internet."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

__all__ = ["SWAGGER_UI_VERSION", "mount_docs"]

SWAGGER_UI_VERSION = "4.15.5"
_STATIC = "/static/swagger-ui"


def mount_docs(app: FastAPI) -> None:
    """Serve /docs and its assets; the app must be created with docs_url=None."""
    app.mount(_STATIC, StaticFiles(directory=str(swagger_ui_path)), name="swagger-ui")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="tokenquota API",
            swagger_js_url=f"{_STATIC}/swagger-ui-bundle.js",
            swagger_css_url=f"{_STATIC}/swagger-ui.css",
            swagger_favicon_url=f"{_STATIC}/favicon-32x32.png",
        )
