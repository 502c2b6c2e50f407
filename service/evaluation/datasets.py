"""Validation sets: the winners' four (AMC, AIME, MATH Level 4 and 5 with integer answers) and more.

A set comes from the Hugging Face hub by name (what users do: `datasets` is imported only then),
from a local JSONL file of the same content (SCTIR_DATA_DIR, ../shared/data in this repository's
environment), or from any JSONL / JSON file a user points at. Every row becomes a `Problem` with a
reference answer; the answer mode to score it in is the set's default unless the caller says.

MATH Level 4/5 integer subsets. The reference answer is the content of the last \\boxed{} (or
\\fbox{}) of the reference solution. Rule `strict` (the default) keeps a problem when that content
is a base-10 integer literal: an optional minus sign and digits, with MATH's thousands separators
allowed between groups of three (1,\\!000 / 1{,}000), nothing else: no units, $, degrees, percent or
base subscripts, and no plain comma, which in MATH also separates several answers ("70,110" is two
angles; so the one "15,600" is left out too). It keeps 754 (Level 4) and 727 (Level 5).
Rule `python-int` keeps a problem when Python's int() accepts the content: exactly the winners'
754 and 721, because int() also reads base-b answers such as "2112_6" as the base-10 integer
21126 (underscores are digit separators), so 12 of those problems carry a wrong reference.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.answers import AnswerMode, extract_boxed

PROBLEM_KEYS = ("problem", "question", "Problem", "Question")
ANSWER_KEYS = ("answer", "gt", "final_answer", "expected_answer", "Answer")
SOLUTION_KEYS = ("solution", "gt_cot", "Solution")
ID_KEYS = ("id", "idx", "unique_id", "problem_id")
MATH_HUB_ID = "DigitalLearningGmbH/MATH-lighteval"  # the MATH test split (5000), fields as in MATH

_INTEGER_LITERAL = re.compile(r"-?(?:\d{1,3}(?:(?:,\\!|\{,\})\d{3})+|\d+)")


def _strict_integer(boxed: str) -> str | None:
    text = boxed.strip()
    if not _INTEGER_LITERAL.fullmatch(text):
        return None
    return str(int(re.sub(r"[^\d-]", "", text)))


def _python_int(boxed: str) -> str | None:
    try:
        return str(int(boxed))
    except ValueError:
        return None


INTEGER_RULES: dict[str, Callable[[str], str | None]] = {"strict": _strict_integer, "python-int": _python_int}


@dataclass(frozen=True)
class Problem:
    id: str
    problem: str
    answer: str  # the reference answer, as text
    meta: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class ProblemSet:
    name: str
    source: str  # a file path or "hub:<id>@<revision>:<split>"
    answer_mode: AnswerMode  # the mode its reference answers are meant to be scored in
    problems: list[Problem]

    @property
    def fingerprint(self) -> str:
        """Changes whenever a problem's id, statement or answer does (guards a resumed run)."""
        digest = hashlib.sha256()
        for p in self.problems:
            digest.update(json.dumps([p.id, p.problem, p.answer]).encode())
        return digest.hexdigest()[:16]

    def head(self, limit: int | None) -> ProblemSet:
        if limit is None:
            return self
        return ProblemSet(self.name, self.source, self.answer_mode, self.problems[:limit])


@dataclass(frozen=True)
class SetSpec:
    """A named set: where it lives and how its rows become problems."""

    description: str
    answer_mode: AnswerMode
    local_file: str | None = None  # a file name in the data directory
    hub_id: str | None = None
    hub_split: str = "train"
    level: str | None = None  # MATH: keep this level only, with integer reference answers

    def keep(self, row: Mapping[str, Any]) -> bool:
        return self.level is None or _level(row) == self.level


SETS: dict[str, SetSpec] = {
    "amc": SetSpec(
        "AMC 12 2022-2023, 83 problems (the winners' AMC set)", AnswerMode.INTEGER, hub_id="AI-MO/aimo-validation-amc"
    ),
    "aime": SetSpec(
        "AIME 2022-2024, 90 problems (the winners' AIME set)", AnswerMode.INTEGER, hub_id="AI-MO/aimo-validation-aime"
    ),
    "math-l4": SetSpec(
        "MATH test, Level 4, integer answers", AnswerMode.INTEGER, "math_test.jsonl", MATH_HUB_ID, "test", level="4"
    ),
    "math-l5": SetSpec(
        "MATH test, Level 5, integer answers", AnswerMode.INTEGER, "math_test.jsonl", MATH_HUB_ID, "test", level="5"
    ),
    "aime24": SetSpec("AIME 2024, 30 problems (local file)", AnswerMode.INTEGER, "aime24.jsonl"),
    "amc23": SetSpec("AMC 12 2023, 40 problems (local file)", AnswerMode.INTEGER, "amc23.jsonl"),
    "math100": SetSpec(
        "100 MATH test problems, any answer form (local file)",
        AnswerMode.EXPRESSION,
        "qwen25math_math100_samples.jsonl",
    ),
}


class DatasetError(RuntimeError):
    """A set cannot be loaded; the message says which file or hub id and why."""


def data_dir() -> Path:
    """SCTIR_DATA_DIR, else ../shared/data next to this repository."""
    folder = os.environ.get("SCTIR_DATA_DIR")
    return Path(folder) if folder else Path(__file__).resolve().parents[3] / "shared" / "data"


def load_set(
    name: str,
    *,
    source: str = "auto",
    integer_rule: str = "strict",
    hub_id: str | None = None,
    revision: str | None = None,
    cache_dir: str | None = None,
) -> ProblemSet:
    """A named set (see SETS), a hub set as "hub:OWNER/NAME[:SPLIT]", or a JSONL / JSON file.

    source: "local" (the data directory's file), "hub", or "auto" (local when the file is
    there and no hub_id is given, else the hub). hub_id / revision override a named set's hub
    location (a hub id, or a local directory laid out like one)."""
    if name.startswith("hub:"):
        ident, _, split = name[4:].partition(":")
        spec = SetSpec(f"hub set {ident}", AnswerMode.EXPRESSION, hub_id=ident, hub_split=split or "train")
        return _from_hub(name, spec, ident, revision, integer_rule, cache_dir, infer_mode=True)
    if name not in SETS:
        path = Path(name)
        if path.suffix in (".jsonl", ".json") or path.exists():
            return load_file(path)
        raise DatasetError(f"unknown set {name!r}: use one of {', '.join(SETS)}, hub:OWNER/NAME, or a .jsonl file")
    spec = SETS[name]
    local = data_dir() / spec.local_file if spec.local_file else None
    if source not in ("auto", "local", "hub"):
        raise DatasetError(f"source must be auto, local or hub, not {source!r}")
    use_local = local is not None and (source == "local" or (source == "auto" and not hub_id and local.is_file()))
    if source == "local" and local is None:
        raise DatasetError(f"set {name!r} has no local file; it comes from the hub ({spec.hub_id})")
    if use_local:
        if not local.is_file():
            raise DatasetError(f"file not found: {local} (set SCTIR_DATA_DIR to the folder holding it)")
        return _build(name, str(local), spec, _read_json_rows(local), integer_rule)
    ident = hub_id or spec.hub_id
    if ident is None:
        raise DatasetError(f"file not found: {local} (set SCTIR_DATA_DIR); set {name!r} is not on the hub")
    return _from_hub(name, spec, ident, revision, integer_rule, cache_dir)


def load_file(path: Path) -> ProblemSet:
    """Any JSONL (one object a line) or JSON (a list of objects) with a problem and an answer
    (or a solution whose last \\boxed{} is the answer). Integer mode when every answer is one."""
    if not path.is_file():
        raise DatasetError(f"file not found: {path}")
    spec = SetSpec(f"file {path}", AnswerMode.EXPRESSION)
    return _build(path.stem, str(path), spec, _read_json_rows(path), "strict", infer_mode=True)


def _from_hub(name, spec, ident, revision, integer_rule, cache_dir, infer_mode=False) -> ProblemSet:
    try:
        import datasets  # lazily: only users of the hub need it
    except ImportError:
        raise DatasetError(f"loading {ident} from the hub needs the `datasets` package: pip install datasets") from None
    try:
        rows = datasets.load_dataset(ident, split=spec.hub_split, revision=revision, cache_dir=cache_dir)
    except Exception as error:  # network, auth, missing split: say which set
        raise DatasetError(f"cannot load {ident} (split {spec.hub_split}) from the hub: {error}") from error
    source = f"hub:{ident}@{revision or 'main'}:{spec.hub_split}"
    return _build(name, source, spec, rows, integer_rule, infer_mode=infer_mode)


def _read_json_rows(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".json":
            rows = json.loads(text)
            return rows if isinstance(rows, list) else rows["data"]
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    except (ValueError, KeyError, TypeError) as error:
        raise DatasetError(f"{path}: not JSONL (one object a line) or a JSON list: {error}") from None


def _build(name, source, spec: SetSpec, rows: Iterable[Mapping[str, Any]], integer_rule, infer_mode=False):
    if integer_rule not in INTEGER_RULES:
        raise DatasetError(f"integer rule must be one of {', '.join(INTEGER_RULES)}")
    problems: list[Problem] = []
    for index, row in enumerate(rows):
        if not spec.keep(row):
            continue
        problem = _first(row, PROBLEM_KEYS)
        answer = _reference(row, INTEGER_RULES[integer_rule] if spec.level else None)
        if problem is None or answer is None:
            if spec.level:
                continue  # MATH: not an integer answer under the rule
            raise DatasetError(f"{source}: row {index} has no problem ({'/'.join(PROBLEM_KEYS)}) or answer")
        ident = _first(row, ID_KEYS)
        meta = {k: row[k] for k in ("level", "type", "subject", "url") if row.get(k) is not None}
        problems.append(Problem(str(index if ident is None else ident), str(problem), answer, meta))
    ids = [p.id for p in problems]
    if len(set(ids)) != len(ids):
        problems = [Problem(str(i), p.problem, p.answer, p.meta | {"row_id": p.id}) for i, p in enumerate(problems)]
    if not problems:
        raise DatasetError(f"{source}: no problems")
    mode = spec.answer_mode
    if infer_mode and all(_strict_integer(p.answer) is not None for p in problems):
        mode = AnswerMode.INTEGER
    return ProblemSet(name, source, mode, problems)


def _reference(row: Mapping[str, Any], rule: Callable[[str], str | None] | None) -> str | None:
    """The reference answer: the answer field, else the solution's last \\boxed{}; a MATH subset
    (rule given) always uses the solution's last \\boxed{}, filtered by the integer rule."""
    if rule is not None:
        boxed = extract_boxed(_first(row, SOLUTION_KEYS) or "")
        return rule(boxed) if boxed is not None else None
    answer = _first(row, ANSWER_KEYS)
    if isinstance(answer, float) and answer.is_integer():
        return str(int(answer))  # AMC answers are stored as floats: 27.0
    if answer is not None and str(answer).strip():
        return str(answer).strip()
    solution = _first(row, SOLUTION_KEYS)
    return extract_boxed(solution) if solution else None


def _first(row: Mapping[str, Any], keys: Iterable[str]) -> Any:
    return next((row[k] for k in keys if row.get(k) is not None), None)


def _level(row: Mapping[str, Any]) -> str:
    """ "Level 4" (MATH's own) or 4 (some hub copies) -> "4"."""
    return str(row.get("level", "")).removeprefix("Level").strip()
