"""RemoteEngine: SC-TIR steps on an OpenAI-compatible completions server.

Typically a separately scaled vLLM (`python -m vllm.entrypoints.openai.api_server`).
Each step is one streamed POST /completions with n=1, so the server's
continuous batching schedules candidates freely, and the stall detector
(service.engines.progress) sees every token: a frozen server fails its steps in
stall_s seconds, not at the read timeout. (A server that ignores "stream" and answers
in one body is read all the same, but shows no progress until it is done: stall_s
must then exceed its longest step.) vLLM aborts a request when its
client disconnects, so aborting a step means closing its HTTP connection: the
call runs in its own task, and cancelling that task makes httpx close the
connection.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx

from service.engines.base import DEFAULT_STALL_S, ContextExhausted, EngineError, StepRequest, StepResult
from service.engines.inflight import InFlight
from service.engines.progress import Progress
from service.tir import NUMINA_PROMPT_TEMPLATE, format_prompt

# An unreachable host should fail fast; reads may legitimately take minutes.
_CONNECT_TIMEOUT_S = 10.0
_MAX_ERROR_CHARS = 500
# What a transport error whose own message is empty (httpx.ReadError() after a reset connection) meant.
_TRANSPORT_FAILURES = {
    httpx.ConnectError: "could not connect",
    httpx.ConnectTimeout: "could not connect in time",
    httpx.ReadError: "the connection broke while reading the response",
    httpx.WriteError: "the connection broke while sending the request",
    httpx.ReadTimeout: "no response in time",
    httpx.RemoteProtocolError: "the server closed the connection mid-response",
}


class RemoteEngine:
    """Engine backed by an OpenAI-compatible /v1/completions endpoint."""

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key: str | None = None,
        prompt_template: str = NUMINA_PROMPT_TEMPLATE,
        timeout_s: float = 600.0,
        max_connections: int = 256,
        stall_s: float = DEFAULT_STALL_S,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._model = model
        self._api_key = api_key
        self._prompt_template = prompt_template
        self._timeout_s = timeout_s
        self._max_connections = max_connections
        self._client: httpx.AsyncClient | None = None
        self._in_flight = InFlight()  # cancelling a step's HTTP call aborts it on the server
        self._progress = Progress(stall_s)  # every streamed chunk of every step ticks it
        # vLLM's server refuses max_tokens above the context (it clamps what is above the context left
        # after the prompt, as the in-process engine does), so a step's budget is capped at the context
        self._max_model_len: int | None = None

    async def start(self) -> None:
        """Open the connection pool and check that the server serves our model.

        On failure the client stays open (close() releases it), so start() can be retried
        while the server is still loading.
        """
        if self._client is None:
            headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
            self._client = httpx.AsyncClient(
                headers=headers,
                # HTTP/1.1: one in-flight step per connection. Waiting for a free connection
                # is backpressure, not an error, so the pool wait is unbounded.
                limits=httpx.Limits(
                    max_connections=self._max_connections,
                    max_keepalive_connections=self._max_connections,
                ),
                timeout=httpx.Timeout(self._timeout_s, connect=_CONNECT_TIMEOUT_S, pool=None),
            )
        try:
            served = await self._served_models()
        except EngineError as exc:
            raise EngineError(
                f"cannot list the models of {self._base_url} (looking for model {self._model!r}): {exc}"
            ) from exc
        if self._model not in served:
            raise EngineError(f"model {self._model!r} is not served by {self._base_url}; served models: {list(served)}")
        self._max_model_len = served[self._model]

    async def ready(self) -> bool:
        """Tokens streamed within the last second, or a GET /models that lists our model in time."""
        return await self._progress.alive(self._serves_model)

    async def _serves_model(self) -> bool:
        return self._model in await self._served_models()

    def format_prompt(self, problem: str) -> str:
        """The configured template filled in: the server's tokenizer is out of reach."""
        return format_prompt(problem, template=self._prompt_template)

    async def complete(self, request: StepRequest) -> StepResult:
        """Generate one step; abort(request.request_id) makes it return finish_reason "abort".

        Cancelling the awaiting task cancels the HTTP call too (asyncio propagates the
        cancellation to the awaited task), which closes the connection so vLLM aborts.
        EngineStalled once no step has received a chunk for stall_s (see service.engines.progress).
        """
        request_id = request.request_id
        params = request.params
        stop = list(params.stop)
        body = {
            "model": self._model,
            "prompt": request.prompt,
            "max_tokens": min(params.max_new_tokens, self._max_model_len or params.max_new_tokens),
            "temperature": params.temperature,
            "top_p": params.top_p,
            "stop": stop,
            "seed": params.seed,
            "n": 1,
            # vLLM extension: keep the matched stop string in the text (others ignore it).
            "include_stop_str_in_output": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        step = self._progress.guard(lambda: self._step(request_id, body, stop, request.on_text))
        return await self._in_flight.run(request_id, step)

    async def _step(
        self, request_id: str, body: dict[str, Any], stop: list[str], on_text: Callable[[str], None] | None
    ) -> StepResult:
        """POST the step and read its stream (or, from a server that does not stream, its one JSON body)."""
        client = self._require_client()
        url = f"{self._base_url}/completions"
        # vLLM uses this header as its internal request id (logs, metrics).
        request = client.build_request("POST", url, json=body, headers={"X-Request-Id": request_id})
        try:
            response = await client.send(request, stream=True)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise EngineError(_failure("POST", url, exc)) from exc
        streamed = response.status_code < 400 and response.headers.get("content-type", "").startswith(
            "text/event-stream"
        )
        try:
            if streamed:
                return _step_result(await self._read_stream(url, response, on_text), stop)
            await _read_body("POST", url, response)
            return _step_result(_json_of("POST", url, response), stop)
        finally:
            await response.aclose()

    async def _read_stream(
        self, url: str, response: httpx.Response, on_text: Callable[[str], None] | None
    ) -> dict[str, Any]:
        """The server-sent events of a streamed completion, joined into one completions response
        (each chunk's text handed to `on_text` as it comes)."""
        text: list[str] = []
        choice: dict[str, Any] = {}
        usage: dict[str, Any] = {}
        try:
            async for line in response.aiter_lines():
                data = line.removeprefix("data:").strip() if line.startswith("data:") else ""
                if not data or data == "[DONE]":
                    continue
                self._progress.tick()
                chunk = json.loads(data)
                if "error" in chunk:  # vLLM reports a failure after the stream began as one more event
                    message = _message_of(chunk) or _truncate(data)
                    kind = ContextExhausted if ContextExhausted.matches(message) else EngineError
                    raise kind(f"POST {url} failed mid-stream: {message}")
                for part in chunk.get("choices") or ():
                    text.append(part.get("text") or "")
                    if text[-1] and on_text:
                        on_text(text[-1])
                    for key in ("finish_reason", "stop_reason"):  # the last chunk's; a null stop_reason counts
                        if key in part and (part[key] is not None or key not in choice):
                            choice[key] = part[key]
                usage = chunk.get("usage") or usage
        except httpx.HTTPError as exc:
            raise EngineError(_failure("POST", url, exc)) from exc
        except (ValueError, AttributeError, TypeError) as exc:
            raise EngineError(f"POST {url} returned a malformed stream: {exc}") from exc
        return {"choices": [{"text": "".join(text), "finish_reason": None} | choice], "usage": usage}

    async def abort(self, request_id: str) -> None:
        """Cancel the step's HTTP call and wait until its connection is closed."""
        await self._in_flight.abort(request_id)

    async def close(self) -> None:
        """Close the connection pool."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _served_models(self) -> dict[str, int | None]:
        """The model ids from GET /models, with the context length vLLM lists (None from other servers)."""
        data = await self._request_json("GET", f"{self._base_url}/models")
        try:
            return {str(entry["id"]): entry.get("max_model_len") for entry in data["data"]}
        except (KeyError, TypeError) as exc:
            raise EngineError(f"unexpected /models response: {_truncate(repr(data))}") from exc

    async def _request_json(self, method: str, url: str, **kwargs: Any) -> Any:
        """One HTTP call whose every failure (transport, status, body) is an EngineError."""
        try:
            response = await self._require_client().request(method, url, **kwargs)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise EngineError(_failure(method, url, exc)) from exc
        return _json_of(method, url, response)

    def _require_client(self) -> httpx.AsyncClient:
        if self._client is None:
            raise EngineError("RemoteEngine is not started")
        return self._client


async def _read_body(method: str, url: str, response: httpx.Response) -> None:
    try:
        await response.aread()
    except httpx.HTTPError as exc:
        raise EngineError(_failure(method, url, exc)) from exc


def _json_of(method: str, url: str, response: httpx.Response) -> Any:
    """The JSON of a read response; an error status or a malformed body is an EngineError."""
    if response.status_code >= 400:
        message = _server_message(response)
        kind = ContextExhausted if response.status_code == 400 and ContextExhausted.matches(message) else EngineError
        raise kind(f"{method} {url} returned HTTP {response.status_code}: {message}")
    try:
        return response.json()
    except ValueError as exc:
        raise EngineError(f"{method} {url} returned malformed JSON: {_truncate(response.text)}") from exc


def _failure(method: str, url: str, exc: Exception) -> str:
    """What went wrong with an HTTP call, never empty: httpx.ReadError() after a reset has no message
    of its own, so the first message down its chain of causes, or what the error class means."""
    detail = ""
    cause: BaseException | None = exc
    while cause is not None and not detail:
        detail = str(cause)
        cause = cause.__cause__ or cause.__context__
    if not detail:
        detail = next((text for kind, text in _TRANSPORT_FAILURES.items() if isinstance(exc, kind)), "no detail given")
    return f"{method} {url} failed: {type(exc).__name__}: {_truncate(detail)}"


def _step_result(data: Any, stop: list[str]) -> StepResult:
    """Map a completions response to a StepResult, keeping the matched stop string.

    finish_reason: "stop" and "length" pass through. "abort" from the server means it
    dropped the request on its own (we never see a response to our aborts), so it is an
    EngineError. Anything else (e.g. OpenAI's "content_filter", or null) is "length": the
    text was cut off without a stop string or EOS, i.e. it is truncated.
    """
    try:
        choice = data["choices"][0]
        text = choice["text"]
        finish_reason = choice.get("finish_reason")
        usage = data.get("usage") or {}
        prompt_tokens = int(usage.get("prompt_tokens") or 0)
        completion_tokens = int(usage.get("completion_tokens") or 0)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        raise EngineError(f"unexpected completion response: {_truncate(repr(data))}") from exc
    if not isinstance(text, str):
        raise EngineError(f"unexpected completion response: {_truncate(repr(data))}")
    if finish_reason == "abort":
        raise EngineError("the server aborted the request")
    if finish_reason != "stop":
        return StepResult(text, "length", prompt_tokens, completion_tokens)
    matched = _matched_stop(choice, stop)
    if matched is not None and not text.endswith(matched):
        text += matched
    return StepResult(text, "stop", prompt_tokens, completion_tokens)


def _matched_stop(choice: dict[str, Any], stop: list[str]) -> str | None:
    """The stop string that ended a finish_reason="stop" completion, if any.

    vLLM always reports stop_reason: the matched string, an int for a stop token, or null
    for EOS; only a string means one of our stop strings matched. A server without
    stop_reason cannot tell a stop string from EOS; with exactly one stop string we assume
    it matched (so EOS there reads as a stop: prefer vLLM), with several we cannot know.
    """
    if "stop_reason" in choice:
        reason = choice["stop_reason"]
        return reason if isinstance(reason, str) else None
    return stop[0] if len(stop) == 1 else None


def _server_message(response: httpx.Response) -> str:
    """The message of an OpenAI-style error body ({"error": {"message"}}, or older vLLM's
    {"message"}), else the raw body."""
    try:
        body = response.json()
    except ValueError:
        body = None
    return _message_of(body) or _truncate(response.text)


def _message_of(body: Any) -> str | None:
    """The message of an OpenAI-style error ({"error": {"message"}}, or older vLLM's {"message"})."""
    if not isinstance(body, dict):
        return None
    error = body.get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return _truncate(error["message"])
    if isinstance(body.get("message"), str):
        return _truncate(body["message"])
    return None


def _truncate(text: str) -> str:
    return text if len(text) <= _MAX_ERROR_CHARS else text[:_MAX_ERROR_CHARS] + "..."
