"""Our extraction and vote on real model samples agree with the toolkit that recorded them.

../shared/data/qwen25math_math100_samples.jsonl: 100 MATH problems, 8 sampled chain-of-thought
solutions each, with Qwen2.5-Math's extracted answers (`pred`) and per-sample scores (`score`).
"""

from __future__ import annotations

import pytest

from service.answers import AnswerMode, matches_reference
from service.evaluation.datasets import data_dir
from service.evaluation.recorded import replay

pytestmark = pytest.mark.data
FILE = "qwen25math_math100_samples.jsonl"


def test_maj_at_8_and_per_sample_correctness_match_the_recording_toolkit() -> None:
    path = data_dir() / FILE
    if not path.is_file():
        pytest.skip(f"{path} not found (set SCTIR_DATA_DIR to the folder holding {FILE})")
    result = replay(path, k=8)
    assert (result.problems, result.samples) == (100, 800)
    assert abs(result.our_maj - result.toolkit_maj) <= 1, (result.our_maj, result.toolkit_maj)
    assert result.agreement >= 0.97, result.disagreements
    assert result.our_pass >= result.our_maj
    for d in result.disagreements:
        print(
            f"problem {d.problem} sample {d.sample}: reference {d.reference!r}, toolkit {d.toolkit_pred!r} "
            f"-> {d.toolkit_correct}; ours {d.our_answer!r} -> {d.our_correct} ({d.kind})"
        )


def test_the_known_disagreement_is_the_toolkit_missing_a_thousands_separator() -> None:
    """Problem 72: the reference is "10{,}000"; the toolkit scored the sample answering 10000 wrong."""
    assert matches_reference("10000", "10{,}000", AnswerMode.EXPRESSION)
    assert matches_reference("10000", "10{,}000", AnswerMode.INTEGER)
    assert not matches_reference("9999", "10{,}000", AnswerMode.EXPRESSION)
