"""The /v1 endpoints: GET /v1/models and POST /v1/chat/completions, SC-TIR as an OpenAI chat model.

Every failure answers in OpenAI's error shape (OpenAIRoute); auth, admission, deadlines, early stopping
and a client's disconnect work as on POST /solve.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request

from service.api.disconnect import cancel_on_disconnect
from service.api.openai.answer import chat_completion
from service.api.openai.errors import OpenAIError, OpenAIRoute
from service.api.openai.schemas import MODEL_ID, ChatCompletion, ChatCompletionRequest, ErrorBody, ModelCard, ModelList
from service.api.routes import require_api_key, require_json
from service.api.state import Collaborators, collaborators
from service.schemas import SolveResponse
from service.settings import Settings
from service.solver import SolveConfig, SolveResult
from service.solving import AllCandidatesFailed, solve_once

SERVING_SINCE = int(time.time())  # the `created` of the model card
CHAT_ERRORS = (400, 401, 404, 413, 415, 429, 503)


def model_card(settings: Settings) -> ModelCard:
    return ModelCard(id=MODEL_ID, created=SERVING_SINCE, root=settings.model)


def chosen_model(name: str, settings: Settings) -> str:
    """`name` if it names this server's model (MODEL_ID, or the served model's own name); else a 404."""
    if name in (MODEL_ID, settings.model):
        return name
    served = f"`{MODEL_ID}`" + (f" (or `{settings.model}`)" if settings.model else "")
    raise OpenAIError(
        404, f"model: `{name}` does not exist; this server serves {served}", param="model", code="model_not_found"
    )


async def list_models(request: Request) -> ModelList:
    return ModelList(data=[model_card(collaborators(request).settings)])


async def solved(api: Collaborators, problem: str, config: SolveConfig, request: Request) -> tuple[float, SolveResult]:
    """(Seconds queued, the result) as POST /solve solves: admitted, metered, cancelled if the client leaves."""

    async def admitted() -> tuple[float, SolveResult]:
        async with api.admission.slot() as queue_s:
            return queue_s, await solve_once(api.solver, problem, config, request.state.request_id)

    started = time.monotonic()
    try:
        queue_s, result = await cancel_on_disconnect(admitted(), request)
    except AllCandidatesFailed as failure:
        api.metrics.observe_solve(failure.result, time.monotonic() - started, all_failed=True)
        raise
    api.metrics.observe_solve(result, time.monotonic() - started, all_failed=False)
    return queue_s, result


async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
    api = collaborators(request)
    model = chosen_model(body.model, api.settings)
    config = body.to_config(api.settings)
    queue_s, result = await solved(api, body.problem, config, request)
    response = SolveResponse.from_result(result, config, request.state.request_id, queue_s, traces=True)
    return chat_completion(response, model, int(time.time()))


def add_openai_routes(app: FastAPI, *, api_keys: bool) -> None:
    """The /v1 routes; they ask for a bearer token only where the service has `api_keys`."""
    guards = [Depends(require_api_key)] if api_keys else []
    router = APIRouter(prefix="/v1", route_class=OpenAIRoute, dependencies=guards, tags=["OpenAI-compatible"])
    router.add_api_route(
        "/models",
        list_models,
        methods=["GET"],
        response_model=ModelList,
        summary="The model this server serves (OpenAI's list shape)",
        responses={401: {"model": ErrorBody}},
    )
    router.add_api_route(
        "/chat/completions",
        chat_completions,
        methods=["POST"],
        dependencies=[Depends(require_json)],
        response_model=ChatCompletion,
        summary="Solve the last user message with SC-TIR (OpenAI's chat completions)",
        responses={status: {"model": ErrorBody} for status in CHAT_ERRORS},
    )
    app.include_router(router)
