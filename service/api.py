"""The HTTP API: app factory, lifespan (engine + executor), routes and error handlers."""

from __future__ import annotations

import asyncio
import logging
import secrets
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
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sandbox.executor import Executor
from service.admission import Admission, Overloaded
from service.components import make_engine, make_executor
from service.engines.base import Engine
from service.logs import request_id_var
from service.metrics import Metrics
from service.schemas import ErrorResponse, SolveRequest, SolveResponse
from service.settings import Settings
from service.solver import CandidateStatus, Solver, SolveResult

log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_BODY_BYTES = 64 * 1024


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


class Unauthorized(Exception):
    pass


class RequestIdMiddleware:
    """Gives every request an id (the client's X-Request-ID if sane), echoed in the response.

    A plain ASGI middleware, not BaseHTTPMiddleware, so the endpoint still
    sees the client's disconnect on the raw receive channel. It also refuses
    bodies whose declared length is over MAX_BODY_BYTES before reading them.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = given if given.isascii() and 0 < len(given) <= 128 and given.isprintable() else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", []).append((b"x-request-id", request_id.encode()))
            await send(message)

        try:
            length = headers.get(b"content-length", b"0")
            if length.isdigit() and int(length) > MAX_BODY_BYTES:
                body = ErrorResponse(request_id=request_id, message=f"body: larger than {MAX_BODY_BYTES} bytes")
                response = JSONResponse(body.model_dump(exclude_none=True), status_code=413)
                return await response(scope, receive, send_with_id)
            await self.app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)


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
    engine = engine or make_engine(settings)
    executor = executor or make_executor(settings)
    metrics = Metrics()
    solver = Solver(engine, executor, on_execution=metrics.observe_execution)
    admission = Admission(settings.max_in_flight, settings.max_queue)
    metrics.track_queue(lambda: admission.in_flight, lambda: admission.queued)
    if callable(getattr(executor, "stats", None)):  # the Docker pool
        metrics.track_sandbox(executor.stats)
    startup_errors: dict[str, str] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for name, component in (("engine", engine), ("executor", executor)):
            try:
                await component.start()
            except Exception as error:  # keep serving: /readyz reports it, a remote may come up later
                startup_errors[name] = str(error)
                log.error("%s failed to start: %s", name, error)
        try:
            yield
        finally:
            await engine.close()
            await executor.close()

    app = FastAPI(
        title="SC-TIR solver",
        version="0.1.0",
        description="Self-consistent tool-integrated reasoning (NuminaMath-7B-TIR) for competition math.",
        lifespan=lifespan,
    )
    app.add_middleware(RequestIdMiddleware)
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
        parts = []
        for err in errors:
            field = ".".join(str(p) for p in err["loc"] if p != "body") or "body"
            parts.append(f"{field}: {err['msg']}")
        return error(request, 422, "; ".join(parts), detail=errors)

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

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    async def prometheus_metrics() -> Response:
        metrics.engine_ready.set(await engine.ready())
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/readyz", summary="The engine and the executor can take work")
    async def readyz() -> JSONResponse:
        checks = {"engine": await engine.ready(), "executor": await executor.ready()}
        metrics.engine_ready.set(checks["engine"])
        body: dict[str, Any] = {"ready": all(checks.values()), **checks}
        if startup_errors and not body["ready"]:
            body["errors"] = startup_errors
        return JSONResponse(body, status_code=200 if body["ready"] else 503)

    @app.post(
        "/solve",
        dependencies=[Depends(require_api_key)] if accepted_keys else [],
        response_model=SolveResponse,
        summary="Solve a problem with SC-TIR",
        responses={
            400: {"model": ErrorResponse},
            401: {"model": ErrorResponse},
            413: {"model": ErrorResponse},
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
        if len(failures) == len(result.candidates):
            metrics.observe_error(time.monotonic() - started)
            return error(request, 503, f"every candidate failed; first error: {failures[0]}")
        metrics.observe_solve(result, time.monotonic() - started)
        log.info(
            "solved",
            extra={"answer": result.answer, "agreement": result.agreement, "total_s": round(result.total_s, 3)},
        )
        return SolveResponse.from_result(result, config, request_id, queue_s, body.return_traces)

    return app
