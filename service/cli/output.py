"""How `sctir solve` shows a response: a summary for people, or the JSON alone on stdout."""

from __future__ import annotations

import os
import sys
from typing import TextIO

from rich.console import Console
from rich.table import Table

from service.schemas import SolveResponse

console = Console()


def print_response(response: SolveResponse, traces: bool = False) -> None:
    """The answer, the votes, the candidates' statuses and the timings (after every candidate's text if `traces`)."""
    if traces:
        for candidate in response.candidates:
            console.rule(f"candidate {candidate.index}: {candidate.status}")
            console.print(candidate.text, markup=False, highlight=False)
    console.print(f"[bold]answer:[/bold] {response.answer}   agreement {response.agreement:.0%}")
    table = Table("answer", "votes", "share")
    total = sum(response.votes.values())
    for answer, votes in response.votes.items():
        table.add_row(answer, str(votes), f"{votes / total:.0%}")
    console.print(table)
    statuses: dict[str, int] = {}
    for candidate in response.candidates:
        statuses[candidate.status] = statuses.get(candidate.status, 0) + 1
    console.print("candidates: " + ", ".join(f"{n} {s}" for s, n in sorted(statuses.items())))
    t = response.timings
    console.print(
        f"time: {t.total_s:.2f} s total, {t.generation_s:.2f} s generation, {t.execution_s:.2f} s execution "
        f"(summed over candidates); tokens: {response.usage.completion_tokens} generated"
        + ("; stopped early" if response.stopped_early else "")
        + ("; DEADLINE HIT" if response.deadline_hit else "")
    )


def reserve_stdout() -> TextIO:
    """stdout for the JSON alone: from here on fd 1 is stderr's, so whatever a library, a C extension or a
    child process (vLLM's engine core) prints lands on stderr; the JSON goes to the stream returned."""
    sys.stdout.flush()
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    return out


def write_json(response: SolveResponse, out: TextIO) -> None:
    out.write(response.model_dump_json(indent=2) + "\n")
    out.flush()
