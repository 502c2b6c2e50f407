"""An evaluation run: every problem of a set, once per seed, through a backend, into a run store.

Seed k of problem p is solved with the request seed derive_seed("eval", k, p.id), so a rerun of
the same (set, settings, seed) asks the solver the same question. Up to `concurrency` problems
are in flight (the budgeted mode solves one at a time, as in the competition). Every finished
problem is stored at once; a cancelled run (Ctrl-C, SIGTERM, a task cancel) keeps them, and
running it again with the same settings solves only what is missing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from service.answers import AnswerMode
from service.evaluation.backends import Backend, SolveFailed
from service.evaluation.budget import BudgetPolicy, run_budgeted
from service.evaluation.datasets import Problem, ProblemSet
from service.evaluation.scoring import error_record, make_record, request_seed
from service.evaluation.store import RunStore

Record = dict[str, Any]


@dataclass(frozen=True)
class EvalConfig:
    seeds: int = 1
    overrides: dict[str, Any] = field(default_factory=dict)  # SolveRequest fields but problem and seed
    answer_mode: AnswerMode | None = None  # None: the set's own
    concurrency: int = 1
    budget: BudgetPolicy | None = None

    def mode(self, problem_set: ProblemSet) -> AnswerMode:
        return self.answer_mode or problem_set.answer_mode


def manifest(problem_set: ProblemSet, config: EvalConfig) -> dict[str, Any]:
    """What a run's results depend on; a resumed run must match it exactly."""
    return {
        "set": problem_set.name,
        "source": problem_set.source,
        "fingerprint": problem_set.fingerprint,
        "problems": len(problem_set.problems),
        "answer_mode": config.mode(problem_set).value,
        "seeds": config.seeds,
        "overrides": {k: v for k, v in sorted(config.overrides.items()) if v is not None},
        "budget": config.budget.as_dict() if config.budget else None,
    }


def pending(problem_set: ProblemSet, store: RunStore, seeds: int) -> list[tuple[int, Problem]]:
    """(seed, problem) pairs without a finished record, seed by seed in set order."""
    return [(s, p) for s in range(seeds) for p in problem_set.problems if not store.done(s, p.id)]


async def run_eval(
    problem_set: ProblemSet,
    backend: Backend,
    store: RunStore,
    config: EvalConfig,
    on_record: Callable[[Record], None] = lambda record: None,
) -> int:
    """Solve what the store lacks; the number of problems solved by this call."""
    mode = config.mode(problem_set)
    todo = pending(problem_set, store, config.seeds)
    solved = 0

    def keep(record: Record) -> None:
        nonlocal solved
        record["backend"] = backend.description
        store.append(record)
        solved += 1
        on_record(record)

    if config.budget is not None:
        for seed in range(config.seeds):
            problems = [p for s, p in todo if s == seed]
            spent = sum(r.get("budget", {}).get("spent_s", 0.0) for (s, _), r in store.records.items() if s == seed)
            if problems:
                await run_budgeted(problems, seed, backend, config.budget, config.overrides, mode, spent, keep)
        return solved

    queue = list(reversed(todo))

    async def worker() -> None:
        while queue:
            seed, problem = queue.pop()
            keep(await solve_one(backend, problem, seed, config.overrides, mode))

    workers = [asyncio.create_task(worker()) for _ in range(max(1, min(config.concurrency, len(todo))))]
    try:
        done, _ = await asyncio.wait(workers, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            task.result()  # the first failure (e.g. the backend is unreachable) stops the run
    finally:
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
    return solved


async def solve_one(
    backend: Backend, problem: Problem, seed: int, overrides: dict[str, Any], mode: AnswerMode
) -> Record:
    rs = request_seed(seed, problem.id)
    started = time.monotonic()
    try:
        response = await backend.solve(problem.problem, overrides | {"seed": rs, "answer_mode": mode.value})
    except (SolveFailed, ValidationError) as error:
        return error_record(problem, seed, [rs], str(error), time.monotonic() - started)
    return make_record(problem, seed, [rs], [response], mode)
