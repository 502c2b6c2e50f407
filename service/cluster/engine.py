"""RayEngine: the Engine protocol over a DeploymentHandle to the engine replicas, with fail-over.

Each step is one streaming call to the engine deployment, keyed by its problem (the handle call's session
id) so that the affinity router sends every step of a problem to the same replica. When the replica running
a step dies (its actor or its node), the step is sent again, to a live replica, with the same request:
the same text so far and the same seed, so the candidate's text is what it would have been without the
failure (vLLM's seeded sampling on the same model and dtype does not depend on the batch). What the
listener was already told is not told twice. Aborting a step cancels its call, which cancels the method
running in the replica, which aborts the request in vLLM.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import replace

from ray.exceptions import RayActorError, RayError
from ray.serve.exceptions import RayServeException
from ray.serve.handle import DeploymentHandle

from service.cluster.ledger import Ledger
from service.cluster.protocol import StepFailed, problem_of
from service.engines.base import DEFAULT_STALL_S, EngineError, StepRequest, StepResult
from service.engines.inflight import InFlight
from service.engines.progress import Progress
from service.tir import NUMINA_PROMPT_TEMPLATE, format_prompt

log = logging.getLogger(__name__)

# start() asks an engine replica to format these: the first shows where the problem goes in the served
# chat template, the second that it goes there as it is.
PROBE = "<<sctir:problem>>"
CHECK = "Compute {x} + 1 for x = 2."


class RayEngine:
    """Engine whose steps run on the engine replicas of a Ray Serve deployment (service.cluster.app)."""

    def __init__(
        self,
        handle: DeploymentHandle,
        *,
        retries: int = 2,
        stall_s: float = DEFAULT_STALL_S,
        prompt_template: str = NUMINA_PROMPT_TEMPLATE,
    ) -> None:
        self._handle = handle
        self._streaming = handle.options(stream=True)
        self._retries = retries
        self._prompt_template = prompt_template
        self._prompt_parts: tuple[str, str] | None = None  # the served template around the problem
        self._in_flight = InFlight()  # cancelling a step's call aborts it in its replica
        self._progress = Progress(stall_s)  # every streamed item of every step ticks it
        self.ledger = Ledger()  # which replicas served each problem, and its retried steps

    async def start(self) -> None:
        """Learn the served chat template from an engine replica, waiting until one is up.

        The Engine protocol formats prompts synchronously, so the template is split here once around a
        probe, and checked to take a problem as it is.
        """
        if self._prompt_parts is not None:
            return
        try:
            probe, check = await asyncio.gather(
                self._handle.format_prompt.remote(PROBE), self._handle.format_prompt.remote(CHECK)
            )
        except (RayError, RayServeException) as error:
            raise EngineError(f"no engine replica answered: {error}") from error
        prefix, found, suffix = probe.partition(PROBE)
        if not found or prefix + CHECK + suffix != check:
            raise EngineError(f"the served chat template does not take the problem as it is: {check!r}")
        self._prompt_parts = (prefix, suffix)

    async def ready(self) -> bool:
        """Started, and tokens streamed within the last second or an engine replica answers in time."""

        async def ping() -> bool:
            return await self._handle.ready.remote()

        return self._prompt_parts is not None and await self._progress.alive(ping)

    def format_prompt(self, problem: str) -> str:
        """The engine replicas' chat template applied to `problem` (the configured template before start())."""
        if self._prompt_parts is None:
            return format_prompt(problem, template=self._prompt_template)
        prefix, suffix = self._prompt_parts
        return prefix + problem + suffix

    async def complete(self, request: StepRequest) -> StepResult:
        """Generate one step on the problem's replica; abort(request.request_id) makes it return "abort".

        EngineStalled once no step has streamed anything for stall_s (see service.engines.progress).
        """
        step = self._progress.guard(lambda: self._step(request))
        return await self._in_flight.run(request.request_id, step)

    async def abort(self, request_id: str) -> None:
        """Cancel the step's call, which aborts it in its replica's vLLM; a no-op for unknown ids."""
        await self._in_flight.abort(request_id)

    async def close(self) -> None:
        """Abort the steps in flight (the engine replicas belong to their deployment, not to this engine)."""
        await self._in_flight.abort_all()

    async def _step(self, request: StepRequest) -> StepResult:
        told = Told(request.on_text)
        call = replace(request, on_text=None)  # the callback stays here: the replica streams the text back
        attempt = 0
        while True:
            try:
                return await self._attempt(call, told)
            except RayActorError as error:  # the replica (or its node) died under the step
                if attempt >= self._retries:
                    raise EngineError(f"the engine replica died and {attempt} retries failed: {error}") from error
                if attempt == 0:
                    self.ledger.retried(request.request_id)
                attempt += 1
                log.warning("step %s: its engine replica died; sending it again (%d)", request.request_id, attempt)

    async def _attempt(self, call: StepRequest, told: Told) -> StepResult:
        response = self._streaming.options(session_id=problem_of(call.request_id)).complete.remote(call)
        told.restart()
        ended = False
        try:
            async for item in response:
                self._progress.tick()
                if isinstance(item, str):
                    told.text(item)
                    continue
                ended = True
                if isinstance(item, StepFailed):
                    raise item.error()
                self.ledger.served(call.request_id, item.replica)
                return item.result
        except RayActorError:
            raise
        except (RayError, RayServeException) as error:
            raise EngineError(f"the engine deployment failed the step: {error}") from error
        finally:
            if not ended:  # cancelled (an abort), or failed here: cancel the replica's method, which aborts in vLLM
                response.cancel()
        raise EngineError("the engine replica's stream ended without a result")


class Told:
    """The text of one step handed to the listener so far, across attempts.

    A step sent again streams its text from the start: only what goes beyond the text already told is
    told. A retry on the same model with the same seed writes the same text; if it does not (another
    model build, say), that is logged, and the step's result is the retry's.
    """

    def __init__(self, on_text: Callable[[str], None] | None) -> None:
        self._on_text = on_text
        self._told = ""
        self._position = 0  # characters of the current attempt seen

    def restart(self) -> None:
        self._position = 0

    def text(self, delta: str) -> None:
        start, self._position = self._position, self._position + len(delta)
        repeated = min(len(self._told) - start, len(delta))  # characters of `delta` told before
        if repeated > 0 and delta[:repeated] != self._told[start : start + repeated]:
            log.warning("a retried step's text differs from what its first attempt streamed")
        new = delta[max(0, repeated) :]
        if new:
            self._told += new
            if self._on_text:
                self._on_text(new)
