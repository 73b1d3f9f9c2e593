"""/docs and /openapi.json: Swagger UI served from the files of the swagger-ui-bundle wheel
(Swagger UI 4.15.5, Apache-2.0), so the page fetches nothing from the internet.

With api.tokens configured, the page, its files and the document need a read token."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send
from swagger_ui_bundle import swagger_ui_path

from .auth import Caller
from .state import authorize, reader

__all__ = ["SWAGGER_UI_VERSION", "mount_docs"]

SWAGGER_UI_VERSION = "4.15.5"
_STATIC = "/static/swagger-ui"
_BEARER = {
    "type": "http",
    "scheme": "bearer",
    "description": "An api.tokens token: the read role for GETs, admin for writes",
}


class _ReadableFiles(StaticFiles):
    """Static files served to callers with at least the read role."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        authorize(Request(scope), "read")
        await super().__call__(scope, receive, send)


def mount_docs(app: FastAPI, tokens_required: bool) -> None:
    """Serve /docs, its assets and /openapi.json; the app must be created with
    docs_url=None and openapi_url=None."""
    app.mount(_STATIC, _ReadableFiles(directory=str(swagger_ui_path)), name="swagger-ui")

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi(caller: Caller = reader) -> JSONResponse:
        return JSONResponse(_with_bearer(app.openapi(), tokens_required))

    @app.get("/docs", include_in_schema=False)
    async def docs(caller: Caller = reader) -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="tokenquota API",
            swagger_js_url=f"{_STATIC}/swagger-ui-bundle.js",
            swagger_css_url=f"{_STATIC}/swagger-ui.css",
            swagger_favicon_url=f"{_STATIC}/favicon-32x32.png",
        )


def _with_bearer(schema: dict[str, Any], required: bool) -> dict[str, Any]:
    """`schema` declaring the bearer scheme, and requiring it on every operation when
    tokens are configured (/healthz, the one open endpoint, is not in the document)."""
    schema.setdefault("components", {})["securitySchemes"] = {"bearer": _BEARER}
    if required:
        schema["security"] = [{"bearer": []}]
    return schema
