"""A real browser in tests: Debian's headless Chromium driven by Playwright.

Playwright's own browser download cannot work here (no network for it), so it drives the system's
/usr/bin/chromium. `require_browser` skips a test where either is missing, naming it; with
SCTIR_REQUIRE_BROWSER=1 (CI: `make test`) it fails instead, so a CI run cannot pass by skipping.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tests.support.docker import unavailable

if TYPE_CHECKING:  # pragma: no cover
    from playwright.sync_api import Browser, Page, Request, Response

CHROMIUM = os.environ.get("SCTIR_CHROMIUM", "/usr/bin/chromium")


def browser_problem() -> str | None:
    """Why no browser test can run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright is not installed (pip install -e '.[test]')"
    if not (os.path.isfile(CHROMIUM) or shutil.which(CHROMIUM)):
        return f"no Chromium at {CHROMIUM} (apt-get install chromium, or scripts/install-system-deps.sh)"
    return None


def require_browser() -> None:
    problem = browser_problem()
    if problem is not None:
        unavailable(problem, "SCTIR_REQUIRE_BROWSER")


@contextmanager
def chromium() -> Iterator[Browser]:
    """Headless Chromium (the system's), closed afterwards."""
    require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class PageProblems:
    """What went wrong on a page: console errors, uncaught exceptions, failed or refused requests."""

    requested: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    error_responses: list[str] = field(default_factory=list)

    no_store_streams: list[Request] = field(default_factory=list)

    def watch(self, page: Page) -> PageProblems:
        page.on("request", lambda request: self.requested.append(request.url))
        page.on("console", lambda message: message.type == "error" and self.console_errors.append(message.text))
        page.on("pageerror", lambda error: self.page_errors.append(str(error)))
        page.on("response", self._response)
        page.on("requestfailed", self._failed)
        return self

    def _response(self, response: Response) -> None:
        if response.status >= 400:
            self.error_responses.append(f"{response.status} {response.url}")
        headers = response.headers
        if headers.get("content-type", "").startswith("text/event-stream") and "no-store" in headers.get(
            "cache-control", ""
        ):
            self.no_store_streams.append(response.request)

    def _failed(self, request: Request) -> None:
        # Chromium reports a `Cache-Control: no-store` stream that the page read to its end as aborted
        # (microsoft/playwright#42742): not a failure. The tests see the page draw the stream's last event.
        if request.failure == "net::ERR_ABORTED" and request in self.no_store_streams:
            return
        self.failed_requests.append(f"{request.url}: {request.failure}")

    def all(self, origin: str) -> list[str]:
        """Every problem, and every request that went anywhere but `origin` (the page needs no other host)."""
        foreign = [f"request to another origin: {url}" for url in self.requested if not url.startswith(origin + "/")]
        return self.console_errors + self.page_errors + self.failed_requests + self.error_responses + foreign
