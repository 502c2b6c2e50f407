"""The reference's schedule, reimplemented faithfully as the baseline of the benchmarks.

The winning Kaggle notebook advanced all candidates in lock step: one
batched generate call per step for every live candidate, then the code of
every candidate that asked for it, then the next step. The step rules are
the same Candidate methods the service uses, with the same request ids and
seeds, so the two schedules produce the same texts for the same seeds and
differ only in when things run.
"""

from __future__ import annotations

import asyncio
import time

from sandbox.execution import Executor
from service.engines.base import Engine
from service.solver import Action, Candidate, SolveConfig, SolveResult, derive_seed
from service.tir import last_code_block


async def solve_with_step_barrier(
    engine: Engine, executor: Executor, problem: str, config: SolveConfig, request_id: str
) -> SolveResult:
    started = time.monotonic()
    prompt = engine.format_prompt(problem)
    candidates = [Candidate(i, derive_seed(config.seed, i)) for i in range(config.num_samples)]
    live = list(candidates)
    while live:
        requests = [c.next_request(prompt, config, request_id) for c in live]
        step_started = time.monotonic()
        results = await asyncio.gather(*(engine.complete(r) for r in requests))
        step_s = time.monotonic() - step_started
        actions = []
        for candidate, result in zip(live, results):
            candidate.generation_s += step_s
            candidate.prompt_tokens += result.prompt_tokens
            candidate.completion_tokens += result.completion_tokens
            actions.append(candidate.after_step(result.text, config, prompt))
        to_execute = [c for c, action in zip(live, actions) if action is Action.EXECUTE]
        exec_started = time.monotonic()
        outputs = await asyncio.gather(*(executor.execute(last_code_block(c.text) or "") for c in to_execute))
        exec_s = time.monotonic() - exec_started
        for candidate, output in zip(to_execute, outputs):
            candidate.execution_s += exec_s
            candidate.after_execution(output.feedback, config)
        live = [c for c, action in zip(live, actions) if action is not Action.DONE]
    return SolveResult.tally(candidates, config, started=started)
