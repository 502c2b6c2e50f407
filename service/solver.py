"""SC-TIR orchestration: N candidates, up to M steps each, majority vote.

Each candidate runs its own async loop (generate, then execute its last
code block, then generate again), so a candidate that is executing never
holds back one that is generating; the engine batches whatever is in
flight. The step rules are the reference's (see service.tir). Beyond the reference:
early stopping once the leader is unbeatable, a per-request deadline, and
results that are a function of the seed alone (per-candidate seeds; the
final vote counts candidates in index order, not in finish order).

Faults of code execution, per candidate: an executor that cannot run a block
fails the candidate (`failed`, `error: "executor: ..."`); a sandbox that died
or froze under a block (ExecutionResult.sandbox_lost: OOM-killed, killed or
paused from outside, replaced since) does not, since the model saw that in
its output block like any crash and may have worked around it: the candidate
keeps the status its text earns, and its `error` says what happened
("sandbox: the container died while the block ran (...); replaced"), so an
answer reached without that block's result, or a candidate that ran out of
steps over it, is not mistaken for the model's own doing.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from sandbox.execution import ExecutionResult, Executor, ExecutorError
from service.answers import AnswerMode, Ballot, read_answer
from service.engines.base import ContextExhausted, Engine, EngineError, SamplingParams, StepRequest
from service.events import CandidateFinished, Executed, Listener, StepText, VoteTally
from service.tir import (
    OUTPUT_LIMIT_CHARS,
    OUTPUT_MARKER,
    StepOutcome,
    classify_step,
    last_code_block,
    output_block,
)

log = logging.getLogger(__name__)


class ExecutionMode(StrEnum):
    LAST_BLOCK = "last_block"  # the reference's: each block runs alone with the preamble
    SESSION = "session"  # a candidate's blocks share one interpreter's state


class CandidateStatus(StrEnum):
    ANSWERED = "answered"  # finished with an answer (it may still be invalid for the mode)
    PRUNED = "pruned"  # dropped by a reference rule (no code, hallucinated output, stalled)
    RESTARTED = "restarted"  # restarted from the prompt and ran out of steps before answering
    EXHAUSTED = "exhausted"  # used every step without giving an answer
    CANCELLED = "cancelled"  # stopped by early stopping, the deadline or a disconnect
    FAILED = "failed"  # the engine or the executor failed


class Failure(StrEnum):
    """What failed a candidate: its `error` begins with it, and an engine failure asks clients to retry."""

    ENGINE = "engine"
    EXECUTOR = "executor"
    INTERNAL = "internal"  # a bug: it costs one candidate, not the request


class Profile(StrEnum):
    """Whose candidate rules: the service's, or the reference's exactly (the winners' notebook)."""

    SERVICE = "service"  # a candidate finishes at its first answer; ties: the lowest candidate index
    # an answered candidate keeps generating and its answer is re-read (and kept through restarts and
    # prunes); the 100-character tail is of prompt + text; ties: the first seen in the notebook's order
    # (pruned candidates step by step, then the rest); no early stop
    REFERENCE = "reference"


# The bounds of the SC-TIR parameters, declared once as types: SolveParameters (and through it the server's
# settings) and the overrides of POST /solve take them from here.
NumSamples = Annotated[int, Field(ge=1, le=256)]
MaxSteps = Annotated[int, Field(ge=1, le=16)]
Temperature = Annotated[float, Field(ge=0, le=2)]
TopP = Annotated[float, Field(gt=0, le=1)]
MaxNewTokens = Annotated[int, Field(ge=1, le=32768)]
MAX_DEADLINE_S = 86400.0
DeadlineSeconds = Annotated[float, Field(gt=0, le=MAX_DEADLINE_S)]
Seed = Annotated[int, Field(ge=0, lt=2**31)]
OutputLimit = Annotated[int, Field(ge=1)]


def random_seed() -> int:
    return secrets.randbelow(2**31)


class SolveParameters(BaseModel):
    """The SC-TIR parameters of a problem and their defaults (the winning AIMO run: N=48, M=4, T=0.8).

    Declared once: the server's settings inherit these fields (SCTIR_NUM_SAMPLES, --num-samples, ...),
    and SolveConfig adds the seed of one problem.
    """

    num_samples: NumSamples = Field(48, description="Candidates per problem (N).")
    max_steps: MaxSteps = Field(4, description="Generation steps per candidate (M).")
    temperature: Temperature = Field(0.8, description="Sampling temperature.")
    top_p: TopP = Field(1.0, description="Nucleus sampling mass.")
    max_new_tokens: MaxNewTokens = Field(2048, description="Token budget of one step.")
    answer_mode: AnswerMode = Field(AnswerMode.EXPRESSION, description="How answers are compared.")
    execution_mode: ExecutionMode = Field(ExecutionMode.LAST_BLOCK, description="How code blocks run.")
    restart_on_fail: bool = Field(True, description="Restart a failed candidate from the prompt instead of pruning it.")
    early_stop: bool = Field(True, description="Stop once the leading answer cannot be overtaken.")
    profile: Profile = Field(
        Profile.SERVICE,
        description="Candidate rules: service (a candidate finishes at its first answer) or reference (the "
        "winners' notebook's: answered candidates keep generating, its tie-break, no early stop).",
    )
    deadline_s: DeadlineSeconds = Field(600.0, description="Default time limit of one problem.")
    output_limit_chars: OutputLimit = Field(OUTPUT_LIMIT_CHARS, description="Execution output shown to the model.")

    def solve_config(self, **overrides: Any) -> SolveConfig:
        """These parameters for one problem, with `overrides` (validated; the seed is random unless given)."""
        return SolveConfig(**{name: getattr(self, name) for name in SolveParameters.model_fields} | overrides)


class SolveConfig(SolveParameters):
    """The parameters one problem is solved with; SolveConfig() has the service's defaults and a random seed."""

    model_config = ConfigDict(frozen=True)

    seed: Seed = Field(default_factory=random_seed, description="Every candidate's sampling seed derives from it.")

    @property
    def reference(self) -> bool:
        return self.profile is Profile.REFERENCE


class Action(StrEnum):
    """What a candidate needs next, after the reference's rules judged its last step."""

    EXECUTE = "execute"  # run the last code block, then generate again
    GENERATE = "generate"  # restarted from the prompt: generate again
    CONTINUE = "continue"  # answered, under the reference profile: generate again after its text
    DONE = "done"


@dataclass
class Candidate:
    """One SC-TIR sample: its text so far and the reference's step rules applied to it.

    The scheduling (async loop per candidate, or the reference's step barrier in
    bench/) is the caller's; the text a candidate produces depends only on
    its seed and what the engine and the executor return.
    """

    index: int
    seed: int
    status: CandidateStatus = CandidateStatus.CANCELLED  # until it finishes
    steps: int = 0
    restarts: int = 0
    executions: int = 0
    text: str = ""
    answer: str | None = None
    vote: str | None = None
    error: str | None = None
    failure: Failure | None = None  # set with status FAILED
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retried_steps: int = 0  # steps the engine sent again after its replica died (service.cluster)
    generation_s: float = 0.0
    execution_s: float = 0.0
    executed_since_restart: bool = False
    sandbox_lost: str | None = None  # the first sandbox that died or froze under one of its blocks (see the module)

    def next_request(self, prompt: str, config: SolveConfig, request_id: str) -> StepRequest:
        step = self.steps
        self.steps += 1
        return StepRequest(
            request_id=f"{request_id}-{self.index}-{step}",
            prompt=prompt + self.text,
            params=SamplingParams(
                temperature=config.temperature,
                max_new_tokens=config.max_new_tokens,
                stop=(OUTPUT_MARKER,),
                seed=derive_seed(self.seed, step),
                top_p=config.top_p,
            ),
        )

    def after_step(self, generated: str, config: SolveConfig, prompt: str = "") -> Action:
        """Apply the reference's rules to the step just generated (see service.tir.classify_step).

        Under the reference profile the rules see `prompt` + text, as the notebook's did.
        """
        self.text += generated
        judged = prompt + self.text if config.reference else self.text
        last_step = self.steps >= config.max_steps
        outcome = classify_step(judged, executed_before=self.executed_since_restart, last_step=last_step)
        if outcome is StepOutcome.EXECUTE:
            return Action.EXECUTE
        if outcome is StepOutcome.ANSWER:
            self.answer = read_answer(judged, config.answer_mode)
            if config.reference and not last_step:
                return Action.CONTINUE  # the reference keeps it in the batch and reads its answer again
            return self.finish(CandidateStatus.ANSWERED if self.answer is not None else CandidateStatus.EXHAUSTED)
        if outcome is StepOutcome.LAST_STEP:  # no answer in the tail: it keeps the one it had (if any)
            return self.finish(CandidateStatus.ANSWERED if self.answer is not None else CandidateStatus.EXHAUSTED)
        if outcome is StepOutcome.HALLUCINATED or not config.restart_on_fail:
            return self.finish(CandidateStatus.PRUNED, outcome.value)
        self.restarts += 1  # NO_CODE or STALLED: start over
        if self.steps >= config.max_steps:  # no step left: keep the last attempt's text for the traces
            return self.finish(CandidateStatus.RESTARTED)
        self.text, self.executed_since_restart = "", False
        return Action.GENERATE

    def after_execution(self, feedback: str, config: SolveConfig) -> None:
        self.text += output_block(feedback, config.output_limit_chars)
        self.executed_since_restart = True
        self.executions += 1

    def finish(self, status: CandidateStatus, error: str | None = None) -> Action:
        """End with `status`; `error` says why, then the sandbox lost under its blocks if one was (see the module)."""
        self.status, self.error = status, _joined(error, self.sandbox_lost)
        return Action.DONE

    def fail(self, failure: Failure, error: object) -> Action:
        """End as FAILED because of `failure`; `error` says how (its `error` reads "<failure>: <error>")."""
        self.failure = failure
        return self.finish(CandidateStatus.FAILED, f"{failure}: {error}")

    def lost_sandbox(self, what: str) -> None:
        """A sandbox died or froze under one of its blocks: said in `error` from now on (the first one)."""
        if self.sandbox_lost is None:
            self.sandbox_lost = f"sandbox: {what}"
            self.error = _joined(self.error, self.sandbox_lost)


def _joined(*parts: str | None) -> str | None:
    return "; ".join(part for part in parts if part) or None


@dataclass
class SolveResult:
    answer: str | None
    votes: dict[str, int]
    agreement: float
    seed: int
    candidates: list[Candidate]
    stopped_early: bool
    deadline_hit: bool
    total_s: float
    generation_s: float = field(init=False)
    execution_s: float = field(init=False)
    prompt_tokens: int = field(init=False)
    completion_tokens: int = field(init=False)
    retried_steps: int = field(init=False)

    @classmethod
    def tally(
        cls,
        candidates: list[Candidate],
        config: SolveConfig,
        *,
        started: float,
        stopped_early: bool = False,
        deadline_hit: bool = False,
    ) -> SolveResult:
        """The vote of the finished candidates, counted in index order so finish order cannot matter.

        Under the reference profile, in the notebook's order (the candidates pruned at each step,
        then the others), whose first supporter wins a tie there.
        """
        ballot = Ballot(config.answer_mode)
        order = sorted(candidates, key=_reference_order) if config.reference else candidates
        for rank, candidate in enumerate(order):
            if candidate.answer is not None:
                candidate.vote = ballot.add(rank, candidate.answer)
        winner = ballot.winner()
        return cls(
            answer=winner.answer if winner else None,
            votes=ballot.votes(),
            agreement=ballot.agreement(),
            seed=config.seed,
            candidates=candidates,
            stopped_early=stopped_early,
            deadline_hit=deadline_hit,
            total_s=time.monotonic() - started,
        )

    def __post_init__(self) -> None:
        self.generation_s = sum(c.generation_s for c in self.candidates)
        self.execution_s = sum(c.execution_s for c in self.candidates)
        self.prompt_tokens = sum(c.prompt_tokens for c in self.candidates)
        self.completion_tokens = sum(c.completion_tokens for c in self.candidates)
        self.retried_steps = sum(c.retried_steps for c in self.candidates)


def _reference_order(candidate: Candidate) -> tuple[float, int]:
    return (candidate.steps if candidate.status is CandidateStatus.PRUNED else math.inf, candidate.index)


def derive_seed(*parts: int | str) -> int:
    """A stable 31-bit seed from a path of ints (request seed, candidate, attempt, step)."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & 0x7FFF_FFFF


class Solver:
    """Runs SC-TIR for one problem at a time per call; safe to call concurrently."""

    def __init__(
        self,
        engine: Engine,
        executor: Executor,
        on_execution: Callable[[ExecutionResult, float], None] | None = None,
    ) -> None:
        self.engine = engine
        self.executor = executor
        self.on_execution = on_execution  # e.g. metrics; called once per executed block

    async def solve(
        self, problem: str, config: SolveConfig, request_id: str, listener: Listener | None = None
    ) -> SolveResult:
        """Solve `problem`; `listener` is told what happens as it happens (see service.events)."""
        started = time.monotonic()
        prompt = self.engine.format_prompt(problem)
        candidates = [Candidate(i, derive_seed(config.seed, i)) for i in range(config.num_samples)]
        running = set(range(config.num_samples))
        live_ballot = Ballot(config.answer_mode)
        decided = asyncio.Event()

        async def run(candidate: Candidate) -> None:
            try:
                await self._run_candidate(candidate, prompt, config, request_id, listener)
            except asyncio.CancelledError:
                candidate.status = CandidateStatus.CANCELLED
                if listener:
                    listener(CandidateFinished.of(candidate))
                raise
            except Exception as error:  # a bug must cost one candidate, not the request
                log.exception("candidate crashed")
                candidate.fail(Failure.INTERNAL, repr(error))
            running.discard(candidate.index)
            vote = live_ballot.add(candidate.index, candidate.answer) if candidate.answer is not None else None
            leader_unbeatable = live_ballot.is_decided(running)
            if listener:
                listener(CandidateFinished.of(candidate, vote))
                finished = config.num_samples - len(running)
                listener(VoteTally.of(live_ballot, finished=finished, running=len(running), decided=leader_unbeatable))
            if config.early_stop and not config.reference and running and leader_unbeatable:
                decided.set()

        tasks = [asyncio.create_task(run(c), name=f"{request_id}-{c.index}") for c in candidates]
        all_done = asyncio.ensure_future(asyncio.wait(tasks))
        decided_wait = asyncio.create_task(decided.wait())
        try:  # the request is the sandbox's tenant: its code never meets another request's
            done, _ = await asyncio.wait(
                {all_done, decided_wait}, timeout=config.deadline_s, return_when=asyncio.FIRST_COMPLETED
            )
            stopped_early = decided_wait in done and bool(running)
            deadline_hit = not done
        finally:
            for task in tasks:
                task.cancel()  # the candidates still running: each aborts its engine step or its block
            # Every candidate, not just the first to end, has let go of what it held (an engine request,
            # a sandbox slot, a session) before the request's tenancy ends and its response is sent.
            await asyncio.wait(tasks)
            all_done.cancel()
            decided_wait.cancel()
            await asyncio.gather(all_done, decided_wait, return_exceptions=True)
            await self._release(request_id)

        if stopped_early or deadline_hit:
            log.info(
                "candidates cancelled",
                extra={"cancelled": len(running), "early_stop": stopped_early, "deadline": deadline_hit},
            )
        return SolveResult.tally(
            candidates, config, started=started, stopped_early=stopped_early, deadline_hit=deadline_hit
        )

    async def _run_candidate(
        self, candidate: Candidate, prompt: str, config: SolveConfig, request_id: str, listener: Listener | None
    ) -> None:
        """One candidate's loop, with no barrier against the others."""
        session_id = f"{request_id}-{candidate.index}" if config.execution_mode is ExecutionMode.SESSION else None
        try:
            action = Action.GENERATE
            while action is not Action.DONE:
                request = candidate.next_request(prompt, config, request_id)
                try:
                    generated = await self._generate(candidate, request, listener)
                except ContextExhausted:
                    generated = ""  # the reference's empty completion: judged like any empty step
                except EngineError as error:
                    candidate.fail(Failure.ENGINE, error)
                    return
                if generated is None:  # aborted inside the engine
                    return
                action = candidate.after_step(generated, config, prompt)
                if action is Action.GENERATE and session_id:
                    await self.executor.close_session(session_id)  # a restart forgets the state
                if action is Action.EXECUTE:
                    code = last_code_block(candidate.text) or ""
                    execution = await self._execute(candidate, code, session_id, tenant=request_id)
                    if execution is None:
                        return
                    candidate.after_execution(execution.feedback, config)
                    if listener:
                        listener(Executed.of(candidate, code, execution, config.output_limit_chars))
        finally:
            if session_id:
                await self.executor.close_session(session_id)

    async def _generate(self, candidate: Candidate, request: StepRequest, listener: Listener | None) -> str | None:
        """One engine step's text, None if the engine aborted it.

        A cancelled step is aborted in the engine before the task ends, so
        early stops, deadlines and disconnects free engine capacity at once.
        The listener hears the text as the engine streams it, then whatever of
        the step's text the engine did not stream (all of it, from an engine
        that does not stream; a stop string it added).
        """
        told: list[str] = []
        if listener:

            def on_text(text: str) -> None:
                told.append(text)
                listener(StepText.of(candidate, text))

            request = replace(request, on_text=on_text)
        started = time.monotonic()
        try:
            result = await self.engine.complete(request)
        except asyncio.CancelledError:
            await self.engine.abort(request.request_id)
            raise
        finally:
            candidate.generation_s += time.monotonic() - started
        candidate.prompt_tokens += result.prompt_tokens
        candidate.completion_tokens += result.completion_tokens
        candidate.retried_steps += result.retried
        if result.finish_reason == "abort":
            return None
        untold = result.text[len("".join(told)) :]
        if untold and request.on_text:
            request.on_text(untold)
        return result.text

    async def _release(self, request_id: str) -> None:
        """End the request's tenancy of the sandbox (an executor fault here is logged, not the client's)."""
        try:
            await self.executor.release(request_id)
        except Exception:
            log.exception("executor release failed")

    async def _execute(
        self, candidate: Candidate, code: str, session_id: str | None, tenant: str
    ) -> ExecutionResult | None:
        """Run a block; its result, or None when the executor itself failed."""
        started = time.monotonic()
        try:
            result = await self.executor.execute(code, session_id=session_id, tenant=tenant)
        except ExecutorError as error:  # the sandbox could not run it: the candidate's failure, never its output
            log.debug("candidate %d failed: executor: %s", candidate.index, error)  # the response says it once
            candidate.fail(Failure.EXECUTOR, error)
            return None
        except Exception as error:  # a bug must cost one candidate, not the request
            log.exception("executor failed")
            candidate.fail(Failure.EXECUTOR, error)
            return None
        finally:
            candidate.execution_s += time.monotonic() - started
        if self.on_execution:
            self.on_execution(result, time.monotonic() - started)
        if result.sandbox_lost:
            candidate.lost_sandbox(result.sandbox_lost)
        return result
