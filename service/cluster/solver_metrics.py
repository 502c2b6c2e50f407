"""A solver replica's sctir_* metrics, exported through Ray's metrics with the replica's id.

A scrape of /metrics through Serve's proxy reaches whichever solver replica the proxy picks, so it cannot
read every replica. Each replica instead copies its app's Prometheus samples into Ray gauges every few
seconds; its node's Ray metrics agent serves them (as ray_sctir_*, labelled ReplicaId) with Ray's and vLLM's,
and deploy/ray/prometheus.yml renames them back to sctir_*. Counters and histogram buckets go out as gauges
holding their running totals: Prometheus' rate() and histogram_quantile() read them the same way.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from fastapi import FastAPI
from ray.util.metrics import Gauge

from service.api.routes import engine_ready
from service.api.state import Collaborators

log = logging.getLogger(__name__)

PUBLISH_EVERY_S = 5.0  # within Ray's own export interval (10 s): a scrape is at most one interval behind
REPLICA_LABEL = "ReplicaId"  # the label vLLM's engine metrics carry too (vllm.v1.metrics.ray_wrappers)


class RayMetricsMirror:
    """Copies an app's sctir_* samples into Ray gauges tagged with `replica`."""

    def __init__(self, api: Collaborators, replica: str) -> None:
        self.api = api
        self.replica = replica
        self.gauges: dict[str, Gauge] = {}

    async def publish(self) -> None:
        """One copy of every sample, the engine's readiness checked first as a scrape of /metrics does (a
        sample's _created time is no count: left out)."""
        self.api.metrics.engine_ready.set(await engine_ready(self.api))
        for family in self.api.metrics.registry.collect():
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                gauge = self.gauges.get(sample.name)
                if gauge is None:
                    keys = (*sample.labels, REPLICA_LABEL)
                    gauge = self.gauges[sample.name] = Gauge(sample.name, family.documentation, tag_keys=keys)
                gauge.set(sample.value, tags={**sample.labels, REPLICA_LABEL: self.replica})

    async def run(self) -> None:
        while True:
            try:
                await self.publish()
            except Exception:  # a copy that failed is retried next time; the replica serves on regardless
                log.warning("could not export the solver's metrics to Ray's", exc_info=True)
            await asyncio.sleep(PUBLISH_EVERY_S)


def mirrored(app: FastAPI, replica: str) -> FastAPI:
    """`app`, its lifespan extended: while it serves, its metrics are copied to Ray's every few seconds."""
    inner: Callable[[Any], AbstractAsyncContextManager[Any]] = app.router.lifespan_context
    mirror = RayMetricsMirror(app.state.collaborators, replica)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[Any]:
        async with inner(app) as state:
            task = asyncio.create_task(mirror.run())
            try:
                yield state
            finally:
                task.cancel()

    app.router.lifespan_context = lifespan
    return app
