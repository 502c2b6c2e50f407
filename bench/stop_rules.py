"""Stopping rules replayed on a real model's samples: how many samples each needs, and what it costs in accuracy.

    python -m bench.stop_rules                # prints the table
    python -m bench.stop_rules --write        # BENCHMARKS.md's "Stopping rules" section

The recorded samples of Qwen2.5-Math on 100 MATH problems (8 each, ../shared/data
qwen25math_math100_samples.jsonl: the toolkit's extracted answers and their correctness) are voted in many
random orders, as candidates finish in random order; each rule of service.stopping stops the vote as soon
as it would, and its leader then is compared with the full vote of 8 in the same order (ties: the answer
seen first). Answers are grouped as the service groups them (service.answers.Ballot, expression mode).
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass
from pathlib import Path

from bench.sandbox import write_section
from service.answers import AnswerMode, Ballot
from service.evaluation.datasets import data_dir
from service.stopping import StopRule, should_stop

SAMPLES = data_dir() / "qwen25math_math100_samples.jsonl"


@dataclass(frozen=True)
class Problem:
    classes: tuple[str | None, ...]  # each sample's answer class (None: no valid answer)
    correct: frozenset[str]  # the classes the toolkit scored right


def load(path: Path = SAMPLES) -> list[Problem]:
    problems = []
    for line in path.read_text().splitlines():
        row = json.loads(line)
        ballot = Ballot(AnswerMode.EXPRESSION)
        classes = tuple(ballot.add(index, str(pred)) for index, pred in enumerate(row["pred"]))
        correct = frozenset(c for c, right in zip(classes, row["score"]) if right and c is not None)
        problems.append(Problem(classes, correct))
    return problems


def vote(classes: list[str | None], rule: StopRule) -> tuple[str | None, int]:
    """The leader when `rule` stops (or after every sample), and the samples it took."""
    votes: dict[str, int] = {}  # insertion order: first seen first, the tie-break
    for taken, answer in enumerate(classes, 1):
        if answer is not None:
            votes[answer] = votes.get(answer, 0) + 1
        ranked = sorted(votes.items(), key=lambda item: -item[1])
        if should_stop(rule, [count for _, count in ranked], len(classes) - taken):
            return (ranked[0][0] if ranked else None), taken
    raise AssertionError("a vote with no sample left always stops")


@dataclass
class Outcome:
    rule: StopRule
    right: int = 0
    same_as_full: int = 0
    samples: int = 0
    votes: int = 0


def replay(problems: list[Problem], orders: int, seed: int = 0) -> dict[StopRule, Outcome]:
    rng = random.Random(seed)
    outcomes = {rule: Outcome(rule) for rule in StopRule}
    for problem in problems:
        for _ in range(orders):
            order = list(problem.classes)
            rng.shuffle(order)
            full, _ = vote(order, StopRule.NONE)
            for rule, outcome in outcomes.items():
                answer, taken = vote(order, rule)
                outcome.votes += 1
                outcome.samples += taken
                outcome.right += answer in problem.correct
                outcome.same_as_full += answer == full
    return outcomes


def markdown(outcomes: dict[StopRule, Outcome], problems: int, orders: int, command: str) -> str:
    full = outcomes[StopRule.NONE]
    rows = [
        f"| {o.rule} | {100 * o.right / o.votes:.2f}% | {100 * o.same_as_full / o.votes:.2f}% | "
        f"{o.samples / o.votes:.2f} | {1 - o.samples / full.samples:.1%} |"
        for o in outcomes.values()
    ]
    return "\n".join(
        [
            "<!-- bench/stop_rules.py: start -->",
            "## Stopping rules on a real model's samples (bench/stop_rules.py)",
            "",
            f"Command: `{command}`",
            "",
            f"Qwen2.5-Math's 8 recorded samples on each of {problems} MATH problems (../shared/data), voted in "
            f"{orders} random orders each; each rule of service/stopping.py stops as soon as it would "
            "(`posterior`: P(the leader stays the majority of 8) >= 0.95, a Dirichlet over the answers seen and "
            "one unseen class, prior 1). Accuracy: the stopped vote's answer scored right by the toolkit; "
            "'= full vote': the same answer as all 8 in that order.",
            "",
            "| rule | accuracy | = full vote | samples per problem | samples saved vs none |",
            "| --- | ---: | ---: | ---: | ---: |",
            *rows,
            "",
            f"Full vote (`none`) accuracy {100 * full.right / full.votes:.2f}%. These are samples, not generated "
            "tokens: the token count of the demo model's runs under each rule is the rest of issue #20.",
            "<!-- bench/stop_rules.py: end -->",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=200, help="random orders per problem")
    parser.add_argument("--write", action="store_true", help="replace this benchmark's section of BENCHMARKS.md")
    args = parser.parse_args()
    if not SAMPLES.is_file():
        raise SystemExit(f"{SAMPLES} is missing (../shared/data; SCTIR_DATA_DIR names another folder)")
    problems = load()
    outcomes = replay(problems, args.orders)
    text = markdown(outcomes, len(problems), args.orders, f"python -m bench.stop_rules --orders {args.orders}")
    print(text)
    if args.write:
        write_section(text)


if __name__ == "__main__":
    main()
