"""Prometheus collectors of the solver, all named under the `sctir_` prefix.

Buckets follow the real ranges on a T4: a problem takes seconds (an easy one
with early stopping) to tens of minutes (N=48, M=4, 2048 tokens per step),
a code block milliseconds (warm sandbox) to its timeout.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from sandbox.execution import ExecutionResult, ExecutionStatus
from service.solver import CandidateStatus, SolveResult

SOLVE_BUCKETS = (1, 2.5, 5, 10, 20, 30, 45, 60, 90, 120, 180, 240, 300, 450, 600, 900, 1200, 1800, 2700, 3600)
AGREEMENT_BUCKETS = tuple(i / 20 for i in range(1, 21))  # 0.05 .. 1.0
STEP_BUCKETS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16)
EXECUTION_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)


class Metrics:
    """One registry per app, so tests (and several apps in one process) never share counts."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.solve_seconds = Histogram(
            "sctir_solve_duration_seconds",
            "Wall time of a /solve request, queueing included, by outcome.",
            ["outcome"],
            buckets=SOLVE_BUCKETS,
            registry=r,
        )
        self.agreement = Histogram(
            "sctir_vote_agreement",
            "Winning votes / valid votes of each answered problem.",
            buckets=AGREEMENT_BUCKETS,
            registry=r,
        )
        self.candidates = Counter("sctir_candidates", "Candidates by final status.", ["status"], registry=r)
        self.candidate_steps = Histogram(
            "sctir_candidate_steps", "Generation steps per candidate.", buckets=STEP_BUCKETS, registry=r
        )
        self.executions = Counter("sctir_code_executions", "Code blocks executed, by result.", ["result"], registry=r)
        self.execution_seconds = Histogram(
            "sctir_code_execution_duration_seconds",
            "Latency of one code execution as the solver saw it.",
            buckets=EXECUTION_BUCKETS,
            registry=r,
        )
        self.tokens = Counter("sctir_tokens", "Tokens processed by the engine.", ["kind"], registry=r)
        self.early_stops = Counter(
            "sctir_early_stops", "Problems stopped early because the leader was unbeatable.", registry=r
        )
        self.in_flight = Gauge("sctir_requests_in_flight", "Problems being solved.", registry=r)
        self.queued = Gauge("sctir_requests_queued", "Problems waiting for a solver slot.", registry=r)
        self.engine_ready = Gauge("sctir_engine_ready", "1 when the engine can take requests.", registry=r)
        for status in CandidateStatus:
            self.candidates.labels(status.value)
        for result in ExecutionStatus:
            self.executions.labels(result.value)
        for kind in ("prompt", "completion"):
            self.tokens.labels(kind)

    def track_sandbox(self, stats: Callable[[], dict]) -> None:
        """Export the sandbox pool's own counters (sandbox.executors.DockerExecutor.stats) at each scrape."""
        self.registry.register(_SandboxCollector(stats))

    def track_queue(self, in_flight: Callable[[], int], queued: Callable[[], int]) -> None:
        self.in_flight.set_function(in_flight)
        self.queued.set_function(queued)

    def observe_execution(self, result: ExecutionResult, seconds: float) -> None:
        self.executions.labels(result.status.value).inc()
        self.execution_seconds.observe(seconds)

    def observe_solve(self, result: SolveResult, seconds: float, all_failed: bool = False) -> None:
        """One finished /solve; `all_failed`: every candidate failed, so the API answered 503 (outcome "error")."""
        if all_failed:
            outcome = "error"
        elif result.deadline_hit:
            outcome = "deadline"
        else:
            outcome = "answered" if result.answer is not None else "no_answer"
        self.solve_seconds.labels(outcome).observe(seconds)
        if result.answer is not None:
            self.agreement.observe(result.agreement)
        if result.stopped_early:
            self.early_stops.inc()
        for candidate in result.candidates:
            self.candidates.labels(candidate.status.value).inc()
            self.candidate_steps.observe(candidate.steps)
        self.tokens.labels("prompt").inc(result.prompt_tokens)
        self.tokens.labels("completion").inc(result.completion_tokens)

    def exposition(self) -> bytes:
        """Ours, then the process-wide registry (process stats, and vLLM's own when it runs in-process)."""
        return generate_latest(self.registry) + generate_latest(REGISTRY)


class _SandboxCollector(Collector):
    def __init__(self, stats: Callable[[], dict]) -> None:
        self.stats = stats

    def collect(self):
        stats = self.stats()
        containers = GaugeMetricFamily(
            "sctir_sandbox_containers", "Sandbox containers by state (leased: to one request).", labels=["state"]
        )
        containers.add_metric(["idle"], stats["idle"])
        containers.add_metric(["leased"], stats["leased"])
        containers.add_metric(["starting"], stats["starting"])
        yield containers
        yield GaugeMetricFamily("sctir_sandbox_busy", "Code blocks running in the pool.", value=stats["busy"])
        yield GaugeMetricFamily(
            "sctir_sandbox_sessions",
            "Candidates' sessions (interpreters kept between blocks) open in the pool.",
            value=stats["sessions"],
        )
        yield GaugeMetricFamily(
            "sctir_sandbox_capacity", "Code blocks the pool can run at once.", value=stats["capacity"]
        )
        yield CounterMetricFamily(
            "sctir_sandbox_replaced", "Sandbox containers replaced after dying or hanging.", value=stats["replaced"]
        )
        yield CounterMetricFamily(
            "sctir_sandbox_released", "Sandbox containers destroyed as their request ended.", value=stats["released"]
        )
