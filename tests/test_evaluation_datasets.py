"""Validation sets: the local files, the MATH Level 4/5 integer rule, any JSONL file, and the hub path.

The hub path runs the real `datasets.load_dataset` on a local directory laid out like the hub
repositories (AI-MO/aimo-validation-amc's parquet, the MATH split's JSONL), so no network is used.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from service.answers import AnswerMode
from service.evaluation.datasets import SETS, DatasetError, data_dir, load_file, load_set

pytestmark = pytest.mark.data


def need(file_name: str) -> Path:
    path = data_dir() / file_name
    if not path.is_file():
        pytest.skip(f"{path} not found (set SCTIR_DATA_DIR to the folder holding {file_name})")
    return path


@pytest.mark.parametrize(
    ("name", "file_name", "count", "mode", "first_answer"),
    [
        ("aime24", "aime24.jsonl", 30, AnswerMode.INTEGER, "204"),
        ("amc23", "amc23.jsonl", 40, AnswerMode.INTEGER, "27"),  # stored as 27.0
        ("math100", "qwen25math_math100_samples.jsonl", 100, AnswerMode.EXPRESSION, "420"),
    ],
)
def test_local_sets(name: str, file_name: str, count: int, mode: AnswerMode, first_answer: str) -> None:
    need(file_name)
    problem_set = load_set(name)
    assert len(problem_set.problems) == count and problem_set.answer_mode is mode
    assert problem_set.problems[0].answer == first_answer and problem_set.source.endswith(file_name)
    assert len({p.id for p in problem_set.problems}) == count


def test_math_level_4_and_5_integer_subsets() -> None:
    """Our rule (strict) against the winners' 754 / 721, which Python's int() reproduces exactly."""
    need("math_test.jsonl")
    strict = {level: load_set(f"math-l{level}") for level in (4, 5)}
    winners = {level: load_set(f"math-l{level}", integer_rule="python-int") for level in (4, 5)}
    assert [len(strict[level].problems) for level in (4, 5)] == [754, 727]
    assert [len(winners[level].problems) for level in (4, 5)] == [754, 721]
    for level in (4, 5):
        assert all(p.meta["level"] == f"Level {level}" for p in strict[level].problems)
        ours = {p.id: p for p in strict[level].problems}
        theirs = {p.id: p for p in winners[level].problems}
        # int() reads base-b answers as base 10: "2112_6" -> 21126; strict leaves them out
        only_theirs = [theirs[i] for i in theirs.keys() - ours.keys()]
        assert len(only_theirs) == {4: 10, 5: 2}[level]
        math = {json.loads(line)["idx"]: json.loads(line) for line in need("math_test.jsonl").open()}
        assert all("_" in math[int(p.id)]["solution"].rsplit("\\boxed", 1)[1] for p in only_theirs)
        # strict reads MATH's thousands separators, which int() refuses: "771,\!400" -> 771400
        only_ours = [ours[i] for i in ours.keys() - theirs.keys()]
        assert len(only_ours) == {4: 10, 5: 8}[level] and all(int(p.answer) >= 1000 for p in only_ours)


def test_any_jsonl_or_json_file(tmp_path: Path) -> None:
    rows = [
        {"idx": 7, "question": "What is 1+1?", "gt": "2"},
        {"idx": 8, "question": "Half of 1?", "solution": "It is $\\boxed{\\frac{1}{2}}$."},
    ]
    jsonl = tmp_path / "mine.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    mixed = load_set(str(jsonl))
    assert [(p.id, p.answer) for p in mixed.problems] == [("7", "2"), ("8", "\\frac{1}{2}")]
    assert mixed.answer_mode is AnswerMode.EXPRESSION and mixed.name == "mine"
    as_json = tmp_path / "ints.json"
    as_json.write_text(json.dumps([{"problem": "p", "answer": 3.0}, {"problem": "q", "answer": "-4"}]))
    ints = load_file(as_json)
    assert ints.answer_mode is AnswerMode.INTEGER and [p.answer for p in ints.problems] == ["3", "-4"]
    assert [p.id for p in ints.problems] == ["0", "1"]
    assert ints.fingerprint != mixed.fingerprint and ints.head(1).problems == ints.problems[:1]


def test_bad_inputs_say_what_is_wrong(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DatasetError, match="unknown set 'nope'"):
        load_set("nope")
    with pytest.raises(DatasetError, match="file not found"):
        load_set(str(tmp_path / "missing.jsonl"))
    no_answer = tmp_path / "bad.jsonl"
    no_answer.write_text(json.dumps({"problem": "p"}) + "\n")
    with pytest.raises(DatasetError, match="row 0 has no problem"):
        load_file(no_answer)
    monkeypatch.setenv("SCTIR_DATA_DIR", str(tmp_path))
    with pytest.raises(DatasetError, match=r"file not found: .*aime24.jsonl \(set SCTIR_DATA_DIR"):
        load_set("aime24")
    with pytest.raises(DatasetError, match="has no local file"):
        load_set("amc", source="local")
    monkeypatch.setitem(sys.modules, "datasets", None)  # `datasets` not installed
    with pytest.raises(DatasetError, match="needs the `datasets` package"):
        load_set("amc")


@pytest.fixture
def hub_datasets(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    return pytest.importorskip("datasets", reason="the `datasets` package is not installed (pip install datasets)")


def test_hub_path_with_the_real_datasets_library(tmp_path: Path, hub_datasets) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    amc = tmp_path / "aimo-validation-amc" / "data"
    amc.mkdir(parents=True)
    table = pa.table(
        {
            "id": [0, 1],
            "problem": ["Find $x$.", "Find $y$."],
            "answer": [142.0, 7.0],
            "url": ["https://aops/1", "https://aops/2"],
        }
    )
    pq.write_table(table, amc / "train-00000-of-00001.parquet")
    problem_set = load_set("amc", hub_id=str(amc.parent), cache_dir=str(tmp_path / "cache"))
    assert [(p.id, p.answer) for p in problem_set.problems] == [("0", "142"), ("1", "7")]
    assert problem_set.source == f"hub:{amc.parent}@main:train" and problem_set.answer_mode is AnswerMode.INTEGER
    assert problem_set.problems[0].meta == {"url": "https://aops/1"}

    math = tmp_path / "MATH" / "data"
    math.mkdir(parents=True)
    rows = [
        {"problem": "a", "level": "Level 4", "type": "Algebra", "solution": "so $\\boxed{1,\\!000}$"},
        {"problem": "b", "level": "Level 4", "type": "Algebra", "solution": "so $\\boxed{\\frac{1}{2}}$"},
        {"problem": "c", "level": "Level 5", "type": "Algebra", "solution": "so $\\boxed{12}$"},
        {"problem": "d", "level": "Level 4", "type": "Geometry", "solution": "$\\boxed{5}$ or $\\boxed{-3}$"},
    ]
    (math / "test-00000-of-00001.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    level4 = load_set("math-l4", source="hub", hub_id=str(math.parent), cache_dir=str(tmp_path / "cache"))
    assert [(p.problem, p.answer) for p in level4.problems] == [("a", "1000"), ("d", "-3")]
    assert level4.source.endswith(":test")
    generic = load_set(f"hub:{math.parent}:test", cache_dir=str(tmp_path / "cache"))
    assert len(generic.problems) == 4 and generic.answer_mode is AnswerMode.EXPRESSION


def test_every_named_set_says_where_it_comes_from() -> None:
    for name, spec in SETS.items():
        assert spec.local_file or spec.hub_id, name
    assert SETS["amc"].hub_id == "AI-MO/aimo-validation-amc" and SETS["aime"].hub_id == "AI-MO/aimo-validation-aime"
