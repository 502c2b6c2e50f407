"""`sctir cluster up | down`: the service on Ray Serve from the SCTIR_* settings, without a config file.

Without SCTIR_RAY_ADDRESS, `up` starts Ray on this machine inside its own process (so the Ray processes end
with it), deploys the application and serves until it is interrupted or `down` removes the application;
with it, `up` deploys onto that running cluster and returns, and the cluster keeps serving. The Serve config
file (deploy/ray/serve.yaml) is the other way in: the same application, its options written out.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from typing import Any

import ray
from ray import serve
from ray.exceptions import RayActorError

from service.cluster.app import build_app
from service.settings import Settings

log = logging.getLogger(__name__)

APP = "sctir"  # the Serve application's name, the same in deploy/ray/serve.yaml
POLL_S = 2.0  # how often a foreground `up` looks whether its application is still deployed
# How long the head's GCS port may take to accept a connection. ray.init itself waits for an absent GCS
# for minutes, retrying quietly; a live head accepts at once.
CONNECT_TIMEOUT_S = 5.0


def connect(address: str) -> None:
    """Join the Ray cluster at `address` (host:port of its head, or "auto": the one on this machine), failing
    within seconds with a ConnectionError that names where it looked and what to do."""
    todo = (
        "start the cluster (`sctir cluster up` without SCTIR_RAY_ADDRESS, or `ray start --head` on its head), "
        "or set SCTIR_RAY_ADDRESS to its head's host:port"
    )
    if address == "auto":
        try:
            ray.init(address=address, log_to_driver=False)
        except ConnectionError as error:
            raise ConnectionError(f"no Ray cluster runs on this machine ({error}): {todo}") from error
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except (OSError, ValueError) as error:
        raise ConnectionError(f"no Ray head answers at {address} ({error}): {todo}") from error
    ray.init(address=address, log_to_driver=False)


def deployment_options(settings: Settings) -> tuple[dict[str, Any], dict[str, Any]]:
    """The engine's and the solver's Serve options: replicas, and an engine replica's GPUs (none on CPU)."""
    engine: dict[str, Any] = {"num_replicas": settings.ray_engine_replicas}
    if settings.ray_engine_gpus:
        engine["ray_actor_options"] = {"num_gpus": settings.ray_engine_gpus}
    return engine, {"num_replicas": settings.ray_solver_replicas}


def deploy(settings: Settings) -> None:
    """Serve's HTTP proxy on the settings' host and port, then the application (returns once it is running:
    every engine replica has started its vLLM engine)."""
    serve.start(http_options={"host": settings.host, "port": settings.port}, proxy_location="HeadOnly")
    engine, solver = deployment_options(settings)
    serve.run(build_app(settings, engine_options=engine, solver_options=solver), name=APP, route_prefix="/")


def up(settings: Settings, *, started: Callable[[str], None], stopping: Callable[[], bool]) -> None:
    """Deploy the service; without a cluster address, start Ray here and serve until `stopping()` or `down`.

    `started(address)` is told the Ray address once the application is running (a second `sctir cluster down`
    or `serve status` reaches the cluster there)."""
    if settings.ray_address:
        connect(settings.ray_address)
        try:
            deploy(settings)
            started(settings.ray_address)
        finally:
            ray.shutdown()  # the driver leaves; Serve (detached) keeps the application running
        return
    context = ray.init(include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=False)
    try:
        deploy(settings)
        started(context.address_info["gcs_address"])
        while not stopping() and APP in serve.status().applications:
            time.sleep(POLL_S)
    finally:
        serve.shutdown()
        ray.shutdown()


def down(settings: Settings) -> bool:
    """Remove the application from the cluster at SCTIR_RAY_ADDRESS (unset: the one on this machine); whether
    it was deployed there. A foreground `up` serving it then stops Ray and exits."""
    connect(settings.ray_address or "auto")
    try:
        if APP not in applications():
            return False
        serve.delete(APP, _blocking=False)  # Serve's own wait fails if a foreground `up` stops Serve under it
        while APP in applications():
            time.sleep(POLL_S / 4)
        return True
    finally:
        ray.shutdown()


def applications() -> set[str]:
    """The applications Serve runs; none once its controller is gone (a foreground `up` shuts Serve down as
    soon as it sees its application deleted, while `down` may still be waiting for that)."""
    try:
        return set(serve.status().applications)
    except RayActorError:
        return set()
