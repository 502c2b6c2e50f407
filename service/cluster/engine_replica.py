"""An engine replica: one VllmEngine in a Ray Serve replica, serving SC-TIR steps to the solver replicas.

The engine is the in-process one the single-box service runs (same options, from the same settings); this
class only carries its steps over Serve's streaming calls and exports its vLLM metrics through Ray's
metrics (vLLM's RayPrometheusStatLogger: every node's metrics agent serves them, labelled by replica).
Cancelling a step's call (RayEngine's abort, a solver that stops early) cancels `complete` here, which
aborts the request in vLLM.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import ray
from ray import serve

from service.cluster.node_settings import Overrides, resolve
from service.cluster.protocol import StepDone, StepFailed, StepItem
from service.components import vllm_options
from service.engines.base import EngineError, StepRequest, StepResult
from service.engines.vllm_local import VllmEngine


class EngineReplica:
    """The engine deployment's replica class (service.cluster.app deploys it)."""

    async def __init__(self, given: Overrides) -> None:
        from vllm.v1.metrics.ray_wrappers import RayPrometheusStatLogger

        settings = resolve(given)  # on this node: e.g. the demo model's KV cache from this node's memory
        self.replica_id = serve.get_replica_context().replica_id.unique_id
        self.engine = VllmEngine(
            vllm_options(settings),
            prompt_template=settings.prompt_template,
            stall_s=settings.engine_stall_s,
            stat_loggers=[RayPrometheusStatLogger],
        )
        await self.engine.start()

    async def complete(self, request: StepRequest) -> AsyncIterator[StepItem]:
        """The step's text as vLLM streams it (deltas a slow reader has not taken yet are joined), then
        its StepDone, or StepFailed for an EngineError."""
        texts: list[str] = []
        woken = asyncio.Event()

        def on_text(delta: str) -> None:
            texts.append(delta)
            woken.set()

        step = asyncio.ensure_future(self.engine.complete(replace(request, on_text=on_text)))
        step.add_done_callback(lambda _: woken.set())
        try:
            while True:
                await woken.wait()
                woken.clear()
                if texts:
                    yield "".join(texts)
                    texts.clear()
                if step.done():
                    break
            yield self._outcome(step)
        finally:  # the call was cancelled (or its caller left): abort the step in vLLM before going
            if not step.done():
                step.cancel()
                await asyncio.wait([step])

    def _outcome(self, step: asyncio.Future[StepResult]) -> StepDone | StepFailed:
        try:
            return StepDone(step.result(), self.replica_id)
        except EngineError as error:
            return StepFailed.of(error, self.replica_id)

    def format_prompt(self, problem: str) -> str:
        return self.engine.format_prompt(problem)

    async def ready(self) -> bool:
        return await self.engine.ready()

    async def check_health(self) -> None:
        """Serve's health check: a replica whose engine is dead or frozen fails it, and Serve replaces the replica
        after three failures in a row."""
        if not await self.engine.ready():
            raise EngineError(f"the vLLM engine of replica {self.replica_id} is not answering")

    def identity(self) -> tuple[str, ray.actor.ActorHandle]:
        """This replica's id and its actor (for operators and tests: e.g. to kill it)."""
        return self.replica_id, ray.get_runtime_context().current_actor

    def unfinished_requests(self) -> int:
        """Requests vLLM holds here (queued, running or finishing): 0 once every step is done or aborted."""
        return self.engine.num_unfinished_requests()

    async def __del__(self) -> None:
        """Serve's graceful shutdown: abort what is in flight and stop the engine core."""
        await self.engine.close()
