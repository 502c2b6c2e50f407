"""What a solve is doing, on stderr while stderr is a terminal."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from service.answers import AnswerMode, Ballot

if TYPE_CHECKING:  # pragma: no cover
    from service.solver import Candidate


class SolveProgress:
    """A spinner and the elapsed time; in-process also candidates finished / total and the leading answer
    with its votes.

    Transient (it leaves no trace), and log records print above it (service.logs writes to the
    sys.stderr that rich redirects).
    """

    def __init__(self, description: str) -> None:
        stderr = Console(stderr=True)
        self.enabled = stderr.is_terminal
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(bar_width=24),
            TimeElapsedColumn(),
            console=stderr,
            transient=True,
            disable=not self.enabled,
        )
        self.task = self.progress.add_task(description, total=None)
        self.done = 0
        self.total = 0
        self.ballot: Ballot | None = None

    def __enter__(self) -> SolveProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.progress.stop()

    def phase(self, description: str) -> None:
        self.progress.update(self.task, description=description)

    def solving(self, total: int, answer_mode: AnswerMode) -> None:
        self.done, self.total, self.ballot = 0, total, Ballot(answer_mode)
        self.progress.update(self.task, description=f"0/{total} candidates", total=total, completed=0)

    def candidate_done(self, candidate: Candidate) -> None:
        """The Solver's on_candidate: count it and its vote (the live leader, as the solver's early stop sees it)."""
        if not self.enabled or self.ballot is None:
            return
        self.done += 1
        if candidate.answer is not None:
            self.ballot.add(candidate.index, candidate.answer)
        leader = self.ballot.classes[0] if self.ballot.classes else None
        lead = f"leader {leader.answer} ({leader.votes} vote{'s' * (leader.votes > 1)})" if leader else "no answer yet"
        description = f"{self.done}/{self.total} candidates, {lead}"
        self.progress.update(self.task, description=description, completed=self.done, refresh=True)
