"""The client of a running service's POST /solve, shared by `sctir solve --url` and the evaluation's HTTP backend.

One place for the API key, the timeouts (10 s to connect, no read timeout: a solve may take minutes,
and the service's deadline bounds it), the JSON both ways, and what a failure means: the URL is
unusable, nothing answers, or the service answered with an error. A caller that wants to watch the
solve gets its events as they come (the streamed /solve), and the same response at the end.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
from httpx_sse import aconnect_sse

from service.schemas import SolveRequest, SolveResponse

TIMEOUT = httpx.Timeout(10.0, read=None)
QUOTE_CHARS = 200  # of a reply that is not the service's JSON (some proxy's page)


class InvalidServiceUrl(ValueError):
    """The URL cannot be requested at all (not a URL)."""


class ServiceUnreachable(Exception):
    """Nothing answered at the URL: refused, reset, an unknown host."""


class ServiceError(Exception):
    """The service answered /solve with an error status; `message` is its own (its ErrorResponse's)."""

    def __init__(self, status: int, message: str, retry_after_s: float | None) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message
        self.retry_after_s = retry_after_s


class SolveClient:
    """POST /solve on the service at `url` (its base URL, e.g. http://127.0.0.1:8080)."""

    def __init__(self, url: str, api_key: str | None = None) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.AsyncClient(timeout=TIMEOUT, headers=headers)

    async def __aenter__(self) -> SolveClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def check(self) -> None:
        """Raises ServiceUnreachable unless something answers GET /healthz."""
        await self._request("GET", "/healthz")

    async def solve(
        self, request: SolveRequest, on_event: Callable[[str, dict[str, Any]], None] | None = None
    ) -> SolveResponse:
        """The service's response; ServiceError for any status but 200 (or a stream that ends in `error`).

        With `on_event`, the solve is streamed and every event but the result is handed to it (its name, its data).
        """
        body = request.model_dump(exclude_none=True)
        if on_event is not None:
            return await self._solve_streamed(body | {"stream": True}, on_event)
        response = await self._request("POST", "/solve", json=body)
        _raise_for_status(response)
        return SolveResponse.model_validate(response.json())

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _solve_streamed(
        self, body: dict[str, Any], on_event: Callable[[str, dict[str, Any]], None]
    ) -> SolveResponse:
        async with self._reaching(), aconnect_sse(self._http, "POST", self.url + "/solve", json=body) as source:
            if source.response.status_code != 200:
                await source.response.aread()
                _raise_for_status(source.response)
            async for event in source.aiter_sse():
                data = event.json()
                if event.event == "result":
                    return SolveResponse.model_validate(data)
                if event.event == "error":
                    raise ServiceError(data["status"], data["message"], data.get("retry_after_s"))
                on_event(event.event, data)
        raise ServiceUnreachable(f"{self.url} ended the stream before its result")

    async def _request(self, method: str, path: str, **kwargs: object) -> httpx.Response:
        async with self._reaching():
            return await self._http.request(method, self.url + path, **kwargs)

    @asynccontextmanager
    async def _reaching(self) -> AsyncIterator[None]:
        """httpx's failures to reach the service as ours."""
        try:
            yield
        except httpx.InvalidURL as error:
            raise InvalidServiceUrl(str(error)) from None
        except httpx.TransportError as error:
            raise ServiceUnreachable(f"cannot reach {self.url}: {error}") from None


def _raise_for_status(response: httpx.Response) -> None:
    if response.status_code != 200:
        raise ServiceError(response.status_code, _message(response), _seconds(response.headers.get("Retry-After")))


def _message(response: httpx.Response) -> str:
    """The service's error message, or the start of whatever else answered."""
    try:
        return str(response.json().get("message", response.text))
    except ValueError:  # not JSON: some proxy's page
        return response.text[:QUOTE_CHARS]


def _seconds(retry_after: str | None) -> float | None:
    """Retry-After in seconds, the form the service sends (None for an HTTP date or nothing)."""
    try:
        return float(retry_after) if retry_after else None
    except ValueError:
        return None
