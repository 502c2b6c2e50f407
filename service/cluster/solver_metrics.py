"""A solver replica's sctir_* metrics, exported through Ray's metrics with the replica's id.

A scrape of /metrics through Serve's proxy reaches whichever solver replica the proxy picks, so it cannot
read every replica. Each replica instead copies its app's Prometheus samples into Ray gauges every few
seconds; its node's Ray metrics agent serves them (as ray_sctir_*, labelled ReplicaId) with Ray's and vLLM's,
and deploy/ray/prometheus.yml renames them back to sctir_*. Counters and histogram buckets go out as gauges
holding their running totals: Prometheus' rate() and histogram_quantile() read them the same way.
"""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry
from ray.util.metrics import Gauge

PUBLISH_EVERY_S = 5.0  # well inside Ray's own export interval (10 s): a scrape is at most one interval behind
REPLICA_LABEL = "ReplicaId"  # the label vLLM's engine metrics carry too (vllm.v1.metrics.ray_wrappers)
# Not mirrored: a sample's creation time is no count, and the engine gauge is set only when /metrics is read
# (a replica's health is Serve's: its health checks and ray_serve_* metrics).
SKIPPED = ("_created", "sctir_engine_ready")


class RayMetricsMirror:
    """Copies `registry`'s samples into Ray gauges tagged with `replica` until stopped (a daemon thread)."""

    def __init__(self, registry: CollectorRegistry, replica: str) -> None:
        self.registry = registry
        self.replica = replica
        self.gauges: dict[str, Gauge] = {}
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="sctir-metrics-to-ray", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopped.set()

    def publish(self) -> None:
        """One copy of every sample but the SKIPPED."""
        for family in self.registry.collect():
            for sample in family.samples:
                if sample.name.endswith(SKIPPED):
                    continue
                gauge = self.gauges.get(sample.name)
                if gauge is None:
                    keys = (*sample.labels, REPLICA_LABEL)
                    gauge = self.gauges[sample.name] = Gauge(sample.name, family.documentation, tag_keys=keys)
                gauge.set(sample.value, tags={**sample.labels, REPLICA_LABEL: self.replica})

    def _run(self) -> None:
        while not self.stopped.wait(PUBLISH_EVERY_S):
            self.publish()
