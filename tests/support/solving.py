"""Scripted solving: a problem, the texts a scripted model writes, a test SolveConfig, a problem-set file.

The doubles of tests/support/doubles.py play these texts; the solver, the sandbox and the
evaluation tests share them so that a scripted candidate means the same everywhere.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from service.answers import AnswerMode
from service.solver import SolveConfig
from service.tir import OUTPUT_MARKER, PROBLEM_PREFIX

PROBLEM = "What is 6 times 7?"


def code(source: str) -> str:
    return f"Let me compute it.\n```python\n{source}\n```\n{OUTPUT_MARKER}"


def boxed(answer: str) -> str:
    return f"So the answer is $\\boxed{{{answer}}}$."


def config(**overrides) -> SolveConfig:
    values = dict(
        num_samples=1, max_new_tokens=256, answer_mode=AnswerMode.AIMO, deadline_s=60.0, seed=1234, early_stop=False
    )
    return SolveConfig(**(values | overrides))


def arithmetic(delay: float = 0.0, delays: dict[str, float] | None = None):
    """Script: step 0 writes code printing the problem's expression; then boxes what it printed."""

    def script(candidate: int, step: int, prompt: str) -> tuple[str, float]:
        problem = prompt.split(PROBLEM_PREFIX, 1)[1].split("\n", 1)[0]
        wait = next((d for key, d in (delays or {}).items() if key in problem), delay)
        if OUTPUT_MARKER not in prompt:
            expression = re.search(r"Compute (.+?)\.", problem)[1]
            return f"We compute.\n```python\nprint({expression})\n```\n{OUTPUT_MARKER}", wait
        value = int(re.findall(r"```output\n(.*?)\n```", prompt)[-1])
        wrong = re.search(r"\[wrong (\d+)\]", problem)
        if wrong and candidate < int(wrong[1]):
            value += 1 + candidate
        return f"So the answer is $\\boxed{{{value}}}$.", wait

    return script


def write_set(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path
