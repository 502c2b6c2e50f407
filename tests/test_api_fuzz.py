"""Schemathesis over the OpenAPI schema: no generated input, valid or not, gets a 500."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from sandbox.executors import LocalExecutor
from service.api.app import create_app
from service.settings import Settings
from tests.support.doubles import ScriptedEngine
from tests.support.servers import serve_in_thread

API_KEY = "fuzz-key"


def no_code(candidate: int, step: int, prompt: str) -> tuple[str, float]:
    """Cheap transcripts: candidates restart until out of steps, so fuzzing stays fast."""
    return "I am not sure yet.", 0.0


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    settings = Settings(max_queue=64, api_keys=[API_KEY])
    app = create_app(settings, engine=ScriptedEngine(no_code), executor=LocalExecutor())
    with serve_in_thread(app, "/healthz") as base:
        yield base


@pytest.mark.parametrize(
    ("path", "method", "mode"),
    [
        ("/solve", "POST", GenerationMode.POSITIVE),
        ("/solve", "POST", GenerationMode.NEGATIVE),  # invalid bodies, types, bounds
        ("/healthz", "GET", GenerationMode.POSITIVE),  # (no parameters: nothing negative to make)
        ("/readyz", "GET", GenerationMode.POSITIVE),
        # (positive chat bodies are left out: that the last user message holds the problem is beyond the schema)
        ("/v1/chat/completions", "POST", GenerationMode.NEGATIVE),
        ("/v1/models", "GET", GenerationMode.POSITIVE),
    ],
)
def test_no_server_error(url: str, path: str, method: str, mode: GenerationMode) -> None:
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    operation = schema[path][method]
    statuses: list[int] = []

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    def check(case: schemathesis.Case) -> None:
        response = case.call(base_url=url, timeout=60, headers={"Authorization": f"Bearer {API_KEY}"})
        statuses.append(response.status_code)
        assert response.status_code < 500, (case.body, response.text)
        case.validate_response(response)

    check()
    if path == "/solve":  # the fuzzing really reached the solver or the validation
        assert (200 in statuses) if mode is GenerationMode.POSITIVE else (422 in statuses)
    if path == "/v1/chat/completions":  # OpenAI's status for invalid parameters
        assert 400 in statuses
