"""Autoscaling on a Ray cluster: the engine deployment goes from 1 to 2 replicas under a burst of problems, and back.

    flock /tmp/ray-cluster.lock python -m bench.cluster_autoscale            # prints the timeline
    flock /tmp/ray-cluster.lock python -m bench.cluster_autoscale --write    # BENCHMARKS.md's section

A simulated cluster (tests/support/ray_cluster.py: a head and two workers, each with room for one engine
replica) with one solver replica and an engine deployment autoscaled by Serve between 1 and 2 replicas on
ongoing steps, with thresholds low enough for the demo model on CPU (AUTOSCALING; Serve's autoscaling
metrics pushed every second instead of every 10 s). A burst keeps --concurrency held-out problems in flight
for --burst-s seconds, then the cluster idles until the deployment is back to one replica. Every second the
engine deployment's replicas by state (serve.status(), the controller's view) and the problems in flight
are sampled with their time. The run fails unless it went 1 -> 2 -> 1 and the second replica served steps.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from bench.cluster_affinity import TIMEOUT_S, bench_settings, console, solve_all
from bench.sandbox import write_section
from training.synthetic import heldout_problems

# Low thresholds so that a handful of problems on the demo model scale it: a replica's target is 2 steps in
# flight (one problem has up to N at once), averaged over 5 s; up after 2 s over target, down after 30 s under
# it (the demo model's steps are short and its candidates wait on code execution, so the steps in flight dip
# within a burst: a shorter delay scales down and up again in the middle of it).
AUTOSCALING = {
    "min_replicas": 1,
    "initial_replicas": 1,
    "max_replicas": 2,
    "target_ongoing_requests": 2,
    "look_back_period_s": 5,
    "upscale_delay_s": 2,
    "downscale_delay_s": 30,
}
PUSH_INTERVAL_S = "1"  # how often handles and replicas report ongoing requests to the controller (Serve: 10)
SERVE_ENV = {
    "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": PUSH_INTERVAL_S,
    "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": PUSH_INTERVAL_S,
}


@dataclass(frozen=True)
class Sample:
    t: float  # seconds since the burst started
    running: int  # engine replicas RUNNING
    starting: int  # engine replicas STARTING
    stopping: int  # engine replicas STOPPING
    in_flight: int  # problems sent and not yet answered
    status: str  # the engine deployment's status (HEALTHY, UPSCALING, DOWNSCALING...)


@dataclass
class Timeline:
    samples: list[Sample] = field(default_factory=list)
    burst_end_s: float = 0.0  # the last problem of the burst answered
    problems: int = 0
    steps_per_replica: Counter[str] = field(default_factory=Counter)

    def first(self, predicate: Any, after: float = -1.0) -> Sample | None:
        return next((s for s in self.samples if s.t > after and predicate(s)), None)

    def events(self) -> list[tuple[float, str]]:
        """When the replica count changed (and in which state), with the burst's start and end."""
        found = [(0.0, "burst starts")]
        for previous, sample in itertools.pairwise(self.samples):
            if (previous.running, previous.starting, previous.stopping) != (
                sample.running,
                sample.starting,
                sample.stopping,
            ):
                found.append((sample.t, f"replicas: {describe(sample)} ({sample.status})"))
        found.append((self.burst_end_s, "burst ends (last problem answered)"))
        return sorted(found)

    def scaled(self) -> bool:
        """1 -> 2 -> 1: two running after the start, and one again after that."""
        up = self.first(lambda s: s.running == 2)
        return up is not None and self.first(lambda s: s.running == 1 and not s.stopping, after=up.t) is not None


def describe(sample: Sample) -> str:
    parts = [f"{sample.running} running"]
    parts += [f"{n} {state}" for n, state in ((sample.starting, "starting"), (sample.stopping, "stopping")) if n]
    return ", ".join(parts)


def engine_states() -> tuple[Counter[str], str]:
    """The engine deployment's replicas by state and its status, as Serve's controller sees them."""
    from ray import serve

    from service.cluster.app import ENGINE
    from tests.support.ray_cluster import APP

    deployment = serve.status().applications[APP].deployments[ENGINE]
    states = Counter({str(getattr(state, "value", state)): n for state, n in deployment.replica_states.items()})
    return states, str(getattr(deployment.status, "value", deployment.status))


async def burst(url: str, args: argparse.Namespace, timeline: Timeline, started: float) -> None:
    """--concurrency problems in flight until --burst-s, then sample until one replica is left (bounded)."""
    problems = heldout_problems(args.problems)
    in_flight = 0
    stop = asyncio.Event()

    async def sample() -> None:
        while not stop.is_set():
            states, status = await asyncio.to_thread(engine_states)
            timeline.samples.append(
                Sample(
                    time.monotonic() - started,
                    states["RUNNING"],
                    states["STARTING"],
                    states["STOPPING"],
                    in_flight,
                    status,
                )
            )
            await asyncio.sleep(args.sample_s)

    async def worker(lane: int) -> None:
        nonlocal in_flight
        for index in itertools.count(lane, args.concurrency):
            if time.monotonic() - started > args.burst_s:
                return
            body = {"problem": problems[index % len(problems)].problem, "seed": index, "num_samples": args.num_samples}
            in_flight += 1
            try:
                await solve_all(url, [body], f"burst-{index}-")
            finally:
                in_flight -= 1
            timeline.problems += 1

    sampler = asyncio.create_task(sample())
    await asyncio.gather(*(worker(lane) for lane in range(args.concurrency)))
    timeline.burst_end_s = time.monotonic() - started
    console.print(f"burst over at {timeline.burst_end_s:.0f} s: {timeline.problems} problems")
    deadline = time.monotonic() + args.idle_max_s
    while time.monotonic() < deadline:
        last = timeline.samples[-1]
        if timeline.scaled() and last.running == 1 and not last.stopping:
            break
        await asyncio.sleep(args.sample_s)
    await asyncio.sleep(args.tail_s)  # a few samples after it settled
    stop.set()
    await sampler


def run(args: argparse.Namespace) -> Timeline:
    from service.cluster.app import build_app
    from tests.support.ray_cluster import placed, simulated_cluster

    settings = bench_settings(args.concurrency, args.num_samples, args.max_steps)
    engine = placed(None, "engine", autoscaling_config=AUTOSCALING)
    timeline = Timeline()
    with simulated_cluster(workers=2, env_vars=SERVE_ENV) as cluster:
        cluster.deploy(build_app(settings, engine_options=engine, solver_options=placed(1, "solver")))
        asyncio.run(asyncio.wait_for(burst(cluster.url, args, timeline, time.monotonic()), TIMEOUT_S * 2))
        for record in cluster.ledgers(solvers=1).values():
            timeline.steps_per_replica.update(record.replicas)
    return timeline


def markdown(timeline: Timeline, command: str, args: argparse.Namespace) -> str:
    rows = [
        f"| {s.t:.0f} | {'#' * s.running}{'+' * s.starting}{'-' * s.stopping} | {describe(s)} | {s.in_flight} |"
        for s in timeline.samples[:: args.every]
    ]
    events = [f"| {t:.0f} s | {what} |" for t, what in timeline.events()]
    served = " / ".join(str(n) for _, n in sorted(timeline.steps_per_replica.items()))
    config = ", ".join(f"{key}={value}" for key, value in AUTOSCALING.items())
    return "\n".join(
        [
            "<!-- bench/cluster_autoscale.py: start -->",
            "## Ray cluster: the engine deployment autoscaling 1 -> 2 -> 1 (bench/cluster_autoscale.py)",
            "",
            f"Command: `{command}`",
            "",
            "A simulated Ray cluster on this machine (head + two worker nodes, tests/support/ray_cluster.py), one "
            "solver replica, the engine deployment (vLLM on CPU, the demo model) autoscaled by Serve on ongoing "
            f"steps: {config}; Serve's autoscaling metrics pushed every {PUSH_INTERVAL_S} s. The burst keeps "
            f"{args.concurrency} held-out synthetic problems in flight (N={args.num_samples}, M={args.max_steps}, "
            f"each its own seed) for {args.burst_s:.0f} s; then nothing until the deployment is back to one "
            "replica. Replicas are sampled from serve.status() (the controller's view) every "
            f"{args.sample_s:g} s; times are seconds from the burst's start. Machine: {os.cpu_count()} cores, no "
            f"GPU, shared with other work (load average {os.getloadavg()[0]:.1f} at the end).",
            "",
            "| t | event |",
            "| ---: | --- |",
            *events,
            "",
            f"{timeline.problems} problems solved in the burst; steps generated per engine replica: {served}. "
            f"Scaled 1 -> 2 -> 1: **{timeline.scaled()}**.",
            "",
            f"Timeline, every {args.every * args.sample_s:g} s (`#` running, `+` starting, `-` stopping):",
            "",
            "| t (s) | engine replicas | states | problems in flight |",
            "| ---: | --- | --- | ---: |",
            *rows,
            "<!-- bench/cluster_autoscale.py: end -->",
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=6, help="problems in flight during the burst")
    parser.add_argument("--burst-s", type=float, default=90.0)
    parser.add_argument("--problems", type=int, default=16, help="held-out problems the burst cycles through")
    parser.add_argument("--num-samples", type=int, default=8)
    parser.add_argument("--max-steps", type=int, default=4)
    parser.add_argument("--sample-s", type=float, default=1.0)
    parser.add_argument("--idle-max-s", type=float, default=180.0, help="longest wait for the scale-down")
    parser.add_argument("--tail-s", type=float, default=5.0)
    parser.add_argument("--every", type=int, default=5, help="table rows: every so many samples")
    parser.add_argument("--write", action="store_true", help="replace this benchmark's section of BENCHMARKS.md")
    args = parser.parse_args()
    timeline = run(args)
    text = markdown(timeline, " ".join(["python -m bench.cluster_autoscale", *sys.argv[1:]]), args)
    print(text)
    if args.write:
        write_section(text)
    return 0 if timeline.scaled() and len(timeline.steps_per_replica) == 2 else 1


if __name__ == "__main__":
    sys.exit(main())
