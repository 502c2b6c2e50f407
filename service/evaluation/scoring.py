"""Scoring: is an answer the reference's, and one problem's record from its solve responses.

Correctness uses the same equivalence as the vote (service.answers.Ballot in the run's answer
mode), with the reference as the first-added answer: in `expression` mode math-verify compares
the answer against the reference as gold; in `integer` and `aimo` mode both are normalised by the
mode's rule (so in `aimo` mode the reference is taken mod 1000 too).
"""

from __future__ import annotations

from typing import Any

from service.answers import AnswerMode, Ballot, matches_reference
from service.evaluation.datasets import Problem
from service.schemas import SolveResponse
from service.solver import CandidateStatus, derive_seed


def request_seed(seed: int, problem_id: str, round_: int = 0) -> int:
    """The solve request's seed for evaluation seed `seed`: distinct per problem and round, reproducible."""
    return derive_seed("eval", seed, problem_id, round_)


def make_record(
    problem: Problem, seed: int, request_seeds: list[int], responses: list[SolveResponse], mode: AnswerMode
) -> dict[str, Any]:
    """The JSON record of one (seed, problem): the vote, its correctness and its costs.

    Several responses (rounds of the budgeted mode) are one vote over all their candidates, in
    round then index order; a single response keeps the server's own vote."""
    candidates = [c for r in responses for c in r.candidates]
    if len(responses) == 1:
        answer, votes, agreement = responses[0].answer, responses[0].votes, responses[0].agreement
        candidate_votes = [c.vote for c in candidates]
    else:
        ballot = Ballot(mode)  # filled in index order, as service.answers.tally does
        candidate_votes = [ballot.add(i, c.answer) if c.answer is not None else None for i, c in enumerate(candidates)]
        winner = ballot.winner()
        answer, votes, agreement = (winner.answer if winner else None), ballot.votes(), ballot.agreement()
    vote_correct = {vote: matches_reference(vote, problem.answer, mode) for vote in votes}
    return {
        "seed": seed,
        "problem_id": problem.id,
        "reference": problem.answer,
        "answer": answer,
        "correct": answer is not None and vote_correct.get(answer, False),
        "pass": any(vote_correct.values()),
        "votes": votes,
        "vote_correct": vote_correct,
        "agreement": agreement,
        "candidates": len(candidates),
        # pass@1's denominator: a candidate cancelled by early stopping, the deadline or a disconnect
        # never answered, so it is neither right nor wrong
        "judged_candidates": sum(1 for c in candidates if c.status is not CandidateStatus.CANCELLED),
        "correct_candidates": sum(1 for v in candidate_votes if v is not None and vote_correct.get(v, False)),
        "stopped_early": any(r.stopped_early for r in responses),
        "deadline_hit": any(r.deadline_hit for r in responses),
        "time_s": sum(r.timings.total_s for r in responses),
        "prompt_tokens": sum(r.usage.prompt_tokens for r in responses),
        "completion_tokens": sum(r.usage.completion_tokens for r in responses),
        "request_seeds": request_seeds,
        "error": None,
        "responses": [r.model_dump(mode="json") for r in responses],
    }


def error_record(problem: Problem, seed: int, request_seeds: list[int], error: str, time_s: float) -> dict[str, Any]:
    """A problem whose solve failed: counted as wrong, retried when the run is resumed."""
    return {
        "seed": seed,
        "problem_id": problem.id,
        "reference": problem.answer,
        "answer": None,
        "correct": False,
        "pass": False,
        "votes": {},
        "vote_correct": {},
        "agreement": 0.0,
        "candidates": 0,
        "judged_candidates": 0,
        "correct_candidates": 0,
        "stopped_early": False,
        "deadline_hit": False,
        "time_s": time_s,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "request_seeds": request_seeds,
        "error": error,
        "responses": [],
    }
