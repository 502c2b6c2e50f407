"""The numbers of a run, from its records.

Per seed: maj@N (the accuracy of the SC-TIR answer, i.e. of the majority vote of the N candidates),
pass@N (some candidate's answer is right), pass@1 (the share of finished candidates that are right,
so the mean single-sample accuracy; candidates cancelled by early stopping or the deadline never
answered and are left out), answered share, agreement, time and tokens. Over seeds: mean and
sample standard deviation (ddof 1; 0 with one seed). Pooled maj: the vote of every seed's
candidates of a problem together (K x N). Agreement (winning votes / valid votes) is averaged
separately over right and wrong answers: a useful confidence signal when right answers agree more.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any

from service.answers import AnswerMode, matches_reference, tally

Record = dict[str, Any]


def spread(values: list[float]) -> dict[str, float]:
    if not values:
        return {"mean": 0.0, "std": 0.0, "min": 0.0, "max": 0.0}
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "min": min(values), "max": max(values)}


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def seed_metrics(records: list[Record]) -> dict[str, Any]:
    n = len(records)
    answered = [r for r in records if r["answer"] is not None]
    times = [r["time_s"] for r in records]
    return {
        "problems": n,
        "correct": sum(r["correct"] for r in records),
        "maj": sum(r["correct"] for r in records) / n if n else 0.0,
        "pass_any": sum(r["pass"] for r in records) / n if n else 0.0,
        "pass_1": statistics.fmean(
            r["correct_candidates"] / judged if (judged := r.get("judged_candidates", r["candidates"])) else 0.0
            for r in records
        )
        if n
        else 0.0,
        "answered": len(answered) / n if n else 0.0,
        "agreement_right": _mean([r["agreement"] for r in answered if r["correct"]]),
        "agreement_wrong": _mean([r["agreement"] for r in answered if not r["correct"]]),
        "time_s_mean": _mean(times),
        "completion_tokens_mean": _mean([r["completion_tokens"] for r in records]),
        "candidates_mean": _mean([r["candidates"] for r in records]),
        "errors": sum(r["error"] is not None for r in records),
        "deadline_hits": sum(r["deadline_hit"] for r in records),
        "stopped_early": sum(r["stopped_early"] for r in records),
    }


def pooled_majority(records: list[Record], mode: AnswerMode) -> dict[str, Any]:
    """Accuracy of one vote over all seeds' candidates of each problem."""
    by_problem: dict[str, list[Record]] = defaultdict(list)
    for record in records:
        by_problem[record["problem_id"]].append(record)
    right = 0
    for group in by_problem.values():
        answers = [
            c["answer"]
            for r in sorted(group, key=lambda r: r["seed"])
            for resp in r["responses"]
            for c in resp["candidates"]
        ]
        winner = tally([(i, a) for i, a in enumerate(answers) if a is not None], mode).winner()
        right += winner is not None and matches_reference(winner.answer, group[0]["reference"], mode)
    return {"problems": len(by_problem), "correct": right, "accuracy": right / len(by_problem) if by_problem else 0.0}


def budget_metrics(records: list[Record], total_s: float) -> dict[str, Any]:
    """How one seed's budget was spent: on problems that reached consensus, and on the rest."""
    spent = [r["budget"]["spent_s"] for r in records]
    settled = [r for r in records if r["budget"]["consensus"]]
    unsettled = [r for r in records if not r["budget"]["consensus"]]
    return {
        "budget_s": total_s,
        "spent_s": sum(spent),
        "unused_s": total_s - sum(spent),
        "consensus_problems": len(settled),
        "consensus_time_s": sum(r["budget"]["spent_s"] for r in settled),
        "consensus_candidates_mean": _mean([r["candidates"] for r in settled]),
        "no_consensus_problems": len(unsettled),
        "no_consensus_time_s": sum(r["budget"]["spent_s"] for r in unsettled),
        "no_consensus_candidates_mean": _mean([r["candidates"] for r in unsettled]),
        "unreached_problems": sum(r["budget"]["rounds"] == 0 for r in records),
        "rounds": dict(sorted(_count(r["budget"]["rounds"] for r in records).items())),
    }


def _count(values) -> dict[int, int]:
    counts: dict[int, int] = defaultdict(int)
    for value in values:
        counts[value] += 1
    return counts


def summarize(records: list[Record], manifest: dict[str, Any]) -> dict[str, Any]:
    mode = AnswerMode(manifest["answer_mode"])
    seeds = sorted({r["seed"] for r in records})
    per_seed = {s: seed_metrics([r for r in records if r["seed"] == s]) for s in seeds}
    answered = [r for r in records if r["answer"] is not None]
    times = sorted(r["time_s"] for r in records)
    summary: dict[str, Any] = {
        "expected": manifest["problems"] * manifest["seeds"],
        "finished": len(records),
        "complete": len(records) == manifest["problems"] * manifest["seeds"],
        "num_samples": manifest["overrides"].get("num_samples") or _typical_candidates(records),
        "maj": spread([m["maj"] for m in per_seed.values()]),
        "pass_any": spread([m["pass_any"] for m in per_seed.values()]),
        "pass_1": spread([m["pass_1"] for m in per_seed.values()]),
        "pooled_maj": pooled_majority(records, mode),
        "agreement_right": _mean([r["agreement"] for r in answered if r["correct"]]),
        "agreement_wrong": _mean([r["agreement"] for r in answered if not r["correct"]]),
        "right_answers": sum(r["correct"] for r in records),
        "wrong_answers": sum(not r["correct"] for r in answered),
        "no_answer": len(records) - len(answered),
        "errors": sum(r["error"] is not None for r in records),
        "time_s": {
            "mean": _mean(times),
            "median": statistics.median(times) if times else None,
            "p90": times[int(0.9 * (len(times) - 1))] if times else None,
            "total": sum(times),
        },
        "tokens": {
            "completion_mean": _mean([r["completion_tokens"] for r in records]),
            "prompt_mean": _mean([r["prompt_tokens"] for r in records]),
            "completion_total": sum(r["completion_tokens"] for r in records),
        },
        "per_seed": per_seed,
    }
    if manifest.get("budget"):
        total = manifest["budget"]["total_s"]
        summary["budget"] = {s: budget_metrics([r for r in records if r["seed"] == s], total) for s in seeds}
    return summary


def _typical_candidates(records: list[Record]) -> int | None:
    counts = _count(r["candidates"] for r in records if r["candidates"])
    return max(counts, key=counts.get) if counts else None
