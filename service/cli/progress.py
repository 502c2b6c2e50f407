"""What a solve is doing, on stderr while stderr is a terminal."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from service.events import SolveEvent, VoteTally


class SolveProgress:
    """A spinner and the elapsed time; once solving, candidates finished / total and the leading answer
    with its votes (the solver's live tally, in-process or from the service's stream).

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
        self.total = 0

    def __enter__(self) -> SolveProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.progress.stop()

    def phase(self, description: str) -> None:
        self.progress.update(self.task, description=description)

    def solving(self, total: int) -> None:
        self.total = total
        self.progress.update(self.task, description=f"0/{total} candidates", total=total, completed=0)

    def hear(self, event: SolveEvent) -> None:
        """The solver's listener: each tally of the vote moves the bar and names the leader."""
        if not isinstance(event, VoteTally) or not self.enabled:
            return
        votes = event.votes.get(event.leader, 0) if event.leader is not None else 0
        lead = f"leader {event.leader} ({votes} vote{'s' * (votes > 1)})" if votes else "no answer yet"
        description = f"{event.finished}/{self.total} candidates, {lead}"
        self.progress.update(self.task, description=description, completed=event.finished, refresh=True)

    def told(self, name: str, data: dict) -> None:
        """An event of the service's stream (its name and data), heard as the in-process solver's."""
        if name == "start":
            self.solving(data["num_samples"])
        elif name == "vote":
            self.hear(VoteTally.model_validate(data))
