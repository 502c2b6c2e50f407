"""A solver replica: the service's FastAPI app as Ray Serve's HTTP ingress, its engine the engine deployment.

Built in the replica (not pickled from the driver): its settings resolved on its node (the local executor's
concurrency and interpreter are this node's), its own sandbox pool on its node, its own admission
(a full replica answers 429 as the single-box service does), and a RayEngine over the engine handle.
"""

from __future__ import annotations

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from service.api.app import create_app
from service.cluster.engine import RayEngine
from service.cluster.ledger import ProblemRecord
from service.cluster.node_settings import Overrides, resolve
from service.cluster.solver_metrics import mirrored


class SolverReplica:
    """The solver deployment's replica class (service.cluster.app wraps it as Serve's ingress)."""

    def __init__(self, given: Overrides, engine: DeploymentHandle) -> None:
        self.settings = settings = resolve(given)
        self.engine = RayEngine(
            engine,
            retries=settings.ray_step_retries,
            stall_s=settings.engine_stall_s,
            prompt_template=settings.prompt_template,
        )

    def __serve_build_asgi_app__(self) -> FastAPI:
        """Serve's hook for an ingress app built in the replica; Serve runs its lifespan (sandbox, engine). Its
        sctir_* metrics go out through Ray's, labelled with this replica (solver_metrics)."""
        return mirrored(create_app(self.settings, engine=self.engine), serve.get_replica_context().replica_id.unique_id)

    def ledger(self) -> tuple[str, dict[str, ProblemRecord]]:
        """This replica's id, and per problem it solved the engine replicas that served its steps and the
        steps retried (for operators, the affinity benchmark and tests)."""
        return serve.get_replica_context().replica_id.unique_id, self.engine.ledger.snapshot()
