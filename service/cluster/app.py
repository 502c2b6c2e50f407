"""The Serve application: the engine deployment and the solver deployment (the HTTP ingress) bound together.

Deployment options given here are defaults: a Serve config file (or the caller's `engine_options` and
`solver_options`) sets replicas, autoscaling and where replicas go (ray_actor_options: CPUs, GPUs, custom
resources, the vLLM environment).
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application
from ray.serve.config import RequestRouterConfig

from service.cluster.engine_replica import EngineReplica
from service.cluster.node_settings import overrides
from service.cluster.router import AffinityRouter
from service.cluster.solver_replica import SolverReplica
from service.settings import Settings

ENGINE = "Engine"
SOLVER = "Solver"
# Steps one engine replica takes at once. vLLM batches them itself (its own max_num_seqs); this is where the
# affinity router spills a problem's steps over to the least loaded replica, and Serve queues beyond it.
ENGINE_MAX_ONGOING_REQUESTS = 256
# Requests beyond the app's own limits (problems in flight and queued) still reach the app, which answers
# 429, and the probes (/healthz, /readyz, /metrics) always do.
SOLVER_SPARE_REQUESTS = 8


def build_app(
    settings: Settings, *, engine_options: dict[str, Any] | None = None, solver_options: dict[str, Any] | None = None
) -> Application:
    """The application: solver replicas (HTTP) over engine replicas, from `settings` (a vLLM engine's). The
    replicas get what was set and resolve the rest on their own nodes (service.cluster.node_settings)."""
    routing: dict[str, Any] = {}
    if settings.ray_affinity:
        routing["request_router_config"] = RequestRouterConfig(request_router_class=AffinityRouter)
    engine = serve.deployment(
        EngineReplica, name=ENGINE, max_ongoing_requests=ENGINE_MAX_ONGOING_REQUESTS, **routing
    ).options(**(engine_options or {}))
    solver = serve.deployment(
        serve.ingress()(SolverReplica),
        name=SOLVER,
        max_ongoing_requests=settings.max_in_flight + settings.max_queue + SOLVER_SPARE_REQUESTS,
    ).options(**(solver_options or {}))
    given = overrides(settings)
    return solver.bind(given, engine.bind(given))


def build_from_args(args: dict[str, Any]) -> Application:
    """A Serve config file's application (import_path service.cluster.app:build_from_args; deploy/ray/serve.yaml):
    `args` are settings by name (model, num_samples, ray_affinity...) over SCTIR_* in the environment of the node
    that builds it. The file's `deployments` section sets replicas, autoscaling and resources by name (ENGINE,
    SOLVER). A name that is no setting is an error: ignored, a typo would silently deploy the default."""
    unknown = sorted(set(args) - set(Settings.model_fields))
    if unknown:
        raise ValueError(f"not settings: {', '.join(unknown)} (sctir serve --help lists them)")
    return build_app(Settings(**args))
