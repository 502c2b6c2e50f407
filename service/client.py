"""The client of a running service's POST /solve, shared by `sctir solve --url` and the evaluation's HTTP backend.

One place for the API key, the timeouts (10 s to connect, no read timeout: a solve may take minutes,
and the service's deadline bounds it), the JSON both ways, and what a failure means: the URL is
unusable, nothing answers, or the service answered with an error.
"""

from __future__ import annotations

import httpx

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

    async def solve(self, request: SolveRequest) -> SolveResponse:
        """The service's response; ServiceError for any status but 200."""
        response = await self._request("POST", "/solve", json=request.model_dump(exclude_none=True))
        if response.status_code != 200:
            raise ServiceError(response.status_code, _message(response), _seconds(response.headers.get("Retry-After")))
        return SolveResponse.model_validate(response.json())

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, path: str, **kwargs: object) -> httpx.Response:
        try:
            return await self._http.request(method, self.url + path, **kwargs)
        except httpx.InvalidURL as error:
            raise InvalidServiceUrl(str(error)) from None
        except httpx.TransportError as error:
            raise ServiceUnreachable(f"cannot reach {self.url}: {error}") from None


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
