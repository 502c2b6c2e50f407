"""The OpenAI-compatible API through the official `openai` client, against the real server (uvicorn on
loopback) and the real local executor; only the LLM's text is scripted (tests/support/doubles.py).

The same API with the demo model, vLLM and the Docker sandbox: tests/test_openai_vllm.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from sandbox.executors import LocalExecutor
from service.api import streaming
from service.api.app import create_app
from service.settings import Settings
from tests.support.chat import final_box, streamed_content
from tests.support.doubles import ScriptedEngine, Switchable, fails
from tests.support.servers import serve_in_thread

SERVED = "NuminaMath-7B-TIR-test"  # the served model's name: an alias of "sctir"
PROBLEM = "What is 6 times 7?"
ANSWER = "\nThe answer is $\\boxed{{{}}}$."  # the model writes the newline after the output block


def code(value: int) -> str:
    return f"Compute:\n```python\nprint({value})\n```\n```output\n"


def solution(value: int) -> str:
    """A candidate's whole text: its code, the sandbox's output, its answer."""
    return code(value) + f"{value}\n```" + ANSWER.format(value)


def split_vote(candidate: int, step: int, prompt: str) -> tuple[str, float]:
    """Candidate 0 answers 41, the others 42: the vote is 42 and its first supporter candidate 1."""
    value = 41 if candidate == 0 else 42
    return [code(value), ANSWER.format(value)][min(step, 1)], 0.0


@pytest.fixture(scope="module")
def script() -> Switchable:
    return Switchable(split_vote)


@pytest.fixture(scope="module")
def engine(script: Switchable) -> ScriptedEngine:
    return ScriptedEngine(script)


@pytest.fixture(scope="module")
def server(engine: ScriptedEngine) -> Iterator[str]:
    settings = Settings(
        model=SERVED,
        num_samples=3,
        max_steps=3,
        max_in_flight=1,
        max_queue=1,
        execution_concurrency=2,
        early_stop=False,
    )
    app = create_app(settings, engine=engine, executor=LocalExecutor(concurrency=2))
    with serve_in_thread(app, "/healthz") as url:
        yield url


@pytest.fixture(autouse=True)
def reset(script: Switchable) -> Iterator[None]:
    yield
    script.reset()


@pytest.fixture(scope="module")
def client(server: str) -> openai.OpenAI:
    # no retries: a 429 or 503 must reach the test, not be retried away
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=60)


def ask(client: openai.OpenAI, problem: str = PROBLEM, **params) -> openai.types.chat.ChatCompletion:
    return client.chat.completions.create(model="sctir", messages=[{"role": "user", "content": problem}], **params)


def test_models_list_in_openai_shape(client: openai.OpenAI, server: str) -> None:
    models = client.models.list()
    assert [model.id for model in models.data] == ["sctir"]
    body = httpx.get(f"{server}/v1/models").json()
    assert body["object"] == "list"
    card = body["data"][0]
    assert card["object"] == "model" and card["owned_by"] == "sctir" and card["root"] == SERVED
    assert 0 < card["created"] <= time.time()


def test_the_v1_routes_are_in_the_openapi_schema(server: str) -> None:
    schema = httpx.get(f"{server}/openapi.json").json()
    chat = schema["paths"]["/v1/chat/completions"]["post"]
    assert "/v1/models" in schema["paths"] and "text/event-stream" in chat["responses"]["200"]["content"]
    assert chat["responses"]["400"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    assert "sctir" in schema["components"]["schemas"]["ChatCompletionRequest"]["properties"]


def test_a_completion_is_the_winning_solution_ending_in_the_vote(client: openai.OpenAI) -> None:
    completion = ask(client, seed=7)
    assert completion.object == "chat.completion" and completion.model == "sctir"
    [choice] = completion.choices
    assert choice.finish_reason == "stop" and choice.message.role == "assistant"
    assert choice.message.content == solution(42)  # candidate 1's: the first that voted 42
    sctir = completion.model_extra["sctir"]
    assert sctir["answer"] == "42" == final_box(choice.message.content)
    assert sctir["votes"] == {"42": 2, "41": 1} and sctir["agreement"] == pytest.approx(2 / 3)
    assert sctir["winner"] == 1 and sctir["candidates"] == {"answered": 3}
    assert sctir["seed"] == 7 and not sctir["stopped_early"] and not sctir["deadline_hit"]
    assert completion.id == f"chatcmpl-{sctir['request_id']}"


def test_usage_is_the_total_over_every_candidate(client: openai.OpenAI, server: str) -> None:
    completion = ask(client, seed=5)
    solved = httpx.post(f"{server}/solve", json={"problem": PROBLEM, "seed": 5}, timeout=60).json()
    candidates = solved["candidates"]
    assert completion.usage.prompt_tokens == sum(c["prompt_tokens"] for c in candidates) > 0
    assert completion.usage.completion_tokens == sum(c["completion_tokens"] for c in candidates) > 0
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    winner = candidates[completion.model_extra["sctir"]["winner"]]
    assert completion.usage.completion_tokens > winner["completion_tokens"]  # not the winner's alone


def test_the_served_models_name_is_an_alias(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model=SERVED, messages=[{"role": "user", "content": PROBLEM}])
    assert completion.model == SERVED and completion.model_extra["sctir"]["answer"] == "42"


def test_the_last_user_message_is_the_problem(client: openai.OpenAI, engine: ScriptedEngine) -> None:
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "An earlier question"},
        {"role": "assistant", "content": "An earlier answer"},
        {"role": "user", "content": [{"type": "text", "text": "What is"}, {"type": "text", "text": "6 times 7?"}]},
    ]
    client.chat.completions.create(model="sctir", messages=messages)
    prompt = engine.requests[-1].prompt
    assert "What is\n6 times 7?" in prompt and "earlier" not in prompt and "helpful" not in prompt


def test_sampling_parameters_reach_every_step(client: openai.OpenAI, engine: ScriptedEngine) -> None:
    before = len(engine.requests)
    ask(client, temperature=0.3, top_p=0.9, max_tokens=77, seed=11)
    params = [request.params for request in engine.requests[before:]]
    assert params and {(p.temperature, p.top_p, p.max_new_tokens) for p in params} == {(0.3, 0.9, 77)}
    before = len(engine.requests)
    ask(client, max_tokens=77, max_completion_tokens=99)  # the newer name wins
    assert {request.params.max_new_tokens for request in engine.requests[before:]} == {99}


def test_sctir_knobs_ride_in_extra_body(client: openai.OpenAI, engine: ScriptedEngine) -> None:
    before = len(engine.requests)
    completion = ask(client, extra_body={"sctir": {"num_samples": 5, "max_steps": 2, "answer_mode": "integer"}})
    sctir = completion.model_extra["sctir"]
    assert sum(sctir["candidates"].values()) == 5 and sctir["votes"] == {"42": 4, "41": 1}
    assert sctir["answer_mode"] == "integer"
    assert {int(r.request_id.rsplit("-", 2)[1]) for r in engine.requests[before:]} == set(range(5))


def test_no_answer_is_said_plainly(client: openai.OpenAI, script: Switchable) -> None:
    script.script = lambda c, s, p: ("I think about it but write no code.", 0.0)
    completion = ask(client)
    content = completion.choices[0].message.content
    assert content.startswith("No answer: none of the 3 candidates reached a valid answer")
    assert "3 restarted" in content and final_box(content) is None
    assert completion.model_extra["sctir"]["answer"] is None and completion.model_extra["sctir"]["winner"] is None


def test_a_solution_without_a_final_box_gets_one(client: openai.OpenAI, script: Switchable) -> None:
    script.script = lambda c, s, p: ([code(42), "\nSo the answer is 42"][min(s, 1)], 0.0)
    content = ask(client).choices[0].message.content
    assert content == code(42) + "42\n```\nSo the answer is 42\n\n\\boxed{42}"


@pytest.mark.parametrize(
    ("params", "param", "needle"),
    [
        ({"n": 2}, "n", "one answer"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools", "tools"),
        ({"tool_choice": "required"}, "tool_choice", "tools"),
        ({"logprobs": True}, "logprobs", "log probabilities"),
        ({"top_logprobs": 3}, "top_logprobs", "log probabilities"),
        ({"stop": ["\n\n"]}, "stop", "stop"),
        ({"response_format": {"type": "json_object"}}, "response_format", "text"),
        ({"presence_penalty": 0.5}, "presence_penalty", "sample"),
        ({"temperature": 3}, "temperature", "less than or equal to 2"),
        ({"seed": -1}, "seed", "greater than or equal to 0"),
        ({"extra_body": {"best_of": 2}}, "best_of", "unrecognized"),
        ({"extra_body": {"sctir": {"num_samples": 0}}}, "sctir.num_samples", "greater than or equal to 1"),
        ({"extra_body": {"sctir": {"return_traces": True}}}, "sctir.return_traces", "unrecognized"),
    ],
)
def test_what_cannot_be_honoured_is_a_400_naming_the_parameter(
    client: openai.OpenAI, params: dict, param: str, needle: str
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        ask(client, **params)
    error = refused.value
    assert error.status_code == 400 and error.type == "invalid_request_error"
    assert error.param == param and param in error.message and needle in error.message


@pytest.mark.parametrize(
    ("content", "param", "needle"),
    [
        (
            [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": "data:,"}}],
            "messages[0].content[1]",
            "image_url content is not supported",
        ),
        (
            [{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}],
            "messages[0].content[0]",
            "input_audio content is not supported",
        ),
        (" \n ", "messages", "has no text"),
        ("x" * (32 * 1024 + 1), "messages", "32768 bytes"),
    ],
)
def test_content_other_than_a_text_problem_is_a_400(client: openai.OpenAI, content, param: str, needle: str) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="sctir", messages=[{"role": "user", "content": content}])
    assert refused.value.param == param and needle in refused.value.message
    if param != "messages":
        assert refused.value.code == "unsupported_value"


def test_a_conversation_without_a_user_message_is_a_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="sctir", messages=[{"role": "system", "content": "Be brief."}])
    assert refused.value.param == "messages" and "no user message" in refused.value.message


def test_refusals_carry_openais_codes(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        ask(client, tools=[{"type": "function", "function": {"name": "f"}}])
    assert refused.value.code == "unsupported_parameter"
    with pytest.raises(openai.BadRequestError) as refused:
        ask(client, n=3)
    assert refused.value.code == "unsupported_value"
    with pytest.raises(openai.BadRequestError) as refused:
        ask(client, extra_body={"best_of": 2})
    assert refused.value.code == "unknown_parameter"
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="sctir", messages=[{"role": "user", "content": [{"type": "text"}]}])
    assert refused.value.code == "missing_required_parameter" and refused.value.param == "messages[0].content[0]"
    assert "needs `text`" in refused.value.message


def test_an_unknown_model_is_a_404_naming_it(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": PROBLEM}])
    error = missing.value
    assert error.code == "model_not_found" and error.param == "model"
    assert "gpt-4o" in error.message and "sctir" in error.message


def test_errors_of_the_v1_routes_are_openai_shaped_and_solves_are_not(server: str) -> None:
    not_json = httpx.post(f"{server}/v1/chat/completions", content=b"{}", headers={"Content-Type": "text/plain"})
    assert not_json.status_code == 415
    assert not_json.json()["error"]["param"] == "content-type" and not_json.json()["error"]["message"]
    broken = httpx.post(
        f"{server}/v1/chat/completions", content=b'{"model": "sctir",}', headers={"Content-Type": "application/json"}
    )
    assert broken.status_code == 400 and "invalid JSON at line 1" in broken.json()["error"]["message"]
    too_large = httpx.post(f"{server}/v1/chat/completions", json={"model": "sctir", "pad": "x" * 70_000})
    assert too_large.status_code == 413 and too_large.json()["error"]["param"] == "body"
    solve = httpx.post(f"{server}/solve", json={"problem": ""})
    assert solve.status_code == 422 and "error" not in solve.json() and "problem" in solve.json()["message"]


def test_every_candidate_failing_is_a_503(client: openai.OpenAI, script: Switchable) -> None:
    script.script = fails("engine stalled: no token for 20 s")
    with pytest.raises(openai.InternalServerError) as failed:
        ask(client)
    error = failed.value
    assert error.status_code == 503 and error.code == "all_candidates_failed"
    assert "engine stalled" in error.message and 1 <= int(error.response.headers["retry-after"]) <= 10


def test_a_full_queue_is_a_429_with_retry_after(client: openai.OpenAI, script: Switchable) -> None:
    """One slot and one queue place: the third concurrent problem is refused."""
    script.script = lambda c, s, p: ([code(42), ANSWER.format(42)][min(s, 1)], 1.0)
    answers: list[str | None] = []

    def one() -> None:
        answers.append(ask(client).model_extra["sctir"]["answer"])

    threads = [threading.Thread(target=one) for _ in range(2)]
    for thread in threads:
        thread.start()
        time.sleep(0.3)  # the first takes the slot, the second the queue place
    with pytest.raises(openai.RateLimitError) as refused:
        ask(client)
    for thread in threads:
        thread.join()
    assert int(refused.value.response.headers["retry-after"]) >= 1 and "busy" in refused.value.message
    assert answers == ["42", "42"]


def test_a_client_that_leaves_cancels_the_candidates(server: str, script: Switchable, engine: ScriptedEngine) -> None:
    script.script = lambda c, s, p: (code(42), 30.0)
    aborted_before = len(engine.aborted)
    impatient = openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=1.0)
    with pytest.raises(openai.APITimeoutError):
        ask(impatient)
    for _ in range(100):  # bounded wait for the server to notice
        if len(engine.aborted) - aborted_before == 3 and not engine.running:
            break
        time.sleep(0.05)
    assert len(engine.aborted) - aborted_before == 3 and not engine.running


def test_api_keys() -> None:
    settings = Settings(api_keys=["key-one"], num_samples=1)
    app = create_app(settings, engine=ScriptedEngine(split_vote), executor=LocalExecutor())
    with serve_in_thread(app, "/healthz") as url:
        wrong = openai.OpenAI(base_url=f"{url}/v1", api_key="nope", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as refused:
            ask(wrong)
        assert refused.value.code == "invalid_api_key"
        assert refused.value.response.headers["www-authenticate"] == "Bearer"
        with pytest.raises(openai.AuthenticationError):
            wrong.models.list()
        missing = httpx.post(f"{url}/v1/chat/completions", json={"model": "sctir", "messages": []})
        assert missing.status_code == 401 and missing.json()["error"]["code"] == "invalid_api_key"
        right = openai.OpenAI(base_url=f"{url}/v1", api_key="key-one", max_retries=0)
        assert right.models.list().data[0].id == "sctir"
        assert ask(right).model_extra["sctir"]["answer"] == "41"  # one candidate: candidate 0's 41


def stream_lines(server: str, **params) -> list[str]:
    """The non-empty lines of a streamed completion, as the wire carried them."""
    body = {"model": "sctir", "messages": [{"role": "user", "content": PROBLEM}], "stream": True, **params}
    with httpx.stream("POST", f"{server}/v1/chat/completions", json=body, timeout=60) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        return [line for line in response.iter_lines() if line]


def test_streamed_content_joined_is_the_non_streamed_message(client: openai.OpenAI) -> None:
    whole = ask(client, seed=3)
    chunks = list(ask(client, seed=3, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(chunk.object == "chat.completion.chunk" and chunk.id == chunks[0].id for chunk in chunks)
    content = streamed_content(chunks)
    assert content == whole.choices[0].message.content == solution(42)
    assert len([chunk for chunk in chunks if chunk.choices[0].delta.content]) > 1  # in pieces
    last = chunks[-1]
    assert last.choices[0].finish_reason == "stop" and not last.choices[0].delta.content
    assert all(chunk.choices[0].finish_reason is None for chunk in chunks[:-1])
    streamed_vote, vote = last.model_extra["sctir"], whole.model_extra["sctir"]
    assert streamed_vote.pop("request_id") != vote.pop("request_id") and streamed_vote == vote
    assert last.usage is None  # not asked for


def test_a_stream_ends_with_the_usage_when_asked(client: openai.OpenAI) -> None:
    whole = ask(client, seed=4)
    chunks = list(ask(client, seed=4, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    assert chunks[-2].choices[0].finish_reason == "stop"


def test_progress_rides_in_comments_before_the_message(server: str) -> None:
    lines = stream_lines(server, seed=2)
    comments = [line[1:].strip() for line in lines if line.startswith(":")]
    data = [line.removeprefix("data: ") for line in lines if line.startswith("data:")]
    assert data[0].startswith('{"id":"chatcmpl-') and '"delta":{"role":"assistant","content":""}' in data[0]
    assert data[-1] == "[DONE]" and lines[-1] == "data: [DONE]"
    assert comments[0] == "solving: 3 candidates, up to 3 steps each, seed 2"
    assert sum(comment.startswith("candidate ") and "code ran (ok" in comment for comment in comments) == 3
    finished = [comment for comment in comments if " answered " in comment]
    assert sorted(comment.split(";")[0] for comment in finished) == [
        "candidate 0 answered 41",
        "candidate 1 answered 42",
        "candidate 2 answered 42",
    ]
    assert finished[-1].endswith("; leader 42 2/3 votes; 0 running, decided")  # whichever finished last
    first_content = next(i for i, line in enumerate(lines) if '"content":"Compute' in line)
    assert max(i for i, line in enumerate(lines) if line.startswith(":")) < first_content  # progress first


def test_every_candidate_failing_ends_the_stream_with_an_error(client: openai.OpenAI, script: Switchable) -> None:
    script.script = fails("engine stalled: no token for 20 s")
    with pytest.raises(openai.APIError) as failed:
        list(ask(client, stream=True))
    assert "every candidate failed" in failed.value.message and failed.value.code == "all_candidates_failed"


def test_a_full_queue_is_a_429_before_the_stream(server: str, client: openai.OpenAI, script: Switchable) -> None:
    script.script = lambda c, s, p: ([code(42), ANSWER.format(42)][min(s, 1)], 1.0)
    threads = [threading.Thread(target=ask, args=(client,)) for _ in range(2)]
    for thread in threads:
        thread.start()
        time.sleep(0.3)  # the first takes the slot, the second the queue place
    with pytest.raises(openai.RateLimitError) as refused:
        ask(client, stream=True)
    for thread in threads:
        thread.join()
    assert refused.value.response.headers["content-type"] == "application/json"
    assert refused.value.code == "rate_limit_exceeded"


def test_a_client_that_leaves_mid_stream_cancels_the_candidates(
    server: str, script: Switchable, engine: ScriptedEngine
) -> None:
    script.script = lambda c, s, p: (code(42), 0.0) if s == 0 else (ANSWER.format(42), 30.0)
    aborted_before = len(engine.aborted)
    body = {"model": "sctir", "messages": [{"role": "user", "content": PROBLEM}], "stream": True}
    with httpx.stream("POST", f"{server}/v1/chat/completions", json=body, timeout=60) as response:
        for line in response.iter_lines():
            if "code ran" in line:  # the candidates are in their second, 30 s step now
                break
    for _ in range(100):  # bounded wait for the server to notice
        if len(engine.aborted) - aborted_before == 3 and not engine.running:
            break
        time.sleep(0.05)
    assert len(engine.aborted) - aborted_before == 3 and not engine.running


def test_keep_alive_comments_while_nothing_happens(
    server: str, script: Switchable, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(streaming, "KEEPALIVE_S", 0.2)
    script.script = lambda c, s, p: ([code(42), ANSWER.format(42)][min(s, 1)], 1.0)
    lines = stream_lines(server, sctir={"num_samples": 1})
    assert sum(line.startswith(": ping") for line in lines) >= 3 and lines[-1] == "data: [DONE]"
