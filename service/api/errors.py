"""The API's error responses: one ErrorResponse body for every failure, and the handlers that build it.

Validation errors quote the request back, cut short: a client that sent 60 KB must not get
60 KB back, possibly many times over.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.admission import Overloaded
from service.schemas import ErrorResponse

log = logging.getLogger(__package__)  # the API's records under one name, whichever of its modules logs
QUOTE_CHARS = 200  # of the client's input quoted back in an error
ERRORS_SHOWN = 20  # validation errors listed in one response


class Unauthorized(Exception):
    """No valid bearer token where the service has API keys."""


def error_response(request: Request, status: int, message: str, **extra: Any) -> JSONResponse:
    """The ErrorResponse of `request` (its id, the message; `headers` go on the response, the rest in the body)."""
    headers = extra.pop("headers", None)
    body = ErrorResponse(request_id=request.state.request_id, message=message, **extra)
    return JSONResponse(jsonable_encoder(body, exclude_none=True), status_code=status, headers=headers)


def cut(value: Any, limit: int = QUOTE_CHARS) -> Any:
    """`value`, or the start of its JSON text marked as cut when longer than `limit` characters."""
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


async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422: every error (up to ERRORS_SHOWN) in the message, field by field, and in `detail`."""
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
    return error_response(request, 422, "; ".join(parts), detail=shown)


async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    message = f"body: {exc.detail}" if exc.status_code == 400 else str(exc.detail)
    return error_response(request, exc.status_code, message, headers=exc.headers)


async def unauthorized(request: Request, exc: Unauthorized) -> JSONResponse:
    return error_response(
        request, 401, "authorization: a valid bearer token is required", headers={"WWW-Authenticate": "Bearer"}
    )


async def overloaded(request: Request, exc: Overloaded) -> JSONResponse:
    return error_response(request, 429, str(exc), headers={"Retry-After": str(exc.retry_after_s)})


async def internal(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error")
    return error_response(request, 500, f"internal error ({type(exc).__name__}); see the server log")


EXCEPTION_HANDLERS: dict[type[Exception], Callable[[Request, Any], Awaitable[Response]]] = {
    RequestValidationError: invalid_request,
    StarletteHTTPException: http_error,
    Unauthorized: unauthorized,
    Overloaded: overloaded,
    Exception: internal,
}
