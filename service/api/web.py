"""The web page at `/`: plain files from service/web (no build step), served by the service itself.

The page loads nothing from elsewhere (KaTeX is vendored under service/web/vendor), so it works on an
offline host; its Content-Security-Policy says so to the browser, which then refuses any other origin.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
# Same-origin only: scripts, styles, fonts and the streamed POST /solve. KaTeX sets its inline styles
# through the DOM (CSSOM), which style-src does not restrict, so no 'unsafe-inline' is needed.
CONTENT_SECURITY_POLICY = "default-src 'self'; base-uri 'none'; object-src 'none'; frame-ancestors 'none'"
# Revalidated on every load (a cheap 304 by ETag): after an upgrade the page and its scripts change together.
REVALIDATE = "no-cache"
PAGE_HEADERS = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "Cache-Control": REVALIDATE}


class RevalidatedFiles(StaticFiles):
    """StaticFiles whose responses a browser revalidates instead of guessing how long they stay fresh."""

    def file_response(self, *args, **kwargs) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers["Cache-Control"] = REVALIDATE
        return response


def add_web_routes(app: FastAPI) -> None:
    """`GET /` (the page) and `/static/...` (its scripts, styles and the vendored KaTeX), outside the schema."""
    app.mount("/static", RevalidatedFiles(directory=WEB_DIR), name="static")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(WEB_DIR / "index.html", headers=PAGE_HEADERS)
