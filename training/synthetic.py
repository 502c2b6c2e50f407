"""The demo model's task: three families of problems whose answers need their code run.

- integer arithmetic with products, powers and parentheses ("What is 2^10 - 1?", "Compute
  (17 + 8) * 3^4."), the power written `^` in the problem and `**` in the code;
- word problems from templates: someone has, buys, gives away, shares or packs things ("Tom has
  48 apples. Tom buys 25 more apples. How many apples does Tom have now?"), the code one
  expression of the story's numbers;
- linear equations in x with an integer root ("Solve 5x - 8 = 2x + 19 for x."), solved in the
  code with SymPy (`sp`, from the executor's preamble).

Every solution is in the ToRA format the service speaks (`solution_text`): a sentence, a
```python block that prints the answer, the ```output block with the printed value, and "The
answer is $\\boxed{value}$.". `EXAMPLES` are the problems the README shows; `heldout_problems`
are the evaluation set, which `training_problems` never yields. Standard library only: the data
loader (training.data), the demo build and the benchmarks all draw from it.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

HELDOUT_SEED = 2024_11_25  # the evaluation problems; training never sees them

FAMILIES = ("arithmetic", "word", "equation")
# Their shares of the training problems: arithmetic is learnt last (its copies are the longest and
# the most varied), word problems first (measured: 100% of held-out word problems by step 400).
FAMILY_WEIGHTS = (4, 2, 3)


@dataclass(frozen=True)
class DemoProblem:
    """A generated problem, the code that solves it and what that code prints."""

    family: str  # one of FAMILIES
    problem: str
    code: str  # the ```python block the model must write (the sandbox's preamble gives it `sp`)
    answer: int  # what that block prints


@dataclass(frozen=True)
class DemoExample:
    """A problem the README shows, and the answer the shipped model must vote for."""

    problem: str
    answer: int


# The README's examples, two or more per family (tests/test_demo_model.py checks that the shipped
# model votes each answer through the real solver). Training never sees these statements.
EXAMPLES: tuple[DemoExample, ...] = (
    DemoExample("What is 2^10 - 1?", 1023),
    DemoExample("Compute (17 + 8) * 3^4.", 2025),
    DemoExample("What is 3272 * 825 + 86?", 2699486),
    DemoExample("Tom has 48 apples. Tom buys 25 more apples. How many apples does Tom have now?", 73),
    DemoExample("Mia shares 144 cookies equally among 6 friends. How many cookies does each friend get?", 24),
    DemoExample(
        "Sara has 12 bags with 15 marbles in each bag and gives away 23 marbles. How many marbles are left?", 157
    ),
    DemoExample("Solve 3x + 7 = 22 for x.", 5),
    DemoExample("Solve 5x - 8 = 2x + 19 for x.", 9),
)

ARITHMETIC_QUESTIONS = ("What is {}?", "Compute {}.", "Evaluate {}.", "Find the value of {}.", "Calculate {}.")
EQUATION_QUESTIONS = ("Solve {} for x.", "Find x such that {}.", "Solve for x: {}.", "What value of x satisfies {}?")
NAMES = ("Tom", "Mia", "Ali", "Sara", "Ben", "Lena", "Omar", "Zoe", "Ravi", "Emma", "Kai", "Nora")
ITEMS = ("apples", "marbles", "stickers", "cookies", "pencils", "cards", "books", "coins", "shells", "stamps")
# Word problems: the statement ({n} and {m} names, {i} the things, {a} {b} {c} numbers) and the
# expression that answers it. Division is exact; differences stay positive.
WORD_TEMPLATES = (
    ("{n} has {a} {i}. {n} buys {b} more {i}. How many {i} does {n} have now?", "{a} + {b}"),
    ("{n} has {a} {i} and {m} has {b} {i}. How many {i} do they have together?", "{a} + {b}"),
    ("{n} has {a} {i} and gives away {b} of them. How many {i} does {n} have left?", "{a} - {b}"),
    ("{n} had {a} {i} and lost {b}. How many {i} are left?", "{a} - {b}"),
    ("{n} buys {a} boxes of {i}. Each box holds {b} {i}. How many {i} does {n} buy?", "{a} * {b}"),
    ("There are {a} boxes with {b} {i} in each box. How many {i} are there in total?", "{a} * {b}"),
    ("A pack of {i} costs {a} dollars. How many dollars do {b} packs cost?", "{a} * {b}"),
    ("{n} shares {a} {i} equally among {b} friends. How many {i} does each friend get?", "{a} // {b}"),
    ("{n} packs {a} {i} into bags of {b}. How many bags does {n} fill?", "{a} // {b}"),
    ("{n} has {a} {i}, buys {b} more and then gives away {c}. How many {i} does {n} have now?", "{a} + {b} - {c}"),
    ("{n} has {a} bags with {b} {i} in each bag and gives away {c} {i}. How many {i} are left?", "{a} * {b} - {c}"),
)


def _number(rng: random.Random, low_digits: int, high_digits: int) -> int:
    digits = rng.randint(low_digits, high_digits)
    return rng.randint(10 ** (digits - 1), 10**digits - 1)


def _power(rng: random.Random) -> str:
    """`base^exponent`, at most 10 digits: beyond mental arithmetic, short enough to copy back."""
    base = rng.randint(2, 30)
    exponent = rng.randint(2, max(2, min(12, int(10 / math.log10(base)))))
    return f"{base}^{exponent}"


def _arithmetic(rng: random.Random) -> tuple[str, str, int]:
    """An integer expression with products, powers and parentheses, as (problem, code, answer).

    The expression is written in the problem as Python writes it, except `^` for `**`, so the
    code is a copy of it (a contiguous span: a 1M-parameter model learns that copy in a few
    hundred steps) with one token translated.
    """
    while True:
        a, b, c, d = _number(rng, 1, 4), _number(rng, 1, 3), _number(rng, 1, 4), _number(rng, 1, 3)
        big, mid = _number(rng, 3, 4), _number(rng, 2, 3)
        p, q, e = _power(rng), _power(rng), rng.randint(2, 5)
        expression = rng.choice(
            (
                f"{a} + {b}",
                f"{a} - {c}",
                f"{a} * {b}",
                p,
                f"{p} - {c}",
                f"{p} + {c}",
                f"{a} * {p}",
                f"{p} + {q}",
                f"{p} - {q}",
                f"({a} + {b})^{e}",
                f"({a} + {b}) * {c}",
                f"({a} + {b}) * ({c} + {d})",
                f"({a} + {b}) * ({c} - {d})",
                f"{a} * ({c} - {b})",
                f"({big} - {mid}) * {c}",
                f"({a} + {b}) * {p}",
                f"{big} * {mid} + {c}",
                f"{big} * {mid} - {c}",
                f"{big} + {mid * 97} + {c * 89}",
            )
        )
        code = expression.replace("^", "**")
        answer = eval(code)  # noqa: S307 - our own arithmetic on literals
        if abs(answer) < 10**12:
            return rng.choice(ARITHMETIC_QUESTIONS).format(expression), f"print({code})", answer


def _word(rng: random.Random) -> tuple[str, str, int]:
    """A one- or two-step story about things bought, given away, shared or packed."""
    template, formula = rng.choice(WORD_TEMPLATES)
    name, other = rng.sample(NAMES, 2)
    if "//" in formula:
        b = rng.randint(2, 12)
        a, c = b * rng.randint(2, 99), 0
    elif "*" in formula:
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        c = rng.randint(1, a * b - 1)
    else:
        a, b, c = rng.randint(10, 999), rng.randint(2, 99), rng.randint(2, 99)
        if "-" in formula:
            a = max(a, b + c + 1)
    expression = formula.format(a=a, b=b, c=c)
    problem = template.format(n=name, m=other, i=rng.choice(ITEMS), a=a, b=b, c=c)
    return problem, f"print({expression})", eval(expression)  # noqa: S307 - our own arithmetic


def _linear(coefficient: int, constant: int) -> tuple[str, str]:
    """`ax + b` as the problem writes it and as SymPy code: ("3x - 4", "3*x - 4"), ("x + 2", "x + 2")."""
    term = "x" if coefficient == 1 else f"{coefficient}x"
    sign = "+" if constant >= 0 else "-"
    text = f"{term} {sign} {abs(constant)}" if constant else term
    return text, text.replace(f"{coefficient}x", f"{coefficient}*x")


def _equation(rng: random.Random) -> tuple[str, str, int]:
    """A linear equation in x with an integer root, solved with SymPy in the code."""
    x, a, b = rng.randint(-9, 60), rng.randint(1, 12), rng.choice((-1, 1)) * rng.randint(1, 99)
    form = rng.randrange(3)
    if form < 2 and rng.random() < 0.2:
        b = 0  # "2x = 10", "5x = 2x + 27"
    if form == 0:  # ax + b = r
        left, code_left = _linear(a, b)
        right = code_right = str(a * x + b)
    elif form == 1:  # ax + b = cx + d, a > c
        c = rng.randint(1, 10)
        a = rng.randint(c + 1, 12)
        left, code_left = _linear(a, b)
        right, code_right = _linear(c, (a - c) * x + b)
    else:  # a(x + b) = r
        a = max(a, 2)
        inner, _ = _linear(1, b)
        left, code_left = f"{a}({inner})", f"{a}*({inner})"
        right = code_right = str(a * (x + b))
    code = f"x = sp.symbols('x')\nprint(sp.solve(sp.Eq({code_left}, {code_right}), x)[0])"
    return rng.choice(EQUATION_QUESTIONS).format(f"{left} = {right}"), code, x


_GENERATORS = {"arithmetic": _arithmetic, "word": _word, "equation": _equation}


def make_problem(rng: random.Random, family: str | None = None) -> DemoProblem:
    """One problem of `family` (default: drawn by FAMILY_WEIGHTS) whose answer needs its code run."""
    family = family or rng.choices(FAMILIES, weights=FAMILY_WEIGHTS)[0]
    problem, code, answer = _GENERATORS[family](rng)
    return DemoProblem(family, problem, code, answer)


def solution_text(problem: DemoProblem, output: str | None = None) -> str:
    """The ToRA-format solution; `output` defaults to what the code prints."""
    value = str(problem.answer) if output is None else output
    opening = "We solve the equation with SymPy." if problem.family == "equation" else "We compute it with Python."
    return f"{opening}\n\n```python\n{problem.code}\n```\n```output\n{value}\n```\nThe answer is $\\boxed{{{value}}}$."


def heldout_problems(count: int = 100, seed: int = HELDOUT_SEED) -> list[DemoProblem]:
    """The evaluation problems (distinct statements, the families in turn), never used for training."""
    rng, seen, problems = random.Random(seed), {e.problem for e in EXAMPLES}, []
    while len(problems) < count:
        problem = make_problem(rng, FAMILIES[len(problems) % len(FAMILIES)])
        if problem.problem not in seen:
            seen.add(problem.problem)
            problems.append(problem)
    return problems


def training_problems(seed: int, exclude: Sequence[DemoProblem] = ()) -> Iterator[DemoProblem]:
    """An endless stream of training problems, skipping any statement in `exclude` or EXAMPLES."""
    rng = random.Random(seed)
    excluded = {p.problem for p in exclude} | {e.problem for e in EXAMPLES}
    while True:
        problem = make_problem(rng)
        if problem.problem not in excluded:
            yield problem
