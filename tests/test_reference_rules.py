"""The reference's rules (the winners' notebook), reproduced: answer reading, voting, step rules.

Each answer tail goes through bench/reference_notebook.py (the notebook's answer path,
transcribed) and through the service's `aimo` mode: the votes must be identical, and
each row also states the vote the notebook gives, so that both cannot be wrong
together. The step-rule tests pin rules 1-5 of the reference (each failed before the
service followed them); the profile tests run one scripted candidate through the
notebook's loop (transcribed) and through the solver, and compare the full text.
"""

from __future__ import annotations

import pytest

from bench.reference_notebook import filter_answers, get_majority_vote, process_answer, run_candidate
from service.answers import AnswerMode, normalize, read_answer, tally
from service.engines.base import ContextExhausted, StepRequest, StepResult
from service.solver import Action, Candidate, CandidateStatus, Profile, Solver
from service.tir import OUTPUT_MARKER, StepOutcome, classify_step
from tests.support.doubles import ScriptedEngine, parse_request_id
from tests.support.solving import config

# More than the 100 characters the notebook reads, with a box of its own: an answer read
# anywhere but in the tail would be 999.
EARLIER = "We found \\boxed{999} too early. " + "Checking the computation once more, line by line. " * 3

TAILS = [
    ("The answer is $\\boxed{42}$.", 42),
    ("Therefore the answer is 5", 5),  # no box in the tail: the tail itself, not the earlier box
    ("so the answer is\n\n$5$", 5),
    ("The final answer is 17.", 17),
    ("The answer is: 8", 8),
    ("So the answer is $\\boxed{7}$ and not 5.", 7),
    ("$\\boxed{2.5}$", 2),  # Python's round(): half to even
    ("$\\boxed{3.5}$", 4),
    ("$\\boxed{4.5}$", 4),
    ("$\\boxed{3.3}$", 3),
    ("$\\boxed{0.4}$", 0),
    ("$\\boxed{-0.4}$", 0),  # rounds to 0 before the sign test
    ("$\\boxed{1001}$", 1),
    ("$\\boxed{2024}$", 24),
    ("$\\boxed{1000000}$", 0),
    ("$\\boxed{0}$", 0),
    ("$\\boxed{999}$", 999),
    ("$\\boxed{-5}$", None),
    ("$\\boxed{\\frac{6}{2}}$", None),  # float() cannot read LaTeX
    ("$\\boxed{2^{10}}$", None),
    ("$\\boxed{\\sqrt{15}}$", None),
    ("$\\boxed{2\\sqrt{2}}$", None),
    ("$\\boxed{7/2}$", None),
    ("$\\boxed{x = 5}$", None),
    ("$\\boxed{1,000}$", 0),
    ("$\\boxed{3,5}$", 35),  # commas go when the rest is digits
    ("$\\boxed{1{,}024}$", 24),
    ("$\\boxed{12\\,345}$", None),
    ("$\\boxed{12 \\text{ ways}}$", 12),
    ("$\\boxed{10\\text{ cm}}$", 10),
    ("$\\boxed{30^\\circ}$", 30),
    ("$\\boxed{45^{\\circ}}$", 45),
    ("$\\boxed{50\\%}$", 50),
    ("$\\boxed{\\text{5}}$", 5),
    ("$\\boxed{\\textbf{6}}$", 6),
    ("$\\boxed{\\overline{7}}$", 7),
    ("$\\boxed{\\boxed{9}}$", 9),
    ("$\\boxed{ 13 }$", 13),
    ("$\\boxed{13.}$", 13),
    ("$\\boxed{1e3}$", 0),
    ("$\\boxed{inf}$", None),
    ("$\\boxed{nan}$", None),
    ("The answer is $\\boxed{5", None),  # an unclosed box: the notebook's "-1"
    ("The answer is \\fbox{5}", None),
    ("the answer is 12 units", 12),
    ("the answer is 12 apples", None),
    ("$\\boxed{7}$ dollars", 7),
    ("The answer is 7. Problem: what is 9?", 7),
]


@pytest.mark.parametrize(("tail", "vote"), TAILS, ids=[repr(t)[:40] for t, _ in TAILS])
def test_aimo_votes_as_the_reference(tail: str, vote: int | None) -> None:
    text = EARLIER + tail
    reference = filter_answers([process_answer(text)])
    ours = normalize(answer, AnswerMode.AIMO) if (answer := read_answer(text, AnswerMode.AIMO)) else None
    assert reference == ([] if vote is None else [vote])
    assert ours == (None if vote is None else str(vote))


def test_the_vote_of_many_tails_is_the_reference_majority() -> None:
    texts = [EARLIER + tail for tail, _ in TAILS]
    reference = get_majority_vote(filter_answers([process_answer(text) for text in texts]))
    ballot = tally(enumerate(read_answer(text, AnswerMode.AIMO) or "" for text in texts), AnswerMode.AIMO)
    assert ballot.winner().answer == str(reference) == "0"  # 0 and 7 have four votes each; 0 comes first


def test_integer_mode_parses_what_aimo_drops() -> None:
    assert normalize("\\frac{6}{2}", AnswerMode.INTEGER) == "3"
    assert normalize("\\sqrt{15}", AnswerMode.INTEGER) is None
    assert normalize("2.5", AnswerMode.INTEGER) is None


# -- the step rules --------------------------------------------------------------------------------


CODE = "Compute:\n```python\nprint(6 * 7)\n```\n" + OUTPUT_MARKER


def executed(candidate: Candidate) -> Candidate:
    """A candidate after one executed block (its text ends with the service's closing fence)."""
    assert candidate.after_step(CODE, config()) is Action.EXECUTE
    candidate.after_execution("42", config())
    return candidate


def test_rule_1_the_last_step_reads_no_answer_outside_the_tail() -> None:
    candidate = executed(Candidate(0, 1))
    candidate.steps = config().max_steps  # the last step
    cut = "\nThe result is $\\boxed{42}$, which we now verify at length. " + "More words without a conclusion. " * 4
    assert candidate.after_step(cut, config()) is Action.DONE
    assert (candidate.status, candidate.answer) == (CandidateStatus.EXHAUSTED, None)


def test_rule_1_an_open_output_block_on_the_last_step_is_no_answer() -> None:
    candidate = executed(Candidate(0, 1))
    candidate.steps = config().max_steps
    assert candidate.after_step("\nSo the answer is \\boxed{42}.\n```python\nprint(1)\n```\n" + OUTPUT_MARKER, config())
    assert (candidate.status, candidate.answer) == (CandidateStatus.EXHAUSTED, None)


def test_rule_2_the_answer_comes_from_the_tail() -> None:
    candidate = executed(Candidate(0, 1))
    step = (
        "\nA first guess was $\\boxed{7}$. " + "Then we checked every case again, carefully. " * 3 + "The answer is 5"
    )
    assert candidate.after_step(step, config()) is Action.DONE
    assert (candidate.status, candidate.answer) == (CandidateStatus.ANSWERED, "5")


def test_rule_3_an_unclosed_python_block_is_no_code() -> None:
    text = "Let us try.\n```python\nprint(6 * 7)\nThe answer is \\boxed{42}."
    assert classify_step(text, executed_before=False, last_step=False) is StepOutcome.NO_CODE
    candidate = Candidate(0, 1)
    assert candidate.after_step(text, config()) is Action.GENERATE  # restarted, not pruned as hallucinated
    assert (candidate.text, candidate.restarts) == ("", 1)


def test_rule_4_the_output_block_ends_at_its_fence() -> None:
    candidate = executed(Candidate(0, 1))
    assert candidate.text == CODE + "42\n```"


async def test_rule_5_a_prompt_past_the_context_is_an_empty_step() -> None:
    class Overflowing(ScriptedEngine):
        async def complete(self, request: StepRequest) -> StepResult:
            if parse_request_id(request.request_id)[2] == 1:
                self.requests.append(request)
                raise ContextExhausted("This model's maximum context length is 2048 tokens.")
            return await super().complete(request)

    engine = Overflowing(lambda candidate, step, prompt: (CODE, 0.0))
    result = await Solver(engine, _NoExecutor()).solve("6 times 7?", config(max_steps=3), "r")
    [candidate] = result.candidates
    # step 0 executed; step 1 overflowed: empty, so the text ends at the fence -> restarted (not failed);
    # step 2, the last, wrote code again and has no answer in its tail
    assert (candidate.status, candidate.restarts, candidate.steps, candidate.executions) == (
        CandidateStatus.EXHAUSTED,
        1,
        3,
        1,
    )


# -- the reference profile: one candidate through the notebook's loop and through the solver -------------

CHECKED_TWICE = [
    CODE,
    "\nSo the answer is $\\boxed{42}$.",  # answered: the notebook keeps generating it
    " Let me double-check.\n```python\nprint(6 * 7)\n```\n" + OUTPUT_MARKER,
    "\nConfirmed: the answer is $\\boxed{42}$.",
]
ANSWER_KEPT_THROUGH_A_RESTART = [
    CODE,
    "\nSo the answer is $\\boxed{41}$.",
    "\nWait, let me reconsider this very carefully." * 3,  # no answer in the tail, no code: restart
    "Again:\n```python\nprint(6 * 7)\n```\n",  # the last step: no answer; the notebook keeps 41
]


@pytest.mark.parametrize("steps", [CHECKED_TWICE, ANSWER_KEPT_THROUGH_A_RESTART], ids=["checked-twice", "restart"])
async def test_the_reference_profile_writes_the_notebooks_text(steps: list[str]) -> None:
    prompt = ScriptedEngine(lambda *_: ("", 0.0)).format_prompt("6 times 7?")
    notebook = run_candidate(prompt, lambda step, _: steps[step], lambda _: "42", num_generations=len(steps))
    engine = ScriptedEngine(lambda candidate, step, _: (steps[step], 0.0))
    reference = config(max_steps=len(steps), profile=Profile.REFERENCE)
    [candidate] = (await Solver(engine, _NoExecutor()).solve("6 times 7?", reference, "r")).candidates
    assert prompt + candidate.text == notebook["gen_texts"]
    assert candidate.answer == notebook["model_answers"] != "-1"
    # the service's own profile finishes the candidate at its first answer
    [own] = (await Solver(engine, _NoExecutor()).solve("6 times 7?", config(max_steps=len(steps)), "r")).candidates
    assert own.text == CODE + "42\n```" + steps[1] and own.steps == 2


class _NoExecutor:
    """Every block prints 42: these tests are about the step rules, not the sandbox."""

    async def execute(self, code: str, session_id: str | None = None, tenant: str | None = None):
        from sandbox.execution import ExecutionResult, ExecutionStatus

        return ExecutionResult(ExecutionStatus.OK, "42\n", "", 0.0)

    async def close_session(self, session_id: str) -> None:
        pass

    async def release(self, tenant: str) -> None:
        pass
