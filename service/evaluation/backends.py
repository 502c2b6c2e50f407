"""Where an evaluation solves its problems: in this process, or through a running service's /solve.

Both return the service's SolveResponse, so a record does not depend on the path it took.
`overrides` are SolveRequest fields (num_samples, max_steps, answer_mode, deadline_s, seed, ...).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, Protocol

from sandbox.execution import Executor
from service.client import ServiceError, ServiceUnreachable, SolveClient
from service.engines.base import Engine
from service.schemas import SolveRequest, SolveResponse
from service.settings import Settings
from service.solver import Solver
from service.solving import AllCandidatesFailed, solve_once


class SolveFailed(RuntimeError):
    """This problem could not be solved (every candidate failed, the server refused it)."""


class Unreachable(RuntimeError):
    """The backend itself is gone: stop the run (it resumes later)."""


class Backend(Protocol):
    description: str

    async def start(self) -> None: ...

    async def solve(self, problem: str, overrides: dict[str, Any]) -> SolveResponse: ...

    async def close(self) -> None: ...


class InProcessBackend:
    """The solver in this process, with the engine and executor given (or built from the settings)."""

    def __init__(self, settings: Settings, engine: Engine | None = None, executor: Executor | None = None) -> None:
        from service.components import build

        self.settings, self.engine, self.executor = build(settings, engine, executor)
        self.solver = Solver(self.engine, self.executor)
        self.description = f"in-process (engine {type(self.engine).__name__}, executor {type(self.executor).__name__})"

    async def start(self) -> None:
        await self.engine.start()
        await self.executor.start()

    async def solve(self, problem: str, overrides: dict[str, Any]) -> SolveResponse:
        request = SolveRequest(problem=problem, **overrides)
        config = request.to_config(self.settings)
        request_id = f"eval-{uuid.uuid4().hex[:12]}"
        try:
            result = await solve_once(self.solver, problem, config, request_id)
        except AllCandidatesFailed as failure:
            raise SolveFailed(str(failure)) from None
        return SolveResponse.from_result(result, config, request_id, 0.0, traces=False)

    async def close(self) -> None:
        await self.engine.close()
        await self.executor.close()


class HttpBackend:
    """POST /solve on a running service; 429 is waited out (its Retry-After), 4xx/5xx fail the problem."""

    def __init__(self, url: str, api_key: str | None = None, max_retries: int = 100) -> None:
        self.url = url
        self.api_key = api_key
        self.max_retries = max_retries
        self.description = f"HTTP {url.rstrip('/')}"
        self.client: SolveClient | None = None

    async def start(self) -> None:
        self.client = SolveClient(self.url, self.api_key)
        try:
            await self.client.check()
        except ServiceUnreachable as error:
            await self.close()
            raise Unreachable(str(error)) from None

    async def solve(self, problem: str, overrides: dict[str, Any]) -> SolveResponse:
        assert self.client is not None, "start() first"
        request = SolveRequest(problem=problem, **overrides)
        for _ in range(self.max_retries):
            try:
                return await self.client.solve(request)
            except ServiceUnreachable as error:
                raise Unreachable(str(error)) from None
            except ServiceError as error:
                if error.status != 429:
                    raise SolveFailed(str(error)) from None
                await asyncio.sleep(error.retry_after_s or 1)
        raise SolveFailed(f"still overloaded (429) after {self.max_retries} tries")

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()
            self.client = None
