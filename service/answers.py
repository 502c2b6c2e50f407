"""Final answers of SC-TIR candidates: extraction, normalisation, equivalence and voting.

Every candidate's final answer is reduced to a vote in one of three modes:

- ``aimo``: the reference's scoring, exactly (the winners' Kaggle notebook): the answer is read
  from the text's last 100 characters and normalised the notebook's way (`reference_answer`),
  then ``float()``, Python's ``round()`` (2.5 -> 2, 3.3 -> 3, 0.4 -> 0: the notebook's 0.2
  tolerance check rounds first and so never fires), negatives dropped, the rest mod 1000. LaTeX
  that ``float()`` cannot read (``\\frac{6}{2}``, ``2^{10}``, ``\\sqrt{15}``) is no vote, as there.
- ``integer``: exact integers of any size and sign, no modulus, with our own parsing
  (``\\frac{6}{2}`` -> 3; ``\\sqrt{15}`` and 2.5 are no vote); anything else is dropped.
- ``expression``: any non-empty answer; two answers share a class when math-verify finds them
  equivalent (``\\frac{1}{2}``, ``0.5`` and ``1/2`` are one class).

Ties are broken by the lowest candidate index among a class's supporters. Candidate texts are
sampled with a per-index seed, so for a fixed seed the winner is deterministic and does not
depend on the order in which candidates finished.

math-verify bounds parsing and comparison with ``signal.alarm``, which only the main thread may
arm: on other threads its timeout is switched off (it would raise instead), so a caller running
this in a worker thread must bound the time itself.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from enum import StrEnum
from fractions import Fraction
from typing import Any

from latex2sympy2_extended import NormalizationConfig
from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
from math_verify.errors import TimeoutException
from math_verify.utils import timeout
from sympy import Basic, Eq, Symbol

from service.tir import answer_tail

MATH_VERIFY_TIMEOUT_S = 3
"""Per parse / per comparison bound; pathological LaTeX can make sympy spin for minutes."""

_MAX_ABS = 10**1000
"""Larger values are not plausible answers, and evaluating them exactly could exhaust memory."""
_INEXACT_MAX_ABS = 10**30
"""Beyond this, 60-digit numeric evaluation cannot tell whether a value is an integer."""
_INTEGER_EPS = Fraction(1, 10**20)

_BOX = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_ANSWER_IS = re.compile(r"answer is", re.IGNORECASE)
_WRAPPER = re.compile(r"\\(?:text|textbf|textrm|mathrm|mathbf|mbox)\s*\{([^{}]*)\}")
_DECORATION = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\\%|%|\\\$|\\!|\\displaystyle")
_SEPARATOR = r"(?:,\\!|\{,\}|,|\\,|\\ |\\!)"
_THOUSANDS = re.compile(rf"[+-]?\d{{1,3}}(?:{_SEPARATOR}\d{{3}})+(?:\.\d+)?")
_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d{1,3})?(?:/\d+)?")
"""Exponents are capped: Fraction("1e999999999") would try to build a billion-digit int."""
_UNIT_TEXT = re.compile(r"\\(?:text|mbox|mathrm)(?![A-Za-z])")

# math-verify strips trailing "units" from LaTeX, and its unit list includes single letters
# (c, h, t, s, ...): "6+9c" would parse as 15 and "4t" as 4. Units are only stripped when
# the answer spells them in text ("10\text{ cm}").
_WITH_UNITS = (LatexExtractionConfig(), ExprExtractionConfig())
_WITHOUT_UNITS = (
    LatexExtractionConfig(
        normalization_config=NormalizationConfig(
            basic_latex=True, units=False, malformed_operators=True, nits=True, boxed="all"
        )
    ),
    ExprExtractionConfig(),
)


class AnswerMode(StrEnum):
    AIMO = "aimo"  # the reference's scoring: round(float()) of its normalised answer, mod 1000
    INTEGER = "integer"  # exact integers, no modulus
    EXPRESSION = "expression"  # symbolic equivalence classes (math-verify)


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` / ``\\fbox{...}`` (nested braces balanced), or the
    token after a brace-less ``\\boxed 5``. None when absent, empty-bodied brace-less, or the last
    box is unbalanced (a truncated final answer is no answer, not an earlier box's)."""
    matches = list(_BOX.finditer(text))
    if not matches:
        return None
    rest = text[matches[-1].end() :]
    body = rest.lstrip()
    if not body.startswith("{"):
        token = re.match(r"[^\s$]*", body).group().rstrip(".,")
        return token or None
    depth = 0
    for i, char in enumerate(body):
        depth += {"{": 1, "}": -1}.get(char, 0)
        if depth == 0:
            return body[1:i]
    return None


def extract_answer(text: str) -> str | None:
    """The last boxed content; failing that, what follows the last "answer is" on its line."""
    boxed = extract_boxed(text)
    if boxed is not None and boxed.strip():
        return boxed
    matches = list(_ANSWER_IS.finditer(text))
    if not matches:
        return None
    line = text[matches[-1].end() :].split("\n", 1)[0]
    return _strip(line.strip().lstrip(":").rstrip(".")) or None


def _mv_timeout() -> int | None:
    """math-verify's timeout arms SIGALRM, which raises ValueError off the main thread."""
    return MATH_VERIFY_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


_BRACELESS_FRAC = re.compile(r"\\[dt]?frac\s*(\\[A-Za-z]+|[^\s{}\\])\s*(\\[A-Za-z]+|[^\s{}\\])")
_NOT_A_NUMBER = re.compile(r"\d\s*_|[:,;]")
"""Left after ungrouping, these mean a base subscript, a ratio, or a list: math-verify would
silently drop the subscript (2112_6 -> 2112) or join the list (70,110 -> 70110)."""


def _ungroup(text: str) -> str:
    """Thousands separators out of a lone number: math-verify reads "1\\,000" as 1*0."""
    return re.sub(_SEPARATOR, "", text) if _THOUSANDS.fullmatch(text) else text


def _parse(latex: str) -> list[Any]:
    """math-verify parse of an answer body; [] when it fails or times out."""
    latex = _ungroup(latex)
    config = _WITH_UNITS if _UNIT_TEXT.search(latex) else _WITHOUT_UNITS
    try:
        return parse(f"\\boxed{{{latex}}}", config, parsing_timeout=_mv_timeout())
    except (Exception, TimeoutException):
        return []


def _strip(raw: str) -> str:
    """Surrounding whitespace and $ delimiters off (an escaped "\\$" is content), inner
    whitespace runs collapsed."""
    text = raw.strip().lstrip("$")
    while text.endswith("$") and not text.endswith("\\$"):
        text = text[:-1]
    return " ".join(text.split())


def _number(raw: str) -> tuple[Fraction, bool] | None:
    """Real value of a numeric answer and whether it is exact, or None if not a real number.

    Plain numbers take an exact fast path (no float round trip, so huge integers survive);
    other LaTeX goes through math-verify and sympy."""
    text = _strip(raw)
    while wrapped := _WRAPPER.fullmatch(text):
        text = wrapped.group(1).strip()
    text = _ungroup(_DECORATION.sub("", text).strip().rstrip("."))
    if _NOT_A_NUMBER.search(text):
        return None
    text = _BRACELESS_FRAC.sub(r"\\frac{\1}{\2}", text)  # math-verify misreads "\frac \pi4"
    if _PLAIN_NUMBER.fullmatch(text):
        try:
            return Fraction(text), True
        except (ValueError, ZeroDivisionError):
            pass
    expr = next((p for p in _parse(text) if isinstance(p, Basic)), None)
    if isinstance(expr, Eq) and isinstance(expr.lhs, Symbol):
        expr = expr.rhs  # "x = 5"
    if expr is None or expr.free_symbols:
        return None
    try:
        return timeout(timeout_seconds=_mv_timeout())(_evaluate)(expr)
    except (Exception, TimeoutException):
        return None


def _evaluate(expr: Basic) -> tuple[Fraction, bool] | None:
    """Exact value when sympy finds a rational, else a 60-digit approximation."""
    approx = expr.evalf(60)
    if not (approx.is_extended_real and approx.is_finite) or abs(approx) >= _MAX_ABS:
        return None
    exact = expr.doit()
    if exact.is_Rational:
        return Fraction(int(exact.p), int(exact.q)), True
    return Fraction(str(approx)), False


def normalize(raw: str, mode: AnswerMode) -> str | None:
    """Vote key of an answer, or None when the answer is not valid in that mode."""
    if mode is AnswerMode.EXPRESSION:
        return _strip(raw) or None
    if mode is AnswerMode.AIMO:
        return _aimo_vote(raw)
    number = _number(raw)
    if number is None:
        return None
    value, exact = number
    nearest = round(value)
    if exact:
        return str(nearest) if value == nearest else None
    if abs(value) >= _INEXACT_MAX_ABS or abs(value - nearest) > _INTEGER_EPS:
        return None
    return str(nearest)


def _aimo_vote(raw: str) -> str | None:
    """The reference's filter: round(float(answer)), negatives dropped, mod 1000 (None: no vote).

    A candidate's answer in `aimo` mode is already the reference's normalised text (`read_answer`);
    any other answer (a data set's, one extracted elsewhere) that float() cannot read is first
    normalised the reference's way, so "$5$" or "1,000" count as they would there.
    """
    for text in (raw, _reference_normalize(raw)):
        try:
            value = round(float(text))
        except (ValueError, OverflowError):  # not a float literal; inf, nan
            continue
        return str(value % 1000) if value >= 0 else None
    return None


def read_answer(text: str, mode: AnswerMode) -> str | None:
    """A candidate's answer, read the reference's way from its tail (service.tir.answer_tail).

    The caller has checked that the tail holds "\\boxed" or "answer is". In `aimo` mode the
    reference's own reading and normalisation (`reference_answer`); in the others, ours on the
    same tail: its last balanced box, else what follows its last "answer is".
    """
    tail = answer_tail(text)
    return reference_answer(tail) if mode is AnswerMode.AIMO else extract_answer(tail)


# -- the reference's answer reading (the winners' notebook: extract_boxed_answer, normalize_answer) --

_REFERENCE_SUBS = (("an ", ""), ("a ", ""), (".$", "$"), ("\\$", ""), ("\\ ", ""), (" ", ""), ("mbox", "text"),
                   (",\\text{and}", ","), ("\\text{and}", ","), ("\\text{m}", "\\text{}"), ("\\le", "<"))  # fmt: skip
_REFERENCE_REMOVE = (
    "square", "ways", "integers", "dollars", "mph", "inches", "ft", "hours", "km", "units", "\\ldots", "sue",
    "points", "feet", "minutes", "digits", "cents", "degrees", "cm", "gm", "pounds", "meters", "meals", "edges",
    "students", "childrentickets", "multiples", "\\text{s}", "\\text{.}", "\\text{\ns}", "\\text{}^2",
    "\\text{}^3", "\\text{\n}", "\\text{}", "\\mathrm{th}", "^\\circ", "^{\\circ}", "\\;", ",\\!", "{,}", '"',
    "\\dots", "\n", "\r", "\f", "\\%",
)  # fmt: skip
_REFERENCE_UNWRAP = tuple(re.compile(p) for p in (r"(\\text\{)(.*?)(\})", r"(\\textbf\{)(.*?)(\})",
                                                   r"(\\overline\{)(.*?)(\})", r"(\\boxed\{)(.*)(\})"))  # fmt: skip
_REFERENCE_SPLIT = tuple(re.compile(p) for p in (r"finalansweris(.*)", r"answer?is:?(.*)", r"oxed\{(.*?)\}",
                                                  r"\$(.*?)\$"))  # fmt: skip


def reference_answer(tail: str) -> str | None:
    """The reference's answer of a tail: its last box's body if the tail says "boxed", else the
    whole tail, through the notebook's normalisation; None where the notebook's "-1" stood (no
    balanced box in the tail, a box that is not "\\boxed{...}")."""
    if "boxed" not in tail:
        return _reference_normalize(tail)
    start = max(tail.rfind("\\boxed"), -1 if "\\boxed" in tail else tail.rfind("\\fbox"))
    if start < 0 or not tail.startswith("\\boxed{", start):
        return None
    depth = 0
    for index in range(start, len(tail)):
        depth += {"{": 1, "}": -1}.get(tail[index], 0)
        if tail[index] == "}" and depth == 0:
            return _reference_normalize(tail[start + len("\\boxed{") : index])
    return None


def _reference_normalize(answer: str) -> str:
    """The notebook's normalize_answer, step for step (its quirks are the reference's votes)."""
    if match := re.search(r"(.*?)Problem:", answer, flags=re.S):
        answer = match.group(1)
    for before, after in _REFERENCE_SUBS:
        answer = answer.replace(before, after)
    for text in _REFERENCE_REMOVE:
        answer = answer.replace(text, "")
    for pattern in _REFERENCE_UNWRAP:
        answer = pattern.sub(r"\2", answer)
    for pattern in _REFERENCE_SPLIT:
        if found := pattern.findall(answer):
            answer = found[-1]
    answer = answer.strip()
    if "rac" in answer and "\\frac" not in answer:
        answer = answer.replace("rac", "\\frac")
    answer = re.sub(r"(frac)([^{])(.)", r"frac{\2}{\3}", answer)
    answer = re.sub(r"(sqrt)([^{])", r"sqrt{\2}", answer)
    answer = answer.replace("$", "")
    return answer.replace(",", "") if answer.replace(",", "").isdigit() else answer


@dataclass(frozen=True)
class VoteClass:
    answer: str
    votes: int
    first_candidate: int


@dataclass
class _Class:
    answer: str
    votes: int
    first_candidate: int
    parsed: list[Any]


class Ballot:
    """Votes of candidates grouped into equivalence classes.

    Adding incrementally (as candidates finish) serves early stopping; in expression mode a new
    answer joins the first class whose representative (its first-added answer) math-verify
    accepts, so the final grouping should come from `tally`, which adds in index order."""

    def __init__(self, mode: AnswerMode) -> None:
        self.mode = mode
        self._seen: set[int] = set()
        self._classes: list[_Class] = []
        self._by_key: dict[str, _Class] = {}
        self._parse_cache: dict[str, list[Any]] = {}

    def add(self, candidate: int, raw: str) -> str | None:
        """Count one candidate's answer; the class's display answer, or None if invalid.

        A candidate is consumed even when its answer is invalid: it has had its one say."""
        if candidate in self._seen:
            raise ValueError(f"candidate {candidate} already voted")
        self._seen.add(candidate)
        key = normalize(raw, self.mode)
        if key is None:
            return None
        cls = self._by_key.get(key) or self._find_equivalent(key)
        if cls is None:
            parsed = self._parsed(key) if self.mode is AnswerMode.EXPRESSION else []
            cls = _Class(key, 0, candidate, parsed)
            self._classes.append(cls)
        self._by_key[key] = cls
        cls.votes += 1
        if candidate < cls.first_candidate:
            cls.first_candidate, cls.answer = candidate, key
        return cls.answer

    def _parsed(self, key: str) -> list[Any]:
        """Parsed form of a key (the key itself when math-verify finds nothing, so that
        verify's string comparison applies); cached, as every new answer is compared with
        every class."""
        if key not in self._parse_cache:
            self._parse_cache[key] = _parse(key) or [key]
        return self._parse_cache[key]

    def _find_equivalent(self, key: str) -> _Class | None:
        if self.mode is not AnswerMode.EXPRESSION:
            return None
        parsed = self._parsed(key)
        for cls in self._classes:
            try:
                if verify(cls.parsed, parsed, timeout_seconds=_mv_timeout()):
                    return cls
            except (Exception, TimeoutException):
                continue
        return None

    @property
    def classes(self) -> list[VoteClass]:
        """Winner first: most votes, then lowest first candidate index."""
        ordered = sorted(self._classes, key=lambda c: (-c.votes, c.first_candidate))
        return [VoteClass(c.answer, c.votes, c.first_candidate) for c in ordered]

    @property
    def valid_votes(self) -> int:
        return sum(c.votes for c in self._classes)

    def winner(self) -> VoteClass | None:
        classes = self.classes
        return classes[0] if classes else None

    def agreement(self) -> float:
        """Share of valid votes held by the winner; 0.0 with none."""
        leader = self.winner()
        return leader.votes / self.valid_votes if leader else 0.0

    def votes(self) -> dict[str, int]:
        return {c.answer: c.votes for c in self.classes}

    def is_decided(self, remaining: Collection[int]) -> bool:
        """True when the leader wins whatever the `remaining` candidates answer.

        Worst case per rival: every remaining candidate joins it, which also lowers its first
        candidate index to min(remaining); a brand-new class is a rival with no votes yet."""
        classes = self.classes
        if not classes:
            return False
        leader, rivals = classes[0], classes[1:]
        if not remaining:
            return True
        swing, lowest = len(remaining), min(remaining)
        rivals.append(VoteClass("", 0, lowest))
        return all(
            leader.votes > rival.votes + swing
            or (leader.votes == rival.votes + swing and leader.first_candidate < min(rival.first_candidate, lowest))
            for rival in rivals
        )


def tally(answers: Iterable[tuple[int, str]], mode: AnswerMode) -> Ballot:
    """A Ballot filled in candidate-index order, so finish order cannot change the grouping."""
    ballot = Ballot(mode)
    for candidate, raw in sorted(answers, key=lambda pair: pair[0]):
        ballot.add(candidate, raw)
    return ballot


def matches_reference(answer: str | None, reference: str, mode: AnswerMode) -> bool:
    """Whether an answer is right: it would vote in the reference's class under `mode`."""
    if answer is None:
        return False
    ballot = Ballot(mode)
    expected = ballot.add(0, reference)
    return expected is not None and ballot.add(1, answer) == expected
