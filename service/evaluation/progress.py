"""The progress bar of `sctir eval` (rich): problem runs done, right so far, time left."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from service.evaluation.store import RunStore


class EvalProgress:
    def __init__(self, console: Console, name: str, store: RunStore, seeds: int, problems: int) -> None:
        done = [r for r in store.records.values() if r.get("error") is None]
        self.right = sum(r["correct"] for r in done)
        self.finished = len(done)
        self.name = name
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
        )
        self.task = self.progress.add_task(self._describe(), total=seeds * problems, completed=self.finished)

    def _describe(self, seed: int | None = None) -> str:
        where = f" seed {seed}" if seed is not None else ""
        return f"{self.name}{where} · right {self.right}/{self.finished}"

    def advance(self, record: dict[str, Any]) -> None:
        self.finished += 1
        self.right += bool(record["correct"])
        self.progress.update(self.task, advance=1, description=self._describe(record["seed"]))

    def __enter__(self) -> EvalProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()
