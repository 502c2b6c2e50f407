"""One solve as every caller reports it: the API, `sctir solve` in-process and the evaluation.

A vote needs at least one candidate that did not fail; when every candidate failed (the engine
is down, the sandbox cannot run code) there is no answer to report, only the failure: the API
answers 503 (with Retry-After when the engine caused it), the CLI exits "unavailable", the
evaluation records the problem as failed.
"""

from __future__ import annotations

from service.events import Listener
from service.solver import CandidateStatus, Failure, SolveConfig, Solver, SolveResult


class AllCandidatesFailed(Exception):
    """Every candidate failed; `result` holds them (metrics count them), `engine_down` says the engine caused it."""

    def __init__(self, result: SolveResult) -> None:
        failed = [c for c in result.candidates if c.status is CandidateStatus.FAILED]
        super().__init__(f"every candidate failed; first error: {failed[0].error}")
        self.result = result
        self.engine_down = any(c.failure is Failure.ENGINE for c in failed)


async def solve_once(
    solver: Solver, problem: str, config: SolveConfig, request_id: str, listener: Listener | None = None
) -> SolveResult:
    """The solver's result, or AllCandidatesFailed when no candidate is left to vote."""
    result = await solver.solve(problem, config, request_id, listener)
    if result.candidates and all(c.status is CandidateStatus.FAILED for c in result.candidates):
        raise AllCandidatesFailed(result)
    return result
