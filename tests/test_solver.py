"""The solver's own logic on scripted engine transcripts, with the real local executor."""

from __future__ import annotations

import random
import time

import pytest

from bench.reference_schedule import solve_with_step_barrier
from sandbox.executors import LocalExecutor
from service.engines.base import EngineError
from service.solver import (
    CandidateStatus,
    ExecutionMode,
    Solver,
    derive_seed,
)
from service.tir import OUTPUT_MARKER, TRUNCATION_SUFFIX
from tests.support.doubles import ScriptedEngine, parse_request_id
from tests.support.solving import PROBLEM, boxed, code, config


@pytest.fixture
async def executor():
    executor = LocalExecutor(timeout_s=5.0, concurrency=2)
    await executor.start()
    yield executor
    await executor.close()


def steps_of(transcripts: dict[int, list[str]], delay: float = 0.0):
    """A script giving candidate i its list of step texts, one per step."""

    def script(candidate: int, step: int, prompt: str) -> tuple[str, float]:
        return transcripts[candidate][step], delay

    return script


async def test_tool_use_then_answer(executor):
    engine = ScriptedEngine(steps_of({0: [code("x = 6*7\nx"), boxed(42)]}))
    result = await Solver(engine, executor).solve(PROBLEM, config(), "r")
    [candidate] = result.candidates
    assert candidate.status is CandidateStatus.ANSWERED
    assert (candidate.steps, candidate.executions, candidate.answer) == (2, 1, "42")
    # the executed output (auto-printed last line) is in the prompt of the next step, block closed
    assert engine.requests[1].prompt.endswith(code("x = 6*7\nx") + "42\n```")  # the reference's: no newline after
    assert engine.requests[1].prompt.startswith("### Problem: What is 6 times 7?\n### Solution: ")
    assert result.answer == "42" and result.votes == {"42": 1} and result.agreement == 1.0


async def test_stop_string_is_the_output_marker_and_seeds_are_per_candidate_and_step(executor):
    engine = ScriptedEngine(steps_of({i: [code("1"), boxed(1)] for i in range(3)}))
    await Solver(engine, executor).solve(PROBLEM, config(num_samples=3), "r")
    assert all(r.params.stop == ("```output\n",) for r in engine.requests)
    seeds = {parse_request_id(r.request_id)[1:]: r.params.seed for r in engine.requests}
    assert len(set(seeds.values())) == len(seeds) == 6
    assert seeds[(2, 1)] == derive_seed(derive_seed(1234, 2), 1)


async def test_output_truncated_exactly_as_the_seed_formats_it(executor):
    engine = ScriptedEngine(steps_of({0: [code("print('a' * 300)"), boxed(1)]}))
    await Solver(engine, executor).solve(PROBLEM, config(), "r")
    assert engine.requests[1].prompt.endswith(OUTPUT_MARKER + "a" * 200 + TRUNCATION_SUFFIX + "\n```")
    assert TRUNCATION_SUFFIX == " ... (output truncated)"


async def test_error_traceback_is_fed_back(executor):
    engine = ScriptedEngine(steps_of({0: [code("1/0"), boxed(1)]}))
    await Solver(engine, executor).solve(PROBLEM, config(), "r")
    feedback = engine.requests[1].prompt.rsplit(OUTPUT_MARKER, 1)[1]
    assert "Traceback" in feedback and feedback.endswith("ZeroDivisionError: division by zero\n```")


async def test_only_the_last_block_runs_with_the_preamble(executor):
    first = "Setup:\n```python\ny = 5\n```\n"
    engine = ScriptedEngine(steps_of({0: [first + code("sp.Integer(2)**10"), boxed(1)]}))
    await Solver(engine, executor).solve(PROBLEM, config(), "r")
    assert engine.requests[1].prompt.endswith("1024\n```")


async def test_no_code_restarts_from_the_prompt(executor):
    engine = ScriptedEngine(steps_of({0: ["I just know it is 42.", code("42"), boxed(42)]}))
    result = await Solver(engine, executor).solve(PROBLEM, config(), "r")
    [candidate] = result.candidates
    assert candidate.status is CandidateStatus.ANSWERED and candidate.restarts == 1
    assert engine.requests[1].prompt == engine.requests[0].prompt  # started over
    assert candidate.text.startswith("Let me compute")


async def test_no_code_is_pruned_without_restarts(executor):
    engine = ScriptedEngine(steps_of({0: ["It is \\boxed{42}."]}))
    result = await Solver(engine, executor).solve(PROBLEM, config(restart_on_fail=False), "r")
    assert result.candidates[0].status is CandidateStatus.PRUNED
    assert result.candidates[0].error == "no_code" and result.answer is None


async def test_answer_without_executed_code_is_hallucination(executor):
    text = "```python\nprint(6*7)\n```\nThis prints 42, so the answer is \\boxed{42}."
    engine = ScriptedEngine(steps_of({0: [text]}))
    result = await Solver(engine, executor).solve(PROBLEM, config(), "r")
    assert result.candidates[0].status is CandidateStatus.PRUNED
    assert result.candidates[0].error == "hallucinated" and len(engine.requests) == 1


async def test_answer_far_from_the_tail_is_not_final(executor):
    long_prose = boxed(7) + " Hmm, wait." + " Let me double check that" * 10
    engine = ScriptedEngine(steps_of({0: [code("1"), long_prose, boxed(8)]}))
    result = await Solver(engine, executor).solve(PROBLEM, config(restart_on_fail=False), "r")
    # the boxed answer is beyond the 100-char tail and there is no output marker: stalled
    assert result.candidates[0].status is CandidateStatus.PRUNED and result.candidates[0].error == "stalled"


async def test_last_step_finishes_without_executing(executor):
    engine = ScriptedEngine(steps_of({0: [code("1"), code("2")]}))
    result = await Solver(engine, executor).solve(PROBLEM, config(max_steps=2), "r")
    [candidate] = result.candidates
    assert candidate.status is CandidateStatus.EXHAUSTED and candidate.executions == 1


async def test_restart_on_the_last_step_is_reported(executor):
    engine = ScriptedEngine(steps_of({0: ["no code", "still none"]}))
    result = await Solver(engine, executor).solve(PROBLEM, config(max_steps=2), "r")
    assert result.candidates[0].status is CandidateStatus.RESTARTED and result.candidates[0].restarts == 2
    assert result.candidates[0].text == "still none"  # the traces show the attempt it gave up on


async def test_aimo_filter_and_majority_vote(executor):
    answers = ["1001", "-5", "12.1", "12.5", "1", "12", "1", r"\frac{6}{2}", r"\sqrt{15}"]
    engine = ScriptedEngine(steps_of({i: [code("0"), boxed(a)] for i, a in enumerate(answers)}))
    result = await Solver(engine, executor).solve(PROBLEM, config(num_samples=len(answers)), "r")
    # the reference's filter: round(float()) (12.5 -> 12), negatives and what float() cannot read dropped
    assert [c.vote for c in result.candidates] == ["1", None, "12", "12", "1", "12", "1", None, None]
    assert list(result.votes.items()) == [("1", 3), ("12", 3)]  # a 3-3 tie: the first seen (candidate 0) wins
    assert result.answer == "1" and result.agreement == pytest.approx(3 / 6)


async def test_tie_break_is_the_lowest_candidate_whatever_finishes_first(executor):
    # candidates 1 and 2 say 5 and finish first; 0 and 3 say 7 and finish last: 7 wins the 2-2 tie
    answers = {0: "7", 1: "5", 2: "5", 3: "7"}

    def script(candidate: int, step: int, prompt: str) -> tuple[str, float]:
        texts = [code("0"), boxed(answers[candidate])]
        return texts[step], 0.3 if candidate in (0, 3) else 0.0

    result = await Solver(ScriptedEngine(script), executor).solve(PROBLEM, config(num_samples=4), "r")
    assert result.votes == {"7": 2, "5": 2} and result.answer == "7"


async def test_same_seed_same_result_different_seed_different_requests(executor):
    def script(candidate: int, step: int, prompt: str) -> tuple[str, float]:
        return [code("0"), boxed(candidate % 3)][step], (candidate % 4) * 0.01

    runs = []
    for seed in (7, 7, 8):
        engine = ScriptedEngine(script)
        result = await Solver(engine, executor).solve(PROBLEM, config(num_samples=6, seed=seed), "r")
        runs.append((result.answer, result.votes, sorted((r.request_id, r.params.seed) for r in engine.requests)))
    assert runs[0] == runs[1]
    assert runs[0][2] != runs[2][2]


async def test_engine_error_fails_one_candidate_only(executor):
    def script(candidate: int, step: int, prompt: str) -> tuple[str, float]:
        if candidate == 1:
            raise EngineError("server said 500")
        return [code("0"), boxed(3)][step], 0.0

    result = await Solver(ScriptedEngine(script), executor).solve(PROBLEM, config(num_samples=3), "r")
    statuses = [c.status for c in result.candidates]
    assert statuses == [CandidateStatus.ANSWERED, CandidateStatus.FAILED, CandidateStatus.ANSWERED]
    assert "server said 500" in result.candidates[1].error and result.answer == "3"


async def test_session_mode_keeps_state_between_blocks(executor):
    transcripts = {0: [code("x = 41"), code("x + 1"), boxed(42)]}
    engine = ScriptedEngine(steps_of(transcripts))
    await Solver(engine, executor).solve(PROBLEM, config(execution_mode=ExecutionMode.SESSION), "r")
    assert engine.requests[2].prompt.endswith("42\n```")
    engine = ScriptedEngine(steps_of(transcripts))
    await Solver(engine, executor).solve(PROBLEM, config(), "r")  # last_block: a fresh namespace
    assert engine.requests[2].prompt.endswith("NameError: name 'x' is not defined\n```")


# --- scheduling: early stop, deadline, no barrier -----------------------------------------


async def test_early_stop_exactly_when_the_leader_is_unbeatable(executor):
    # five candidates all answering 3; 0, 1, 2 finish one after another, 3 and 4 are slow.
    # After 2 votes with 3 running the leader could still lose; after 3 votes with 2 running it cannot.
    delays = {0: 0.0, 1: 0.4, 2: 0.8, 3: 30.0, 4: 30.0}

    def script(candidate: int, step: int, prompt: str) -> tuple[str, float]:
        return [code("3"), boxed(3)][step], delays[candidate] if step == 1 else 0.0

    engine = ScriptedEngine(script)
    result = await Solver(engine, executor).solve(PROBLEM, config(num_samples=5, early_stop=True), "r")
    statuses = [c.status for c in result.candidates]
    assert statuses == [CandidateStatus.ANSWERED] * 3 + [CandidateStatus.CANCELLED] * 2
    assert result.stopped_early and not result.deadline_hit
    assert result.votes == {"3": 3}
    assert sorted(engine.aborted) == ["r-3-1", "r-4-1"] and not engine.running


async def test_cancelled_candidates_let_go_of_their_sandbox_before_the_result(executor):
    """Early stopping cancels two candidates in the middle of a long block: when solve() returns,
    no execution, session or engine step of theirs is still held (the response goes after it)."""

    def script(candidate: int, step: int, prompt: str) -> tuple[str, float]:
        if candidate >= 3:
            return code("import time\ntime.sleep(30)"), 0.0
        return [code("3"), boxed(3)][step], 0.2 * candidate

    engine = ScriptedEngine(script)
    cfg = config(num_samples=5, early_stop=True, execution_mode=ExecutionMode.SESSION)
    result = await Solver(engine, executor).solve(PROBLEM, cfg, "r")
    assert result.stopped_early and [c.status for c in result.candidates][3:] == [CandidateStatus.CANCELLED] * 2
    stats = executor.stats()
    assert (stats["busy"], stats["sessions"], stats["leased"]) == (0, 0, 0), stats
    assert not engine.running


async def test_no_early_stop_while_the_vote_can_still_flip(executor):
    # finishing in index order: after three votes "1" leads 2-1, but candidate 3 can still tie it,
    # and a tie goes to "2", whose first supporter (0) has the lowest index
    answers = {0: "2", 1: "1", 2: "1", 3: "2"}
    engine = ScriptedEngine(lambda c, s, p: ([code("0"), boxed(answers[c])][s], c * 0.05))
    result = await Solver(engine, executor).solve(PROBLEM, config(num_samples=4, early_stop=True), "r")
    assert not result.stopped_early and engine.aborted == []
    assert all(c.status is CandidateStatus.ANSWERED for c in result.candidates)
    assert result.votes == {"2": 2, "1": 2} and result.answer == "2"


async def test_with_early_stopping_the_answer_and_texts_are_the_seeds_but_the_counts_are_timings(executor):
    """What the README promises for a seed: the answer (the one the full vote would give) and every
    finished candidate's text; with early stopping, the vote counts depend on which finished first."""
    answers = {i: "7" if i % 3 else "8" for i in range(12)}  # 8 votes for 7, 4 for 8

    def run_with_timings(timing_seed: int, early_stop: bool):
        delays = random.Random(timing_seed)
        step_delays = {i: delays.uniform(0, 0.3) for i in range(12)}
        engine = ScriptedEngine(lambda c, s, p: ([code(f"{c} + 1"), boxed(answers[c])][s], step_delays[c] * s))
        return Solver(engine, executor).solve(PROBLEM, config(num_samples=12, early_stop=early_stop), "r")

    full = await run_with_timings(0, early_stop=False)
    runs = [await run_with_timings(timing_seed, early_stop=True) for timing_seed in range(1, 5)]
    assert full.answer == "7" and all(run.answer == full.answer for run in runs)
    for run in runs:
        for candidate, unstopped in zip(run.candidates, full.candidates, strict=True):
            if candidate.status is not CandidateStatus.CANCELLED:
                assert candidate.text == unstopped.text
    assert all(run.stopped_early for run in runs)
    assert len({tuple(run.votes.items()) for run in runs}) > 1  # the counts are not the seed's


async def test_deadline_votes_what_finished(executor):
    def script(candidate: int, step: int, prompt: str) -> tuple[str, float]:
        return [code("0"), boxed(9)][step], 60.0 if candidate >= 2 and step == 1 else 0.0

    engine = ScriptedEngine(script)
    started = time.monotonic()
    result = await Solver(engine, executor).solve(PROBLEM, config(num_samples=4, deadline_s=2.0), "r")
    assert time.monotonic() - started < 30  # bounded: the 60 s steps were cut, not awaited
    assert result.deadline_hit and not result.stopped_early
    assert result.answer == "9" and result.votes == {"9": 2}
    assert [c.status for c in result.candidates][2:] == [CandidateStatus.CANCELLED] * 2
    assert sorted(engine.aborted) == ["r-2-1", "r-3-1"] and not engine.running


async def test_async_pipeline_beats_the_step_barrier_on_the_same_transcripts(executor):
    """N=48, M=4: each step has a slow candidate; the barrier waits for it every step."""

    def script(candidate: int, step: int, prompt: str) -> tuple[str, float]:
        if candidate % 8 == 0:  # some use the tool and answer
            texts = ["thinking without code", code(f"{candidate} * 2"), boxed(candidate % 3), ""]
        else:  # the rest never write code: restarted until their steps run out
            texts = ["no code"] * 4
        return texts[step], 2.0 if (candidate + step) % 8 == 0 else 0.02  # one slow step each

    cfg = config(num_samples=48, max_steps=4)
    pipeline_engine, barrier_engine = ScriptedEngine(script), ScriptedEngine(script)
    started = time.monotonic()
    pipelined = await Solver(pipeline_engine, executor).solve(PROBLEM, cfg, "r")
    pipelined_s = time.monotonic() - started
    started = time.monotonic()
    barrier = await solve_with_step_barrier(barrier_engine, executor, PROBLEM, cfg, "r")
    barrier_s = time.monotonic() - started
    assert [c.text for c in pipelined.candidates] == [c.text for c in barrier.candidates]
    assert (pipelined.answer, pipelined.votes) == (barrier.answer, barrier.votes)
    assert sorted(r.request_id for r in pipeline_engine.requests) == sorted(
        r.request_id for r in barrier_engine.requests
    )
    assert pipelined_s < barrier_s, (pipelined_s, barrier_s)
