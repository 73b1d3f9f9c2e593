"""The dashboard page at `/`: one HTML file, its script and style, and uPlot (vendored
from npm, see api/static/vendor/VENDORED.md), all served from the package's files.

The page and its files hold no data, so they are served without a token; every number
comes from the /v1 endpoints, which the page calls with the bearer token the user gives
it (kept in the tab's sessionStorage, never in a URL)."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

__all__ = ["STATIC_DIR", "mount_page"]

#: The page's files and the vendored libraries.
STATIC_DIR = Path(__file__).parent / "static"


def mount_page(app: FastAPI) -> None:
    """Serve the page at `/` and its files under `/ui/`."""
    app.mount("/ui", StaticFiles(directory=STATIC_DIR), name="ui")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(
            STATIC_DIR / "page" / "index.html", headers={"Cache-Control": "no-cache"}
        )
