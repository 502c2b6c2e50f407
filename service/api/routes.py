"""The API's endpoints: plain handlers that find the solver, engine, executor and the rest on `app.state`."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST
from sse_starlette import EventSourceResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.api.disconnect import ClientGone, cancel_on_disconnect
from service.api.errors import Unauthorized, cut, error_response
from service.api.state import Collaborators, collaborators
from service.api.streaming import ENGINE_RETRY_AFTER_S, Failed, Result, event_stream, solve_events
from service.engines.base import READY_TIMEOUT_S
from service.events import Event
from service.schemas import ErrorResponse, SolveRequest, SolveResponse

log = logging.getLogger(__package__)  # the API's records under one name, whichever of its modules logs
bearer = HTTPBearer(auto_error=False, description="One of the server's SCTIR_API_KEYS, when set.")


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


def require_api_key(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
    """Refuses a request without one of the service's API keys (compared in constant time)."""
    given = credentials.credentials.encode() if credentials else b""
    if not any(secrets.compare_digest(given, key) for key in collaborators(request).api_keys):
        raise Unauthorized


async def healthz() -> dict[str, str]:
    return {"status": "ok"}


async def engine_ready(api: Collaborators) -> bool:
    """The engine's own check, bounded: a probe must say "not ready" about a frozen engine in a second or so."""
    try:
        return await asyncio.wait_for(api.engine.ready(), 2 * READY_TIMEOUT_S)
    except TimeoutError:
        return False


async def prometheus_metrics(request: Request) -> Response:
    api = collaborators(request)
    api.metrics.engine_ready.set(await engine_ready(api))
    return Response(api.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


async def readyz(request: Request) -> JSONResponse:
    api = collaborators(request)
    checks = {"engine": await engine_ready(api), "executor": await api.executor.ready()}
    api.metrics.engine_ready.set(checks["engine"])
    body: dict[str, Any] = {"ready": all(checks.values()), **checks}
    if api.startup_errors and not body["ready"]:
        body["errors"] = api.startup_errors
    if body["ready"]:
        return JSONResponse(body)
    headers = {} if checks["engine"] else {"Retry-After": str(ENGINE_RETRY_AFTER_S)}
    return JSONResponse(body, status_code=503, headers=headers)


def wants_stream(body: SolveRequest, request: Request) -> bool:
    """`"stream": true`, or an Accept header that names server-sent events."""
    return body.stream or "text/event-stream" in request.headers.get("accept", "").lower()


async def solve(body: SolveRequest, request: Request) -> SolveResponse | JSONResponse | EventSourceResponse:
    api = collaborators(request)
    request_id = request.state.request_id
    config = body.to_config(api.settings)
    streamed = wants_stream(body, request)
    events = solve_events(api, body.problem, config, request_id, traces=body.return_traces, progress=streamed)
    if streamed:
        api.admission.check()  # a full queue is a 429 before the stream starts, as for one JSON body
        return event_stream(events, request_id, config)
    try:  # a client that leaves while queued or solving cancels its candidates
        outcome = await cancel_on_disconnect(last(events), request)
    except ClientGone:
        log.info("client disconnected; candidates cancelled")
        return error_response(request, 499, "client closed the request")
    if isinstance(outcome, Failed):
        return error_response(request, outcome.status, outcome.message, headers=outcome.headers())
    assert isinstance(outcome, Result)
    return outcome.response


async def last(events: AsyncIterator[Event]) -> Event:
    """The last of `events` (a solve without progress: Started, then Result or Failed)."""
    async for event in events:
        final = event
    return final


SOLVE_ERRORS = (400, 401, 413, 415, 422, 429, 499, 503)


def add_routes(app: FastAPI, *, api_keys: bool) -> None:
    """The endpoints; /solve asks for a bearer token only where the service has `api_keys`."""
    app.add_api_route("/healthz", healthz, methods=["GET"], summary="The process is alive")
    app.add_api_route(
        "/metrics",
        prometheus_metrics,
        methods=["GET"],
        summary="Prometheus metrics",
        response_class=PlainTextResponse,
    )
    app.add_api_route("/readyz", readyz, methods=["GET"], summary="The engine and the executor can take work")
    guards = [Depends(require_api_key)] if api_keys else []
    app.add_api_route(
        "/solve",
        solve,
        methods=["POST"],
        dependencies=[*guards, Depends(require_json)],
        response_model=SolveResponse,
        summary="Solve a problem with SC-TIR",
        responses={
            200: {
                "content": {
                    "text/event-stream": {
                        "description": "With `stream`: events start, step, execution, candidate, vote, then "
                        "result (this response's JSON) or error (see the README)."
                    }
                }
            },
            **{status: {"model": ErrorResponse} for status in SOLVE_ERRORS},
        },
    )
