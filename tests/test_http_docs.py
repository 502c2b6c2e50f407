"""/docs and /redoc work on an offline host: every asset they load comes from the service itself."""

from __future__ import annotations

import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import PurePosixPath
from urllib.parse import urljoin, urlsplit

import httpx
import pytest

from sandbox.executors import LocalExecutor
from service.api.app import create_app
from service.settings import Settings
from tests.support.doubles import ScriptedEngine
from tests.support.servers import serve_in_thread


class References(HTMLParser):
    """The URLs a page makes the browser load: src and href attributes, and <redoc spec-url>."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in ("src", "href", "spec-url") and value]


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    app = create_app(Settings(), engine=ScriptedEngine(lambda c, s, p: ("", 0.0)), executor=LocalExecutor())
    with serve_in_thread(app, "/healthz") as base:
        yield base


@pytest.mark.parametrize(("page", "assets"), [("/docs", {".js", ".css", ".png"}), ("/redoc", {".js", ".png"})])
def test_the_docs_load_nothing_from_another_host(url: str, page: str, assets: set[str]) -> None:
    response = httpx.get(url + page)
    assert response.status_code == 200 and "text/html" in response.headers["content-type"]
    html = response.text
    assert not re.findall(r"(?:https?:)?//[\w.-]+", html), html  # no absolute URL at all, nor scheme-relative
    parser = References()
    parser.feed(html)
    origin = urlsplit(url).netloc
    fetched = set()
    for reference in parser.urls:
        absolute = urljoin(url + page, reference)
        assert urlsplit(absolute).netloc == origin, reference
        asset = httpx.get(absolute)
        assert asset.status_code == 200 and len(asset.content) > 0, reference
        fetched.add(PurePosixPath(urlsplit(absolute).path).suffix)
    assert fetched - {".json"} == assets  # the page's script, style and icon (and ReDoc's schema)


def test_the_swagger_stylesheet_imports_nothing_from_another_host(url: str) -> None:
    parser = References()
    parser.feed(httpx.get(f"{url}/docs").text)
    stylesheet = next(reference for reference in parser.urls if reference.endswith(".css"))
    css = httpx.get(urljoin(url, stylesheet)).text
    assert not re.findall(r"url\(\s*['\"]?(?:https?:)?//|@import", css)
