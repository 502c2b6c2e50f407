"""Our extraction and vote applied to recorded model samples, against the recording toolkit's scores.

The input is a Qwen2.5-Math evaluation dump (one JSON object a line): `code` holds k sampled
solutions, `pred` the toolkit's extracted answers, `score` its per-sample correctness, `answer`
the reference. For each sample we extract the answer (service.answers.extract_answer) and judge it
(service.evaluation.scoring.matches_reference); per problem we vote (service.answers.tally). The toolkit's
maj@k is recomputed by its own rule (evaluation/rm_maj_eval.py: exact-string groups of `pred`,
the most common first, scored by its first member's `score`).

    python -m service.evaluation.recorded ../shared/data/qwen25math_math100_samples.jsonl
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from service.answers import AnswerMode, extract_answer, matches_reference, tally


@dataclass(frozen=True)
class Disagreement:
    problem: int | str
    sample: int
    reference: str
    toolkit_pred: str
    our_answer: str | None
    toolkit_correct: bool
    our_correct: bool

    @property
    def kind(self) -> str:
        """Whether the extractions differ, or the same answer is judged differently."""
        if (self.our_answer or "").strip() != self.toolkit_pred.strip():
            return "extraction"
        return "equivalence"


@dataclass
class ReplayResult:
    problems: int = 0
    samples: int = 0
    agreeing: int = 0
    our_maj: int = 0
    toolkit_maj: int = 0
    our_pass: int = 0
    disagreements: list[Disagreement] = field(default_factory=list)
    maj_differences: list[tuple[int | str, str | None, str, bool, bool]] = field(default_factory=list)

    @property
    def agreement(self) -> float:
        return self.agreeing / self.samples if self.samples else 0.0


def replay(path: Path, k: int = 8, mode: AnswerMode = AnswerMode.EXPRESSION) -> ReplayResult:
    result = ReplayResult()
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        reference, texts = str(row["answer"]), row["code"][:k]
        preds, scores = row["pred"][:k], [bool(s) for s in row["score"][:k]]
        ours = [extract_answer(text) for text in texts]
        judged = [matches_reference(answer, reference, mode) for answer in ours]
        result.problems += 1
        for i, (mine, theirs) in enumerate(zip(judged, scores)):
            result.samples += 1
            if mine == theirs:
                result.agreeing += 1
            else:
                result.disagreements.append(
                    Disagreement(row.get("idx", result.problems - 1), i, reference, preds[i], ours[i], theirs, mine)
                )
        winner = tally([(i, a) for i, a in enumerate(ours) if a is not None], mode).winner()
        our_right = winner is not None and matches_reference(winner.answer, reference, mode)
        majority = Counter(preds).most_common(1)[0][0]
        toolkit_right = scores[preds.index(majority)]
        result.our_maj += our_right
        result.toolkit_maj += toolkit_right
        result.our_pass += any(judged)
        if our_right != toolkit_right:
            result.maj_differences.append(
                (row.get("idx"), winner.answer if winner else None, majority, our_right, toolkit_right)
            )
    return result


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        raise SystemExit("usage: python -m service.evaluation.recorded SAMPLES.jsonl [K]")
    k = int(args[1]) if len(args) > 1 else 8
    r = replay(Path(args[0]), k)
    print(f"{r.problems} problems, {r.samples} samples")
    print(f"maj@{k}: ours {r.our_maj}, toolkit {r.toolkit_maj}; pass@{k} (ours) {r.our_pass}")
    print(f"per-sample correctness agrees on {r.agreeing}/{r.samples} ({r.agreement:.2%})")
    for d in r.disagreements:
        print(
            f"  problem {d.problem} sample {d.sample}: reference {d.reference!r}, toolkit pred {d.toolkit_pred!r} "
            f"scored {d.toolkit_correct}; ours {d.our_answer!r} judged {d.our_correct} ({d.kind})"
        )
    for idx, ours, theirs, our_right, their_right in r.maj_differences:
        print(f"  maj differs on problem {idx}: ours {ours!r} ({our_right}), toolkit {theirs!r} ({their_right})")


if __name__ == "__main__":
    main()
