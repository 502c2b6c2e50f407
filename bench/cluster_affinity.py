"""Problem affinity on a Ray cluster: vLLM prefix-cache hits with the affinity router vs Serve's default routing.

    flock /tmp/ray-cluster.lock python -m bench.cluster_affinity            # prints the table
    flock /tmp/ray-cluster.lock python -m bench.cluster_affinity --write    # BENCHMARKS.md's section

A simulated cluster (tests/support/ray_cluster.py: a head and two workers) with two engine replicas (vLLM on
CPU, the demo model) and two solver replicas (Docker sandbox where Docker runs, else the local executor).
The same held-out synthetic problems with the same seeds go through Serve's HTTP proxy, all at once, twice:
with SCTIR_RAY_AFFINITY on (service.cluster.router.AffinityRouter) and off (Serve's default power-of-two
router), each on a fresh deployment (the application is deleted in between, so both start with cold prefix
caches). Early stopping is off so both runs do the same work: the answers must be the same (the run fails if
not). vLLM's prefix-cache counters (queries and hits, in prompt tokens) are read per engine replica from
Ray's metrics agents, where the replicas export them, before and after each run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

from bench.sandbox import write_section
from service.settings import Settings
from tests.support.docker import docker_problem
from training.synthetic import heldout_problems

console = Console(stderr=True)
DEMO_MODEL = Path(__file__).resolve().parent.parent / "models" / "demo"
TIMEOUT_S = 900.0
COUNTERS = ("prefix_cache_queries", "prefix_cache_hits", "prompt_tokens", "generation_tokens")
SERIES = re.compile(r"^ray_vllm_(" + "|".join(COUNTERS) + r")(?:_total)?\{([^}]*)\} (\S+)$")
REPLICA = re.compile(r'ReplicaId="([^"]+)"')
# vLLM's CPU default (128 tokens) is longer than most of the demo model's prompts and steps, so nothing would
# ever hit; 32 is the smallest the CPU attention takes (GPUs default to 16).
BLOCK_SIZE = 32
SETTLE_S = 60.0  # Ray's metrics agents report every few seconds: wait until the counters stop moving


def bench_settings(problems: int, num_samples: int, max_steps: int, affinity: bool = True) -> Settings:
    """The service's settings on the cluster: the demo model, every problem in flight at once on any solver
    replica, early stopping off (a seed does the same work whichever router runs it)."""
    return Settings(
        model=str(DEMO_MODEL),
        executor="local" if docker_problem() else "docker",
        max_model_len=1024,
        kv_cache_memory_bytes=256 * 2**20,
        block_size=BLOCK_SIZE,
        num_samples=num_samples,
        max_steps=max_steps,
        early_stop=False,
        max_in_flight=problems,
        sandbox_pool_size=1,
        sandbox_max_containers=4,
        sandbox_pool_name="sctir-cluster-bench",
        ray_affinity=affinity,
    )


@dataclass
class Solved:
    request_id: str
    seconds: float
    body: dict[str, Any]


async def solve_all(url: str, bodies: list[dict[str, Any]], prefix: str, on_done: Any = None) -> list[Solved]:
    """Every body to /solve at once (request ids `prefix`0, 1, ...), each timed from send to whole answer.
    `on_done(index)` is called as each comes back."""
    async with httpx.AsyncClient(timeout=TIMEOUT_S) as client:

        async def solve(index: int) -> Solved:
            request_id = f"{prefix}{index}"
            started = time.perf_counter()
            response = await client.post(f"{url}/solve", json=bodies[index], headers={"X-Request-Id": request_id})
            response.raise_for_status()
            if on_done:
                on_done(index)
            return Solved(request_id, time.perf_counter() - started, response.json())

        return list(await asyncio.gather(*(solve(i) for i in range(len(bodies)))))


def counters(metrics: str) -> Counter[tuple[str, str]]:
    """(counter, engine replica) -> value, of vLLM's counters in Ray's metrics text."""
    values: Counter[tuple[str, str]] = Counter()
    for line in metrics.splitlines():
        if (match := SERIES.match(line)) and (replica := REPLICA.search(match.group(2))):
            values[match.group(1), replica.group(1)] += float(match.group(3))
    return values


@dataclass
class Run:
    affinity: bool
    solved: list[Solved]
    wall_s: float
    deltas: Counter[tuple[str, str]]  # counter increments of this run, per (counter, replica)
    steps_per_replica: Counter[str] = field(default_factory=Counter)
    single_replica_problems: int = 0  # problems all of whose steps one engine replica generated

    def total(self, name: str) -> float:
        return sum(value for (counter, _), value in self.deltas.items() if counter == name)

    @property
    def hit_rate(self) -> float:
        return self.total("prefix_cache_hits") / max(1.0, self.total("prefix_cache_queries"))

    def outcomes(self) -> list[tuple]:
        return [(s.body["answer"], s.body["votes"], [c["text"] for c in s.body["candidates"]]) for s in self.solved]


def settled_counters(cluster: Any, before: Counter[tuple[str, str]], tokens: int) -> Counter[tuple[str, str]]:
    """This run's increments once the agents have the replicas' last report: the generated tokens reach what
    the responses say (`tokens`) and the counters stop moving (bounded by SETTLE_S)."""
    deadline, last = time.monotonic() + SETTLE_S, None
    while True:
        now = counters(cluster.metrics())
        deltas = Counter({key: now[key] - before[key] for key in now if now[key] != before[key]})
        generated = sum(value for (name, _), value in deltas.items() if name == "generation_tokens")
        if (generated >= tokens and deltas == last) or time.monotonic() > deadline:
            return deltas
        last = deltas
        time.sleep(3)


def measure(cluster: Any, affinity: bool, args: argparse.Namespace) -> Run:
    """One fresh deployment with affinity on or off, every problem solved once with its seed, then removed."""
    from service.cluster.app import build_app
    from tests.support.ray_cluster import placed

    settings = bench_settings(args.problems, args.num_samples, args.max_steps, affinity)
    cluster.deploy(build_app(settings, engine_options=placed(2, "engine"), solver_options=placed(2, "solver")))
    try:
        bodies = [
            {"problem": p.problem, "seed": i, "num_samples": args.num_samples, "return_traces": True}
            for i, p in enumerate(heldout_problems(args.problems))
        ]
        before = counters(cluster.metrics())
        started = time.perf_counter()
        solved = asyncio.run(solve_all(cluster.url, bodies, f"affinity-{'on' if affinity else 'off'}-"))
        wall_s = time.perf_counter() - started
        tokens = sum(s.body["usage"]["completion_tokens"] for s in solved)
        run = Run(affinity, solved, wall_s, settled_counters(cluster, before, tokens))
        ledgers = cluster.ledgers(solvers=2)
        for s in solved:
            replicas = ledgers[s.request_id].replicas
            run.steps_per_replica.update(replicas)
            run.single_replica_problems += len(replicas) == 1
        console.print(f"affinity {affinity}: {wall_s:.1f} s, prefix-cache hit rate {run.hit_rate:.3f}")
        return run
    finally:
        cluster.remove()


def markdown(runs: list[Run], command: str, args: argparse.Namespace) -> str:
    on, off = (next(r for r in runs if r.affinity is a) for a in (True, False))
    median = statistics.median

    def row(label: str, value: Any) -> str:
        return f"| {label} | {value(on)} | {value(off)} |"

    def split(run: Run) -> str:
        return " / ".join(str(int(n)) for _, n in sorted(run.steps_per_replica.items()))

    return "\n".join(
        [
            "<!-- bench/cluster_affinity.py: start -->",
            "## Ray cluster: problem affinity vs Serve's default routing (bench/cluster_affinity.py)",
            "",
            f"Command: `{command}`",
            "",
            "A simulated Ray cluster on this machine (head + two worker nodes, tests/support/ray_cluster.py): two "
            "engine replicas (vLLM on CPU, the demo model) and two solver replicas, code in the "
            f"{bench_settings(1, 1, 1).executor.value} executor. The same {args.problems} held-out synthetic "
            f"problems (problem i with seed i, N={args.num_samples}, M={args.max_steps}, early stopping off) "
            "through Serve's HTTP proxy, all at once, on a fresh deployment each (cold prefix caches): with "
            "SCTIR_RAY_AFFINITY on (AffinityRouter) and off (Serve's default power-of-two router). KV-cache "
            f"blocks of {BLOCK_SIZE} tokens (SCTIR_BLOCK_SIZE; vLLM's CPU default of 128 is longer than most of the "
            "demo model's prompts, and only whole blocks are shared). Prefix-cache counters are vLLM's "
            "(`vllm:prefix_cache_queries` / `vllm:prefix_cache_hits`, prompt tokens), read "
            "per engine replica from Ray's metrics agents (`ray_vllm_*`, label ReplicaId) before and after each "
            f"run. Machine: {os.cpu_count()} cores, no GPU, shared with other work (load average "
            f"{os.getloadavg()[0]:.1f} at the end).",
            "",
            "| measure | affinity on | default routing |",
            "| --- | ---: | ---: |",
            row("prefix-cache queries (tokens)", lambda r: f"{r.total('prefix_cache_queries'):.0f}"),
            row("prefix-cache hits (tokens)", lambda r: f"{r.total('prefix_cache_hits'):.0f}"),
            row("**hit rate** (hits / queries)", lambda r: f"**{r.hit_rate:.3f}**"),
            row("prompt tokens prefilled (queries - hits)", lambda r: f"{_missed(r):.0f}"),
            row("prompt tokens (vLLM)", lambda r: f"{r.total('prompt_tokens'):.0f}"),
            row("generated tokens (vLLM)", lambda r: f"{r.total('generation_tokens'):.0f}"),
            row("wall time per problem, median", lambda r: f"{median(s.seconds for s in r.solved):.1f} s"),
            row("wall time of the run (all at once)", lambda r: f"{r.wall_s:.1f} s"),
            row("steps per engine replica", split),
            row("problems served by one replica only", lambda r: f"{r.single_replica_problems} of {len(r.solved)}"),
            "",
            f"Hit rate, affinity / default: **{on.hit_rate / max(off.hit_rate, 1e-9):.2f}x**; prompt tokens "
            f"prefilled, default / affinity: {_missed(off) / max(_missed(on), 1.0):.2f}x. Same answers and texts "
            f"both ways: {on.outcomes() == off.outcomes()}. With the demo model the gain is bounded: its steps are "
            "short (a few dozen tokens), so most of what a step can reuse is the problem's prompt, which either "
            "router soon has cached on both replicas; what only affinity keeps (a candidate's earlier steps) is a "
            "block or two per step. A real model's steps run to hundreds of tokens, where that part is most of a "
            "step's prompt (not measured here: no such model runs on this machine).",
            "<!-- bench/cluster_affinity.py: end -->",
        ]
    )


def _missed(run: Run) -> float:
    return run.total("prefix_cache_queries") - run.total("prefix_cache_hits")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", type=int, default=16)
    parser.add_argument("--num-samples", type=int, default=8)
    parser.add_argument("--max-steps", type=int, default=4)
    parser.add_argument("--write", action="store_true", help="replace this benchmark's section of BENCHMARKS.md")
    args = parser.parse_args()
    from tests.support.ray_cluster import simulated_cluster

    with simulated_cluster(workers=2) as cluster:
        runs = [measure(cluster, affinity, args) for affinity in (False, True)]
    text = markdown(runs, " ".join(["python -m bench.cluster_affinity", *sys.argv[1:]]), args)
    print(text)
    if args.write:
        write_section(text)
    return 0 if runs[0].outcomes() == runs[1].outcomes() else 1


if __name__ == "__main__":
    sys.exit(main())
