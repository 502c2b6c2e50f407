"""The app factory: the service's collaborators built from the settings, started and stopped with the app."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from sandbox.execution import Executor
from service.admission import Admission
from service.api.errors import EXCEPTION_HANDLERS
from service.api.middleware import (
    BodyLimitMiddleware,
    RequestIdMiddleware,
    StartupFailed,
    StartupFailureMiddleware,
)
from service.api.openai import add_openai_routes
from service.api.routes import add_routes
from service.api.state import Collaborators
from service.api.web import add_web_routes
from service.components import build
from service.engines.base import Engine
from service.engines.vllm_local import VllmEngine
from service.metrics import Metrics
from service.settings import Settings
from service.solver import Solver

log = logging.getLogger(__package__)  # the API's records under one name, whichever of its modules logs


def create_app(settings: Settings, engine: Engine | None = None, executor: Executor | None = None) -> FastAPI:
    """The service; tests pass their own engine or executor, production builds them from settings."""
    api = collaborators_for(settings, engine, executor)
    # FastAPIOffline: /docs and /redoc load their JavaScript, CSS and icon from the package, not a CDN.
    app = FastAPIOffline(
        title="SC-TIR solver",
        version="0.1.0",
        description="Self-consistent tool-integrated reasoning (NuminaMath-7B-TIR) for competition math.",
        lifespan=lifespan,
        exception_handlers=EXCEPTION_HANDLERS,
    )
    app.state.collaborators = api
    app.add_middleware(BodyLimitMiddleware)
    app.add_middleware(RequestIdMiddleware)
    app.add_middleware(StartupFailureMiddleware)
    add_routes(app, api_keys=bool(api.api_keys))
    add_openai_routes(app, api_keys=bool(api.api_keys))
    add_web_routes(app)
    return app


def collaborators_for(settings: Settings, engine: Engine | None, executor: Executor | None) -> Collaborators:
    """The engine and executor given (or those the settings and this machine call for), and what works with them."""
    settings, engine, executor = build(settings, engine, executor)
    metrics = Metrics()
    admission = Admission(settings.max_in_flight, settings.max_queue)
    metrics.track_queue(lambda: admission.in_flight, lambda: admission.queued)
    if callable(getattr(executor, "stats", None)):  # the Docker pool
        metrics.track_sandbox(executor.stats)
    return Collaborators(
        settings=settings,
        engine=engine,
        executor=executor,
        solver=Solver(engine, executor, on_execution=metrics.observe_execution),
        admission=admission,
        metrics=metrics,
        api_keys=[key.get_secret_value().encode() for key in settings.api_keys],
    )


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Starts the executor, then the engine; stops both when the server stops.

    Without the executor no candidate can run its code, and an in-process vLLM that did not load never
    will: those refuse to serve (StartupFailed). A remote engine may come up later: serve, and /readyz
    says why it is not ready. The executor starts first: it is quick to fail, the in-process engine slow
    to load.
    """
    api: Collaborators = app.state.collaborators
    required = {"executor": True, "engine": isinstance(api.engine, VllmEngine)}
    try:
        for name, component in (("executor", api.executor), ("engine", api.engine)):
            try:
                await component.start()
            except Exception as error:
                if required[name]:
                    raise StartupFailed(f"{name} failed to start: {error}") from error
                api.startup_errors[name] = str(error)
                log.error("%s failed to start: %s", name, error)
        yield
    finally:
        await api.engine.close()
        await api.executor.close()
