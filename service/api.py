"""The HTTP API: app factory, lifespan (engine + executor), routes and error handlers."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from fastapi import Depends, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sandbox.executor import Executor
from service.admission import Admission, Overloaded
from service.components import make_engine, make_executor
from service.engines.base import READY_TIMEOUT_S, Engine
from service.engines.vllm_local import VllmEngine
from service.logs import request_id_var
from service.machine import choose
from service.metrics import Metrics
from service.schemas import ErrorResponse, SolveRequest, SolveResponse
from service.settings import Settings
from service.solver import CandidateStatus, Solver, SolveResult

log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_BODY_BYTES = 64 * 1024
QUOTE_CHARS = 200  # of the client's input quoted back in an error
ERRORS_SHOWN = 20  # validation errors listed in one response
# Retry-After of a 503 the engine caused (not ready, or every candidate failed on it): a stalled or
# restarting engine is back in seconds, or the next 503 says the same again at once.
ENGINE_RETRY_AFTER_S = 5
ENGINE_FAILURE = "engine: "  # how the solver begins a candidate's error that the engine caused


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


class Unauthorized(Exception):
    pass


class StartupFailed(Exception):
    """A component the service cannot work without did not start: the process exits instead of serving."""


class BodyTooLarge(StarletteHTTPException):
    """Raised from the request's receive channel; FastAPI lets HTTPExceptions from reading the body through."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"body: larger than {limit} bytes")


class RequestIdMiddleware:
    """Gives every request an id (the client's X-Request-ID if sane), echoed in the response.

    A plain ASGI middleware, not BaseHTTPMiddleware, so the endpoint still
    sees the client's disconnect on the raw receive channel.
    """

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


def cut(value: Any, limit: int = QUOTE_CHARS) -> Any:
    """`value`, or the start of its JSON text marked as cut when longer than `limit` characters.

    Errors quote the request back (a field's input, an unknown key); a client that
    sent 60 KB must not get 60 KB back, possibly many times over.
    """
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    if len(text) <= limit:
        return value
    return f"{text[:limit]}... (cut: {len(text)} characters in all)"


def quoted_briefly(error: dict[str, Any]) -> dict[str, Any]:
    """A validation error (JSON-encoded) with its quotes of the request cut short: location, input, context."""
    brief = {**error, "loc": [cut(part) for part in error["loc"]]}
    if "input" in brief:
        brief["input"] = cut(brief["input"])
    if isinstance(brief.get("ctx"), dict):
        brief["ctx"] = {key: cut(value) for key, value in brief["ctx"].items()}
    return brief


def json_syntax_error(error: dict[str, Any], document: str) -> dict[str, Any]:
    """FastAPI's json_invalid error, whose location is a character offset, told as a line and column."""
    position = error["loc"][-1]
    line = document.count("\n", 0, position) + 1
    column = position - document.rfind("\n", 0, position)
    reason = error["ctx"]["error"]
    return {
        "type": "json_invalid",
        "loc": ["body"],
        "msg": f"invalid JSON at line {line}, column {column}: {reason}",
        "ctx": {"line": line, "column": column, "error": reason},
    }


def is_json(content_type: str | None) -> bool:
    """application/json or application/*+json: the media types FastAPI parses as JSON."""
    media_type = (content_type or "").split(";")[0].strip().lower()
    return media_type == "application/json" or (media_type.startswith("application/") and media_type.endswith("+json"))


def require_json(request: Request) -> None:
    """Refuses a body not declared JSON (415), which FastAPI would leave unparsed: 'not a valid dictionary'.

    A dependency, as FastAPI solves dependencies before it validates the body.
    """
    content_type = request.headers.get("content-type")
    if not is_json(content_type):
        given = f"got {cut(content_type)!r}" if content_type else "got none"
        raise StarletteHTTPException(
            415, f"content-type: send the body as JSON, with the header `Content-Type: application/json` ({given})"
        )


async def _wait_for_disconnect(request: Request) -> None:
    """Returns when the client goes away (the body is already read, so receive() waits)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def cancel_on_disconnect(work: Awaitable[T], request: Request) -> T:
    """Run `work`; if the client disconnects first, cancel it (and so its candidates)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.create_task(_wait_for_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            raise ClientGone
    return task.result()


def create_app(settings: Settings, engine: Engine | None = None, executor: Executor | None = None) -> FastAPI:
    """The service; tests pass their own engine or executor, production builds them from settings."""
    if engine is None:  # the engine and model this machine can serve, and their request defaults
        settings = choose(settings)
    engine = engine or make_engine(settings)
    executor = executor or make_executor(settings)
    metrics = Metrics()
    solver = Solver(engine, executor, on_execution=metrics.observe_execution)
    admission = Admission(settings.max_in_flight, settings.max_queue)
    metrics.track_queue(lambda: admission.in_flight, lambda: admission.queued)
    if callable(getattr(executor, "stats", None)):  # the Docker pool
        metrics.track_sandbox(executor.stats)
    startup_errors: dict[str, str] = {}
    # Without the executor no candidate can run its code, and an in-process vLLM that did not load never
    # will: those refuse to serve. A remote engine may come up later: serve, /readyz says why it is not ready.
    # The executor starts first: it is quick to fail, the in-process engine slow to load.
    required = {"executor": True, "engine": isinstance(engine, VllmEngine)}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            for name, component in (("executor", executor), ("engine", engine)):
                try:
                    await component.start()
                except Exception as error:
                    if required[name]:
                        raise StartupFailed(f"{name} failed to start: {error}") from error
                    startup_errors[name] = str(error)
                    log.error("%s failed to start: %s", name, error)
            yield
        finally:
            await engine.close()
            await executor.close()

    # FastAPIOffline: /docs and /redoc load their JavaScript, CSS and icon from the package, not a CDN.
    app = FastAPIOffline(
        title="SC-TIR solver",
        version="0.1.0",
        description="Self-consistent tool-integrated reasoning (NuminaMath-7B-TIR) for competition math.",
        lifespan=lifespan,
    )
    app.add_middleware(BodyLimitMiddleware)
    app.add_middleware(RequestIdMiddleware)
    app.add_middleware(StartupFailureMiddleware)
    bearer = HTTPBearer(auto_error=False, description="One of the server's SCTIR_API_KEYS, when set.")
    accepted_keys = [key.get_secret_value().encode() for key in settings.api_keys]

    def require_api_key(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        given = credentials.credentials.encode() if credentials else b""
        if not any(secrets.compare_digest(given, key) for key in accepted_keys):
            raise Unauthorized

    def error(request: Request, status: int, message: str, **extra: Any) -> JSONResponse:
        headers = extra.pop("headers", None)
        body = ErrorResponse(request_id=request.state.request_id, message=message, **extra)
        return JSONResponse(jsonable_encoder(body, exclude_none=True), status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = jsonable_encoder(exc.errors())
        if errors and errors[0]["type"] == "json_invalid":
            errors = [json_syntax_error(errors[0], exc.body)]
        shown = [quoted_briefly(err) for err in errors[:ERRORS_SHOWN]]
        parts = []
        for err in shown:
            field = ".".join(str(p) for p in err["loc"] if p != "body") or "body"
            parts.append(f"{field}: {err['msg']}")
        if len(errors) > len(shown):
            parts.append(f"and {len(errors) - len(shown)} more errors")
        return error(request, 422, "; ".join(parts), detail=shown)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = f"body: {exc.detail}" if exc.status_code == 400 else str(exc.detail)
        return error(request, exc.status_code, message, headers=exc.headers)

    @app.exception_handler(Unauthorized)
    async def unauthorized(request: Request, exc: Unauthorized) -> JSONResponse:
        return error(
            request, 401, "authorization: a valid bearer token is required", headers={"WWW-Authenticate": "Bearer"}
        )

    @app.exception_handler(Overloaded)
    async def overloaded(request: Request, exc: Overloaded) -> JSONResponse:
        return error(request, 429, str(exc), headers={"Retry-After": str(exc.retry_after_s)})

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error(request, 500, f"internal error ({type(exc).__name__}); see the server log")

    @app.get("/healthz", summary="The process is alive")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    async def engine_ready() -> bool:
        """The engine's own check, bounded: a probe must say "not ready" about a frozen engine in a second or so."""
        try:
            return await asyncio.wait_for(engine.ready(), 2 * READY_TIMEOUT_S)
        except TimeoutError:
            return False

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    async def prometheus_metrics() -> Response:
        metrics.engine_ready.set(await engine_ready())
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/readyz", summary="The engine and the executor can take work")
    async def readyz() -> JSONResponse:
        checks = {"engine": await engine_ready(), "executor": await executor.ready()}
        metrics.engine_ready.set(checks["engine"])
        body: dict[str, Any] = {"ready": all(checks.values()), **checks}
        if startup_errors and not body["ready"]:
            body["errors"] = startup_errors
        if body["ready"]:
            return JSONResponse(body)
        headers = {} if checks["engine"] else {"Retry-After": str(ENGINE_RETRY_AFTER_S)}
        return JSONResponse(body, status_code=503, headers=headers)

    guards = [Depends(require_api_key)] if accepted_keys else []

    @app.post(
        "/solve",
        dependencies=[*guards, Depends(require_json)],
        response_model=SolveResponse,
        summary="Solve a problem with SC-TIR",
        responses={
            400: {"model": ErrorResponse},
            401: {"model": ErrorResponse},
            413: {"model": ErrorResponse},
            415: {"model": ErrorResponse},
            422: {"model": ErrorResponse},
            429: {"model": ErrorResponse},
            499: {"model": ErrorResponse},
            503: {"model": ErrorResponse},
        },
    )
    async def solve(body: SolveRequest, request: Request) -> SolveResponse | JSONResponse:
        request_id = request.state.request_id
        config = body.to_config(settings)

        async def admitted() -> tuple[float, SolveResult]:
            async with admission.slot() as queue_s:
                return queue_s, await solver.solve(body.problem, config, request_id)

        started = time.monotonic()
        try:  # a client that leaves while queued or solving cancels its candidates
            queue_s, result = await cancel_on_disconnect(admitted(), request)
        except ClientGone:
            log.info("client disconnected; candidates cancelled")
            return error(request, 499, "client closed the request")
        failures = [c.error for c in result.candidates if c.status is CandidateStatus.FAILED]
        all_failed = len(failures) == len(result.candidates)
        metrics.observe_solve(result, time.monotonic() - started, all_failed=all_failed)
        if all_failed:
            message = f"every candidate failed; first error: {failures[0]}"
            log.error(message)
            engine_down = any((failure or "").startswith(ENGINE_FAILURE) for failure in failures)
            headers = {"Retry-After": str(ENGINE_RETRY_AFTER_S)} if engine_down else None
            return error(request, 503, message, headers=headers)
        log.info(
            "solved",
            extra={
                "answer": result.answer,
                "agreement": round(result.agreement, 3),
                "candidates": len(result.candidates),
                "total_s": round(result.total_s, 3),
            },
        )
        return SolveResponse.from_result(result, config, request_id, queue_s, body.return_traces)

    return app
