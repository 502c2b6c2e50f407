"""Where an evaluation solves its problems: in this process, or through a running service's /solve.

Both return the service's SolveResponse, so a record does not depend on the path it took.
`overrides` are SolveRequest fields (num_samples, max_steps, answer_mode, deadline_s, seed, ...).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, Protocol

import httpx

from sandbox.executor import Executor
from service.engines.base import Engine
from service.schemas import SolveRequest, SolveResponse
from service.settings import Settings
from service.solver import CandidateStatus, Solver


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
        from service.components import make_engine, make_executor
        from service.machine import choose

        self.settings = settings if engine else choose(settings)  # the defaults of the engine it builds
        self.engine = engine or make_engine(self.settings)
        self.executor = executor or make_executor(self.settings)
        self.solver = Solver(self.engine, self.executor)
        self.description = f"in-process (engine {type(self.engine).__name__}, executor {type(self.executor).__name__})"

    async def start(self) -> None:
        await self.engine.start()
        await self.executor.start()

    async def solve(self, problem: str, overrides: dict[str, Any]) -> SolveResponse:
        request = SolveRequest(problem=problem, **overrides)
        config = request.to_config(self.settings)
        request_id = f"eval-{uuid.uuid4().hex[:12]}"
        result = await self.solver.solve(problem, config, request_id)
        failures = [c.error for c in result.candidates if c.status is CandidateStatus.FAILED]
        if failures and len(failures) == len(result.candidates):
            raise SolveFailed(f"every candidate failed; first error: {failures[0]}")
        return SolveResponse.from_result(result, config, request_id, 0.0, traces=False)

    async def close(self) -> None:
        await self.engine.close()
        await self.executor.close()


class HttpBackend:
    """POST /solve on a running service; 429 is waited out (its Retry-After), 4xx/5xx fail the problem."""

    def __init__(self, url: str, api_key: str | None = None, max_retries: int = 100) -> None:
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.max_retries = max_retries
        self.description = f"HTTP {self.url}"
        self.client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=None), headers=self.headers)
        try:
            await self.client.get(f"{self.url}/healthz")
        except httpx.TransportError as error:
            await self.close()
            raise Unreachable(f"cannot reach {self.url}: {error}") from None

    async def solve(self, problem: str, overrides: dict[str, Any]) -> SolveResponse:
        assert self.client is not None, "start() first"
        payload = SolveRequest(problem=problem, **overrides).model_dump(exclude_none=True)
        for _ in range(self.max_retries):
            try:
                response = await self.client.post(f"{self.url}/solve", json=payload)
            except httpx.TransportError as error:
                raise Unreachable(f"cannot reach {self.url}: {error}") from None
            if response.status_code == 429:
                await asyncio.sleep(float(response.headers.get("Retry-After", "1")))
                continue
            if response.status_code != 200:
                raise SolveFailed(f"HTTP {response.status_code}: {_message(response)}")
            return SolveResponse.model_validate(response.json())
        raise SolveFailed(f"still overloaded (429) after {self.max_retries} tries")

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()
            self.client = None


def _message(response: httpx.Response) -> str:
    try:
        return str(response.json().get("message", response.text))
    except ValueError:
        return response.text[:200]
