"""The API's ASGI middleware: a request id for every request, a cap on the body, a one-line start-up failure.

Plain ASGI middleware, not BaseHTTPMiddleware, so the endpoint still sees the client's disconnect
on the raw receive channel (a client that leaves cancels its candidates).
"""

from __future__ import annotations

import sys
import uuid

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.logs import request_id_var

MAX_BODY_BYTES = 64 * 1024


class StartupFailed(Exception):
    """A component the service cannot work without did not start: the process exits instead of serving."""


class BodyTooLarge(StarletteHTTPException):
    """Raised from the request's receive channel; FastAPI lets HTTPExceptions from reading the body through."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"body: larger than {limit} bytes")


class RequestIdMiddleware:
    """Gives every request an id (the client's X-Request-ID if sane), echoed in the response and in its logs."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = given if given.isascii() and 0 < len(given) <= 128 and given.isprintable() else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", []).append((b"x-request-id", request_id.encode()))
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)


class BodyLimitMiddleware:
    """Refuses request bodies over `limit` bytes, declared or not, with a 413.

    The bytes are counted as they arrive, because a chunked body declares no
    Content-Length: reading stops at the first chunk past the limit (a declared
    length over it stops it before the first), so the rest is never held.
    The BodyTooLarge it raises reaches the app's error handlers like any 413.
    """

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        declared_too_large = declared.isdigit() and int(declared) > self.limit
        received = 0

        async def counted() -> Message:
            nonlocal received
            if declared_too_large:
                raise BodyTooLarge(self.limit)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        await self.app(scope, counted, send)


class StartupFailureMiddleware:
    """Tells the server why start-up failed in one line (a StartupFailed's reason), not in a traceback.

    Starlette hands the server the whole traceback of what the lifespan raised, and
    uvicorn logs it before exiting; the reason, which names the way out, is what the
    operator needs.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            return await self.app(scope, receive, send)

        async def send_reason(message: Message) -> None:
            failure = sys.exception()  # Starlette sends startup.failed while it handles the lifespan's exception
            if message["type"] == "lifespan.startup.failed" and isinstance(failure, StartupFailed):
                message = {**message, "message": str(failure)}
            await send(message)

        await self.app(scope, receive, send_reason)
