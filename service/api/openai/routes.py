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
from service.api.openai.errors import OpenAIError, OpenAIRoute, failure
from service.api.openai.schemas import MODEL_ID, ChatCompletion, ChatCompletionRequest, ErrorBody, ModelCard, ModelList
from service.api.openai.stream import chunk_stream
from service.api.routes import last, require_api_key, require_json
from service.api.state import collaborators
from service.api.streaming import Failed, Result, solve_events
from service.settings import Settings

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


async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
    api = collaborators(request)
    request_id = request.state.request_id
    model = chosen_model(body.model, api.settings)
    config = body.to_config(api.settings)
    created = int(time.time())
    # traces: the message is the winning candidate's text
    events = solve_events(api, body.problem, config, request_id, traces=True, progress=body.stream)
    if body.stream:
        api.admission.check()  # a full queue is a 429 before the stream starts, as for one JSON body
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        return chunk_stream(events, model, created, request_id, config, include_usage)
    outcome = await cancel_on_disconnect(last(events), request)  # a client that leaves cancels the solve
    if isinstance(outcome, Failed):
        raise failure(outcome)
    assert isinstance(outcome, Result)
    return chat_completion(outcome.response, model, created)


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
        responses={
            200: {
                "content": {
                    "text/event-stream": {
                        "description": "With `stream`: chat.completion.chunk events (the role, then the winning "
                        "solution by lines, then finish_reason and `sctir`, the usage if asked for), `data: [DONE]`; "
                        "progress as SSE comments before the solution (see the README)."
                    }
                }
            },
            **{status: {"model": ErrorBody} for status in CHAT_ERRORS},
        },
    )
    app.include_router(router)
