"""OpenAI-shaped errors on the /v1 routes: `{"error": {"message", "type", "param", "code"}}`.

OpenAI clients read that shape (the `openai` package raises BadRequestError, AuthenticationError, ... with
its `param` and `code`), so the /v1 routes answer every failure in it, validation errors included; the
rest of the service keeps its own ErrorResponse (service/api/errors.py). The shape is scoped by a route
class, not by the app's exception handlers, which serve POST /solve.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from fastapi import Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.admission import Overloaded
from service.api.disconnect import ClientGone
from service.api.errors import ERRORS_SHOWN, Unauthorized, json_syntax_error
from service.api.openai.schemas import ErrorBody, ErrorDetail
from service.api.streaming import Failed

log = logging.getLogger("service.api")  # the API's records under one name, whichever of its modules logs
INVALID = "invalid_request_error"
# OpenAI's codes for pydantic's error types, where it has one (besides unsupported_parameter and _value)
CODES = {"extra_forbidden": "unknown_parameter", "missing": "missing_required_parameter"}


class OpenAIError(Exception):
    """A failure to answer in OpenAI's shape: its status, message, and the `param` and `code` clients read."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = INVALID,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.detail = ErrorDetail(message=message, type=type, param=param, code=code)
        self.headers = headers

    def response(self) -> JSONResponse:
        body = jsonable_encoder(ErrorBody(error=self.detail))
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def param_of(location: Sequence[int | str]) -> str:
    """A validation error's location as a parameter path: ("body", "messages", 0, "content") -> messages[0].content."""
    path = ""
    for part in location[1:] if location and location[0] == "body" else location:
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    return path or "body"


def invalid(exc: RequestValidationError) -> OpenAIError:
    """400 naming the first parameter at fault (and every error, up to ERRORS_SHOWN, in the message).

    OpenAI answers invalid parameters with 400, not FastAPI's 422, and its own codes where it has one:
    unsupported_parameter and unsupported_value for what SC-TIR cannot honour, then CODES.
    """
    errors = exc.errors()
    if errors and errors[0]["type"] == "json_invalid":
        return OpenAIError(400, json_syntax_error(errors[0], exc.body)["msg"], param="body", code="invalid_json")
    parts = []
    for error in errors[:ERRORS_SHOWN]:
        message = "unrecognized request argument" if error["type"] == "extra_forbidden" else error["msg"]
        parts.append(f"{param_of(error['loc'])}: {message.removeprefix('Value error, ')}")
    if len(errors) > ERRORS_SHOWN:
        parts.append(f"and {len(errors) - ERRORS_SHOWN} more errors")
    first = errors[0]["type"]
    code = first if first.startswith("unsupported_") else CODES.get(first, "invalid_value")
    return OpenAIError(400, "; ".join(parts), param=param_of(errors[0]["loc"]), code=code)


# OpenAI's error type and code for the statuses a solve ends with (service.api.streaming.Failed)
FAILURES = {429: ("rate_limit_error", "rate_limit_exceeded"), 503: ("server_error", "all_candidates_failed")}


def failure(failed: Failed) -> OpenAIError:
    """A solve that ended without a vote (a full queue, every candidate failed), as POST /solve reports it."""
    type_, code = FAILURES.get(failed.status, ("server_error", None))
    return OpenAIError(failed.status, failed.message, type=type_, code=code, headers=failed.headers())


def as_openai(exc: Exception) -> OpenAIError:
    """The OpenAI-shaped form of whatever the route raised (the same statuses as POST /solve's, 400 for 422)."""
    match exc:
        case OpenAIError():
            return exc
        case RequestValidationError():
            return invalid(exc)
        case Unauthorized():
            message = "authorization: a valid bearer token (one of SCTIR_API_KEYS) is required"
            return OpenAIError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        case Overloaded():
            return failure(Failed(status=429, message=str(exc), retry_after_s=exc.retry_after_s))
        case ClientGone():
            return OpenAIError(499, "client closed the request")
        case StarletteHTTPException():  # 413 (body too large), 415 (not JSON), 400 (not UTF-8)
            param = "content-type" if exc.status_code == 415 else "body"
            message = str(exc.detail) if str(exc.detail).startswith(f"{param}:") else f"{param}: {exc.detail}"
            return OpenAIError(exc.status_code, message, param=param, headers=exc.headers)
    log.exception("unhandled error")
    return OpenAIError(500, f"internal error ({type(exc).__name__}); see the server log", type="server_error")


class OpenAIRoute(APIRoute):
    """A route whose every failure, from body validation and dependencies on, answers in OpenAI's shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def openai_shaped(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:
                if isinstance(exc, ClientGone):
                    log.info("client disconnected; candidates cancelled")
                return as_openai(exc).response()

        return openai_shaped
