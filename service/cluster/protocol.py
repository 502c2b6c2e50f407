"""What a solver replica and an engine replica say to each other about one step, and the problem a step is of.

An engine replica streams a step as its text deltas (str), then one StepDone or StepFailed. An engine's
expected failures travel as StepFailed rather than as exceptions: Ray would log each one with a traceback
(a prompt longer than the context is a normal outcome), and the caller rebuilds the same EngineError kind.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.engines.base import ContextExhausted, EngineError, StepResult


@dataclass(frozen=True)
class StepDone:
    result: StepResult
    replica: str  # the engine replica that generated it (Serve's replica id)


@dataclass(frozen=True)
class StepFailed:
    message: str
    context_exhausted: bool
    replica: str

    @classmethod
    def of(cls, error: EngineError, replica: str) -> StepFailed:
        return cls(str(error), isinstance(error, ContextExhausted), replica)

    def error(self) -> EngineError:
        """The engine's error again, of the same kind (the solver treats ContextExhausted apart)."""
        kind = ContextExhausted if self.context_exhausted else EngineError
        return kind(f"engine replica {self.replica}: {self.message}")


StepItem = str | StepDone | StepFailed


def problem_of(request_id: str) -> str:
    """The problem (the solve's request id) of a step's request id "<request>-<candidate>-<step>"
    (service.solver.Candidate.next_request); an id of another shape is its own problem."""
    problem, *numbers = request_id.rsplit("-", 2)
    return problem if len(numbers) == 2 and all(n.isdigit() for n in numbers) else request_id
