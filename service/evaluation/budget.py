"""Budgeted mode: one total time budget for a problem set, spread adaptively (the AIMO setting).

Problems are solved one at a time, in order, as in the competition. Before each problem the time
left is shared out: its fair share is left / problems left, and it may stretch to `stretch` fair
shares. Within that cap it runs rounds of N candidates (a fresh seed each round), voting over all
of its rounds' candidates, until the vote reaches consensus (the winner holds `consensus` of the
valid votes with at least two of them) or `max_rounds` or its cap is reached. A problem that
agrees early (the solver's early stop ends its round quickly) leaves its time to the rest, and a
problem without consensus gets more rounds, so more candidates.

The budget is never exceeded: every round's solver deadline is the problem's remaining cap less a
safety margin, the round is also cancelled outright at its cap, the cap never exceeds the time left
(less the margin), and no round starts with less than `min_round_s` left. A problem the budget
cannot reach is recorded unanswered. On resume, the time recorded by finished problems counts as
spent (time of a problem interrupted mid-solve is not).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from pydantic import ValidationError

from service.answers import AnswerMode, Ballot
from service.evaluation.backends import Backend, SolveFailed
from service.evaluation.datasets import Problem
from service.evaluation.scoring import error_record, make_record, request_seed
from service.schemas import SolveResponse
from service.solver import MAX_DEADLINE_S


@dataclass(frozen=True)
class BudgetPolicy:
    total_s: float
    consensus: float = 0.6
    max_rounds: int = 4
    stretch: float = 2.0
    margin_s: float | None = None  # default: 0.5% of the budget, within [0.05 s, 2 s]
    min_round_s: float | None = None  # default: max(4 margins, 0.2% of the budget)

    def __post_init__(self) -> None:
        if self.total_s <= 0 or self.max_rounds < 1 or self.stretch < 1 or not 0 < self.consensus <= 1:
            raise ValueError("budget: total_s > 0, max_rounds >= 1, stretch >= 1, 0 < consensus <= 1")

    @property
    def margin(self) -> float:
        return self.margin_s if self.margin_s is not None else min(2.0, max(0.05, 0.005 * self.total_s))

    @property
    def min_round(self) -> float:
        return self.min_round_s if self.min_round_s is not None else max(4 * self.margin, 0.002 * self.total_s)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"margin_s": self.margin, "min_round_s": self.min_round}


def has_consensus(ballot: Ballot, threshold: float) -> bool:
    winner = ballot.winner()
    return winner is not None and winner.votes >= 2 and ballot.agreement() >= threshold


async def run_budgeted(
    problems: list[Problem],
    seed: int,
    backend: Backend,
    policy: BudgetPolicy,
    overrides: dict[str, Any],
    mode: AnswerMode,
    spent_before_s: float,
    on_record: Callable[[dict[str, Any]], None],
) -> None:
    """Solve `problems` (this seed's unfinished ones) within what is left of the budget."""
    start = time.monotonic() - spent_before_s
    for index, problem in enumerate(problems):
        left = policy.total_s - (time.monotonic() - start) - policy.margin
        fair = left / (len(problems) - index)
        cap = min(left, fair * policy.stretch)
        began = time.monotonic()
        responses, seeds, note = await _rounds(problem, seed, backend, policy, overrides, mode, cap)
        spent = time.monotonic() - began
        if responses:
            record = make_record(problem, seed, seeds, responses, mode)
        else:  # nothing finished in time: unanswered, and not retried on resume (the time is gone)
            record = error_record(problem, seed, seeds, note or "no time left", spent) | {"error": None}
        record["time_s"] = spent
        ballot = _ballot(responses, mode)
        record["budget"] = {
            "left_s": max(left, 0.0),
            "fair_s": max(fair, 0.0),
            "cap_s": max(cap, 0.0),
            "spent_s": spent,
            "rounds": len(responses),
            "consensus": has_consensus(ballot, policy.consensus),
            "stopped": note,
        }
        on_record(record)


async def _rounds(problem, seed, backend, policy, overrides, mode, cap) -> tuple[list[SolveResponse], list[int], str]:
    """Rounds of candidates until consensus, max_rounds or the cap; (responses, seeds, why it stopped)."""
    began = time.monotonic()
    responses: list[SolveResponse] = []
    seeds: list[int] = []
    for round_ in range(policy.max_rounds):
        available = cap - (time.monotonic() - began)
        if available < policy.min_round:
            return responses, seeds, "cap" if responses else "no time left"
        rs = request_seed(seed, problem.id, round_)
        deadline = min(available - policy.margin, overrides.get("deadline_s") or MAX_DEADLINE_S)
        request = overrides | {"seed": rs, "answer_mode": mode.value, "deadline_s": max(deadline, 0.01)}
        try:
            async with asyncio.timeout(available):
                response = await backend.solve(problem.problem, request)
        except TimeoutError:
            return responses, seeds, "cap"
        except (SolveFailed, ValidationError) as error:
            return responses, seeds, f"failed: {error}"
        responses.append(response)
        seeds.append(rs)
        if has_consensus(_ballot(responses, mode), policy.consensus):
            return responses, seeds, "consensus"
    return responses, seeds, "max_rounds"


def _ballot(responses: list[SolveResponse], mode: AnswerMode) -> Ballot:
    ballot = Ballot(mode)
    for i, candidate in enumerate(c for r in responses for c in r.candidates):
        if candidate.answer is not None:
            ballot.add(i, candidate.answer)
    return ballot
