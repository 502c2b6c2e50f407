"""What the API's handlers work with, built once by the app factory and kept on `app.state`."""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import Request

from sandbox.execution import Executor
from service.admission import Admission
from service.engines.base import Engine
from service.metrics import Metrics
from service.settings import Settings
from service.solver import Solver


@dataclass
class Collaborators:
    settings: Settings
    engine: Engine
    executor: Executor
    solver: Solver
    admission: Admission
    metrics: Metrics
    api_keys: list[bytes]  # the accepted bearer tokens; none: /solve is open
    startup_errors: dict[str, str] = field(default_factory=dict)  # a component that may start later: why it did not


def collaborators(request: Request) -> Collaborators:
    """The collaborators of the app serving `request`."""
    return request.app.state.collaborators
