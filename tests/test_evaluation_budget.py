"""The budgeted mode: never over its budget, and more candidates where the vote has no consensus.

The scripted model's steps take known times per problem (tests/test_evaluation_harness.arithmetic);
the solver and the LocalExecutor are real, so the wall clock measured here is the real one.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from sandbox.executors import LocalExecutor
from service.evaluation.backends import InProcessBackend
from service.evaluation.budget import BudgetPolicy
from service.evaluation.datasets import load_file
from service.evaluation.harness import EvalConfig, manifest, run_eval
from service.evaluation.metrics import summarize
from service.evaluation.report import markdown
from service.evaluation.store import RunStore
from service.settings import Settings
from tests.support.doubles import ScriptedEngine
from tests.support.solving import arithmetic, write_set

EASY = "Compute 6*7."  # the candidates agree
HARD = "Compute 2+3. [wrong 1]"  # two candidates, two answers (6 and 5): never a consensus


async def budgeted_run(tmp_path: Path, rows: list[dict], policy: BudgetPolicy, delays: dict[str, float]):
    problem_set = load_file(write_set(tmp_path / "set.jsonl", rows))
    config = EvalConfig(seeds=1, overrides={"num_samples": 2, "max_steps": 3}, budget=policy)
    store = RunStore(tmp_path / "run")
    store.open(manifest(problem_set, config))
    engine = ScriptedEngine(arithmetic(delays=delays))
    backend = InProcessBackend(Settings(early_stop=False), engine, LocalExecutor(concurrency=2))
    await backend.start()
    try:
        started = time.monotonic()
        await run_eval(problem_set, backend, store, config)
        wall = time.monotonic() - started
    finally:
        await backend.close()
    records = [store.records[(0, p.id)] for p in problem_set.problems]
    return wall, records, summarize(records, store.manifest()), store


async def test_consensus_gives_its_time_to_the_problems_without(tmp_path: Path) -> None:
    rows = [
        {"id": "easy1", "problem": EASY, "answer": "42"},
        {"id": "hard", "problem": HARD, "answer": "5"},
        {"id": "easy2", "problem": EASY.replace("6", "8"), "answer": "56"},
    ]
    policy = BudgetPolicy(total_s=20.0, max_rounds=2)
    wall, (easy1, hard, easy2), summary, store = await budgeted_run(
        tmp_path, rows, policy, delays={"6*7": 0.02, "8*7": 0.02, "2+3": 0.1}
    )
    assert wall <= policy.total_s
    for easy in (easy1, easy2):
        assert easy["budget"]["consensus"] and easy["budget"]["rounds"] == 1 and easy["correct"]
        assert easy["budget"]["spent_s"] < easy["budget"]["fair_s"]  # done early: the rest goes on
    assert not hard["budget"]["consensus"] and hard["budget"]["rounds"] == 2 and hard["candidates"] == 4
    assert hard["budget"]["stopped"] == "max_rounds" and len(set(hard["request_seeds"])) == 2
    assert hard["budget"]["fair_s"] > policy.total_s / 3  # the easy problem's unused time
    assert hard["votes"] == {"6": 2, "5": 2} and hard["pass"] and not hard["correct"]  # one vote, both rounds
    spent = summary["budget"][0]
    assert spent["spent_s"] <= policy.total_s and spent["unused_s"] == pytest.approx(policy.total_s - spent["spent_s"])
    assert spent["no_consensus_candidates_mean"] == 4 > spent["consensus_candidates_mean"] == 2
    assert spent["rounds"] == {1: 2, 2: 1}
    text = markdown(store.manifest(), summary, [easy1, hard, easy2])
    assert "## Budget" in text and "| 0 | hard |" in text and "max_rounds" in text


async def test_slow_problems_never_exceed_the_budget(tmp_path: Path) -> None:
    """Steps of 5 s against a 1.5 s budget for 3 problems: deadlines cut, the last is not reached."""
    rows = [{"id": f"slow{i}", "problem": f"Compute {i}+1.", "answer": str(i + 1)} for i in range(3)]
    policy = BudgetPolicy(total_s=1.5)
    wall, records, summary, _ = await budgeted_run(tmp_path, rows, policy, delays={"+1": 5.0})
    assert wall <= policy.total_s
    assert sum(r["budget"]["spent_s"] for r in records) <= policy.total_s
    assert records[0]["deadline_hit"] and records[0]["answer"] is None
    assert records[0]["budget"]["cap_s"] <= 2 * (policy.total_s / 3)  # at most `stretch` fair shares
    assert records[-1]["budget"]["rounds"] == 0 and records[-1]["budget"]["stopped"] == "no time left"
    assert summary["budget"][0]["unreached_problems"] >= 1


async def test_a_resumed_budget_counts_the_time_already_spent(tmp_path: Path) -> None:
    rows = [{"id": "easy", "problem": EASY, "answer": "42"}, {"id": "slow", "problem": "Compute 1+1.", "answer": "2"}]
    policy = BudgetPolicy(total_s=1.5, margin_s=0.05, min_round_s=0.2)
    problem_set = load_file(write_set(tmp_path / "set.jsonl", rows))
    config = EvalConfig(seeds=1, overrides={"num_samples": 2, "max_steps": 3}, budget=policy)
    store = RunStore(tmp_path / "run")
    store.open(manifest(problem_set, config))
    store.append({"seed": 0, "problem_id": "easy", "error": None, "budget": {"spent_s": 1.4}})  # from before
    engine = ScriptedEngine(arithmetic(delays={"1+1": 0.05}))
    backend = InProcessBackend(Settings(), engine, LocalExecutor(concurrency=2))
    await backend.start()
    try:
        await run_eval(problem_set, backend, store, config)
    finally:
        await backend.close()
    slow = store.records[(0, "slow")]
    assert slow["budget"]["rounds"] == 0 and not engine.requests  # 0.05 s left: below a round's minimum


def test_policy_validates_and_scales_its_margins() -> None:
    with pytest.raises(ValueError):
        BudgetPolicy(total_s=0)
    with pytest.raises(ValueError):
        BudgetPolicy(total_s=10, consensus=1.5)
    aimo = BudgetPolicy(total_s=9 * 3600)
    assert aimo.margin == 2.0 and aimo.min_round == pytest.approx(64.8)
    small = BudgetPolicy(total_s=2.0)
    assert small.margin == 0.05 and small.min_round == 0.2
