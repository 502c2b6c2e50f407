"""Scoring, records, metrics over seeds and the report artifacts, on hand-made responses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.answers import AnswerMode, matches_reference
from service.evaluation.datasets import Problem
from service.evaluation.metrics import spread, summarize
from service.evaluation.report import write_report
from service.evaluation.scoring import error_record, make_record, request_seed
from service.evaluation.store import RunStore
from service.schemas import CandidateSummary, SolveResponse, Timings, Usage
from service.solver import CandidateStatus

INTEGER, EXPRESSION, AIMO = AnswerMode.INTEGER, AnswerMode.EXPRESSION, AnswerMode.AIMO


def response(answers: list[str | None], votes: dict[str, int], mode: AnswerMode = INTEGER, total_s=2.0):
    """A SolveResponse as the service returns it (the vote is the server's)."""
    answered = sum(votes.values())
    winner = next(iter(votes), None)
    candidates = [
        CandidateSummary(
            index=i,
            status=CandidateStatus.ANSWERED if a else CandidateStatus.EXHAUSTED,
            steps=2,
            restarts=0,
            executions=1,
            answer=a,
            vote=a,
            error=None,
            prompt_tokens=10,
            completion_tokens=30,
        )
        for i, a in enumerate(answers)
    ]
    return SolveResponse(
        request_id="r",
        answer=winner,
        votes=votes,
        agreement=votes[winner] / answered if winner else 0.0,
        answer_mode=mode,
        seed=1,
        stopped_early=False,
        deadline_hit=False,
        candidates=candidates,
        timings=Timings(total_s=total_s, queue_s=0.0, generation_s=1.0, execution_s=0.5),
        usage=Usage(prompt_tokens=10 * len(answers), completion_tokens=30 * len(answers)),
    )


def test_correctness_uses_the_vote_equivalence_of_each_mode() -> None:
    assert matches_reference("\\frac{1}{2}", "0.5", EXPRESSION) and matches_reference(
        "1/2", "\\dfrac{1}{2}", EXPRESSION
    )
    assert not matches_reference("\\frac{1}{3}", "0.5", EXPRESSION) and not matches_reference(None, "1", EXPRESSION)
    assert (
        matches_reference("27", "27.0", INTEGER)
        and matches_reference("025", "25", INTEGER)
        and not matches_reference("2.5", "2", INTEGER)
    )
    assert matches_reference("1204", "204", AIMO)  # mod 1000, the competition's rule
    assert not matches_reference("-4", "-4", AIMO)  # negative answers are invalid in aimo mode


def test_a_record_keeps_the_servers_vote_and_judges_every_class() -> None:
    problem = Problem("p", "Compute.", "10")
    record = make_record(problem, 0, [7], [response(["11", "10", "11", None], {"11": 2, "10": 1})], INTEGER)
    assert record["answer"] == "11" and not record["correct"] and record["pass"]
    assert record["vote_correct"] == {"11": False, "10": True}
    assert record["candidates"] == 4 and record["correct_candidates"] == 1
    assert record["agreement"] == pytest.approx(2 / 3) and record["completion_tokens"] == 120
    json.dumps(record)  # it is stored as one JSON line


def test_rounds_are_one_vote_over_all_their_candidates() -> None:
    problem = Problem("p", "Half?", "1/2")
    rounds = [
        response(["0.5", "1/3"], {"0.5": 1, "1/3": 1}, EXPRESSION),
        response(["\\frac{1}{2}", "1/4"], {"\\frac{1}{2}": 1, "1/4": 1}, EXPRESSION),
    ]
    record = make_record(problem, 0, [1, 2], rounds, EXPRESSION)
    assert record["votes"] == {"0.5": 2, "1/3": 1, "1/4": 1} and record["answer"] == "0.5"
    assert record["correct"] and record["correct_candidates"] == 2 and record["candidates"] == 4
    assert record["time_s"] == 4.0 and record["request_seeds"] == [1, 2]


def test_request_seeds_differ_per_seed_problem_and_round() -> None:
    seeds = {request_seed(s, p, r) for s in range(3) for p in ("a", "b") for r in range(2)}
    assert len(seeds) == 12 and request_seed(0, "a") == request_seed(0, "a", 0)


def records_of_three_seeds() -> list[dict]:
    """Two problems, three seeds: problem a right in seeds 0 and 1, problem b never (once unsolved)."""
    a, b = Problem("a", "A", "5"), Problem("b", "B", "7")
    return [
        make_record(a, 0, [1], [response(["5", "5", "5", "6"], {"5": 3, "6": 1})], INTEGER),
        make_record(b, 0, [2], [response(["8", "8", "7", "9"], {"8": 2, "7": 1, "9": 1})], INTEGER),
        make_record(a, 1, [3], [response(["5", "6", "5", "5"], {"5": 3, "6": 1})], INTEGER),
        make_record(b, 1, [4], [response(["9", "9", "8", "9"], {"9": 3, "8": 1})], INTEGER),
        make_record(a, 2, [5], [response(["6", "6", "5", "6"], {"6": 3, "5": 1})], INTEGER),
        error_record(b, 2, [6], "HTTP 503: every candidate failed", 0.5),
    ]


def test_metrics_over_seeds() -> None:
    manifest = {"problems": 2, "seeds": 3, "answer_mode": "integer", "overrides": {"num_samples": 4}}
    summary = summarize(records_of_three_seeds(), manifest)
    assert summary["complete"] and summary["num_samples"] == 4
    assert summary["maj"] == spread([0.5, 0.5, 0.0])
    assert summary["maj"]["std"] == pytest.approx(0.288675, abs=1e-6)  # sample std of 0.5, 0.5, 0
    assert summary["pass_any"]["mean"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert summary["pass_1"]["mean"] == pytest.approx(((0.75 + 0.25) / 2 + 0.75 / 2 + 0.25 / 2) / 3)
    # pooled: a gets 5,5,5,6,5,6,5,5,6,6,5,6 -> 5 (7 of 12); b gets 8,8,7,9,9,9,8,9 -> 9
    assert summary["pooled_maj"] == {"problems": 2, "correct": 1, "accuracy": 0.5}
    assert summary["agreement_right"] == 0.75 and summary["agreement_wrong"] == pytest.approx((0.5 + 0.75 + 0.75) / 3)
    assert (summary["right_answers"], summary["wrong_answers"], summary["no_answer"], summary["errors"]) == (2, 3, 1, 1)
    assert summary["per_seed"][2]["errors"] == 1 and summary["time_s"]["total"] == pytest.approx(10.5)
    assert summary["tokens"]["completion_mean"] == pytest.approx(120 * 5 / 6)


def test_report_artifacts_of_a_partial_run(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    manifest = {
        "set": "toy",
        "source": "toy.jsonl",
        "fingerprint": "f",
        "problems": 2,
        "seeds": 4,
        "answer_mode": "integer",
        "overrides": {"num_samples": 4},
        "budget": None,
    }
    store.open(manifest)
    for record in records_of_three_seeds():
        store.append(record)
    paths = write_report(store, ["a", "b"])
    report = json.loads(paths["json"].read_text())
    assert not report["summary"]["complete"] and len(report["records"]) == 6
    assert [(r["seed"], r["problem_id"]) for r in report["records"]][:2] == [(0, "a"), (0, "b")]
    text = paths["markdown"].read_text()
    assert "**incomplete**" in text and "| maj@4 (accuracy) | 33.3% | 28.9% | 0.0% | 50.0% |" in text
    assert "Pooled maj@4x3" in text and "right in some seeds only: 1 (`a`)" in text and "never right: 1 (`b`)" in text
    assert paths["png"].read_bytes().startswith(b"\x89PNG")


def test_pass_at_1_leaves_out_candidates_cancelled_by_early_stopping() -> None:
    """Early stopping cancelled half the candidates of a unanimous vote: every finished one is right."""
    stopped = response(["5", "5", None, None], {"5": 2})
    for candidate in stopped.candidates[2:]:
        candidate.status = CandidateStatus.CANCELLED
    record = make_record(Problem("a", "A", "5"), 0, [1], [stopped], INTEGER)
    assert (record["candidates"], record["judged_candidates"], record["correct_candidates"]) == (4, 2, 2)
    summary = summarize([record], {"problems": 1, "seeds": 1, "answer_mode": "integer", "overrides": {}})
    assert summary["maj"]["mean"] == 1.0 and summary["pass_1"]["mean"] == 1.0
