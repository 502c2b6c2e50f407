"""`docker-compose up` for real: the CPU profile of the stack (docker-compose.yml + docker-compose.cpu.yml).

Up with the images scripts/build-compose-images.sh builds (make test builds them: test-system), under a
project of its own on free published ports; healthy (the solver's /readyz: vLLM on CPU and the sandbox
pool, whose containers it starts through the socket proxy); the README's examples answered through the
published port; Prometheus scraping the solver by its service name, with data for every dashboard
panel; the solver still solving after the proxy restarts; and `docker-compose down -v` leaves no
container (the sandbox containers the solver started included), network or volume behind.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest

from bench.compose import Stack, Timeline, missing_images, prometheus_query, solve, stack_up, wait_healthy, wait_scraped
from sandbox.backends.owners import LABEL_OWNER, LABEL_POOL
from tests.support.docker import require_docker, unavailable
from tests.support.prometheus import dashboard_queries, panels_without_data
from training.synthetic import EXAMPLES

LABEL_PROJECT = "com.docker.compose.project"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_docker()
    if shutil.which("docker-compose") is None:
        unavailable("docker-compose is not installed (Debian package docker-compose)", "SCTIR_REQUIRE_DOCKER")
    if missing := missing_images():
        unavailable(f"not built: {', '.join(missing)}: run scripts/build-compose-images.sh", "SCTIR_REQUIRE_DOCKER")
    log = tmp_path_factory.mktemp("compose") / "compose.log"
    with stack_up(log, Timeline()) as stack:
        try:
            wait_healthy(stack)
        except (RuntimeError, TimeoutError) as error:
            pytest.fail(f"{error}\n{stack.compose('logs', '--no-color', '--tail', '60').stdout[-4000:]}")
        yield stack


def test_the_readmes_examples_are_answered_through_the_published_port(stack: Stack) -> None:
    answers = {example.problem: solve(stack, example.problem)["answer"] for example in EXAMPLES}
    assert answers == {example.problem: str(example.answer) for example in EXAMPLES}


def test_prometheus_scrapes_the_solver_by_its_service_name(stack: Stack) -> None:
    series = wait_scraped(stack, len(EXAMPLES))
    names = {s["metric"]["__name__"] for s in series}
    assert {"sctir_solve_duration_seconds_count", "sctir_candidates_total", "sctir_code_executions_total"} <= names
    (up,) = prometheus_query(stack, 'up{job="sctir"}')
    assert up["metric"]["instance"] == "solver:8080" and up["value"][1] == "1"


def test_every_dashboard_panel_has_data_in_the_stacks_prometheus(stack: Stack) -> None:
    """Grafana is not installed here: its dashboard's queries run against the stack's own Prometheus."""
    queries = dashboard_queries()
    assert any("vllm:" in expr for _, expr in queries)  # the in-process engine's series, through the solver
    assert not panels_without_data(stack.prometheus_url, queries)


def test_the_solver_keeps_solving_after_the_socket_proxy_restarts(stack: Stack) -> None:
    stack.compose("restart", "docker-api")
    deadline = time.monotonic() + 120
    while httpx.get(f"{stack.solver_url}/readyz", timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "the sandbox pool did not come back through the restarted proxy"
        time.sleep(1)
    example = EXAMPLES[0]
    assert solve(stack, example.problem)["answer"] == str(example.answer)


def sandbox_owners() -> list[str]:
    """The owner label (hostname:pid) of every sandbox container of the pool name the stack's solver uses."""
    listing = subprocess.run(
        ["docker", "ps", "-a", "--filter", f"label={LABEL_POOL}=sctir", "--format", f'{{{{.Label "{LABEL_OWNER}"}}}}'],
        capture_output=True,
        text=True,
        check=True,
    )
    return listing.stdout.split()


def test_down_leaves_no_container_network_or_volume_behind(stack: Stack) -> None:
    solver = stack.container("solver")
    inspect = ["docker", "inspect", "-f", "{{.Config.Hostname}}", solver]
    hostname = subprocess.run(inspect, capture_output=True, text=True, check=True).stdout.strip()
    assert any(owner.startswith(f"{hostname}:") for owner in sandbox_owners()), "no sandbox container of the solver"
    stack.compose("down", "-v", "--remove-orphans", "--timeout", "30")
    for kind in ("ps -a", "network ls", "volume ls"):
        listing = ["docker", *kind.split(), "-q", "--filter", f"label={LABEL_PROJECT}={stack.project}"]
        left = subprocess.run(listing, capture_output=True, text=True, check=True).stdout.split()
        assert left == [], f"docker {kind}: {left}"
    assert not [owner for owner in sandbox_owners() if owner.startswith(f"{hostname}:")], "sandbox containers left"
