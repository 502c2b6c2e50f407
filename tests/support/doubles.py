"""Test doubles for the LLM's text only: a scripted engine that records what it was asked.

Everything else the tests use (executor, HTTP, answers) is real.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from service.engines.base import EngineError, StepRequest, StepResult
from service.tir import NUMINA_PROMPT_TEMPLATE, format_prompt

# script(candidate, step, prompt) -> (text, seconds to take); raise EngineError to fail a step
Script = Callable[[int, int, str], tuple[str, float]]


def parse_request_id(request_id: str) -> tuple[str, int, int]:
    """The solver's request ids are '<request>-<candidate>-<step>'."""
    request, candidate, step = request_id.rsplit("-", 2)
    return request, int(candidate), int(step)


@dataclass
class ScriptedEngine:
    script: Script
    template: str = NUMINA_PROMPT_TEMPLATE
    requests: list[StepRequest] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    running: set[str] = field(default_factory=set)
    is_ready: bool = True

    async def start(self) -> None:
        pass

    async def ready(self) -> bool:
        return self.is_ready

    def format_prompt(self, problem: str) -> str:
        return format_prompt(problem, template=self.template)

    async def complete(self, request: StepRequest) -> StepResult:
        self.requests.append(request)
        _, candidate, step = parse_request_id(request.request_id)
        text, delay = self.script(candidate, step, request.prompt)
        self.running.add(request.request_id)
        try:
            await asyncio.sleep(delay)
        finally:
            self.running.discard(request.request_id)
        stop = next((s for s in request.params.stop if text.endswith(s)), None)
        self.finished.append(request.request_id)
        return StepResult(
            text=text,
            finish_reason="stop" if stop else "length",
            prompt_tokens=len(request.prompt.split()),
            completion_tokens=len(text.split()),
        )

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)

    async def close(self) -> None:
        pass


class Switchable:
    """A script the tests can swap while the server runs; reset() brings back the module's usual one."""

    def __init__(self, default: Script) -> None:
        self.default = self.script = default

    def __call__(self, candidate: int, step: int, prompt: str) -> tuple[str, float]:
        return self.script(candidate, step, prompt)

    def reset(self) -> None:
        self.script = self.default


def fails(message: str) -> Script:
    def script(candidate: int, step: int, prompt: str) -> tuple[str, float]:
        raise EngineError(message)

    return script
