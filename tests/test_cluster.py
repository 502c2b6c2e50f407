"""SC-TIR on a Ray Serve cluster (service.cluster), on a real multi-node Ray cluster simulated on this machine.

Three nodes (ray.cluster_utils.Cluster): a head (Serve's controller and HTTP proxy) and two workers, each
with one engine replica (vLLM on CPU, the demo model, which writes real code) and one solver replica (the
service's app as Serve's ingress, with its own Docker sandbox pool). Eight problems with N=8 go through
Serve's HTTP proxy and get the single-process service's answers for the same seeds; every step of a
problem runs on one engine replica; a step is aborted in its replica; vLLM's metrics and each solver
replica's come out of Ray's; and with an engine replica killed mid-problem every problem is still answered,
the same, its steps retried.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.api.app import create_app
from service.settings import Settings
from tests.support.docker import require_docker
from tests.support.servers import serve_in_thread
from tests.support.sse import read_stream
from training.synthetic import EXAMPLES

RAY_MISSING = "Ray Serve is not installed: pip install 'ray[serve]==2.60.0' (the cluster extra)"
pytest.importorskip("ray.serve", reason=RAY_MISSING, exc_type=ImportError)

import ray  # noqa: E402  (after the skip: the module needs Ray)
from ray import serve  # noqa: E402

from service.cluster.app import ENGINE, build_app  # noqa: E402
from service.cluster.engine import RayEngine  # noqa: E402
from service.cluster.ledger import ProblemRecord  # noqa: E402
from service.cluster.router import preferred_first  # noqa: E402
from service.engines.base import SamplingParams, StepRequest  # noqa: E402
from tests.support.ray_cluster import APP, SimulatedCluster, placed, simulated_cluster, wait_ready  # noqa: E402

PROBLEMS = [example.problem for example in EXAMPLES]
N = 8
TIMEOUT_S = 600.0


@pytest.fixture(scope="module")
def settings(vllm_installed: None, demo_model: Path) -> Settings:
    """The service's settings, the same in one process and on the cluster (early stopping off: every
    candidate runs to its end, so a seed's result does not depend on which candidate finished first)."""
    require_docker()
    return Settings(
        model=str(demo_model),
        max_model_len=1024,
        kv_cache_memory_bytes=256 * 2**20,
        num_samples=N,
        early_stop=False,
        max_in_flight=len(PROBLEMS),
        sandbox_pool_size=1,
        sandbox_max_containers=4,
        sandbox_pool_name="sctir-cluster-test",
    )


@pytest.fixture(scope="module")
def baseline(settings: Settings, vllm_cpu_env: None) -> list[dict[str, Any]]:
    """The single-process service's answers (vLLM in process), before the cluster starts: one engine at a time."""
    with serve_in_thread(create_app(settings), probe_path="/healthz", start_timeout_s=300) as url:
        wait_ready(url)
        return asyncio.run(solve_all(url, [f"single-{i}" for i in range(len(PROBLEMS))]))


@dataclass
class RayCluster:
    cluster: SimulatedCluster
    url: str  # Serve's HTTP proxy
    engines: dict[str, ray.actor.ActorHandle]  # engine replica id -> its actor

    def engine_handle(self) -> serve.handle.DeploymentHandle:
        return serve.get_deployment_handle(ENGINE, APP)

    def ledgers(self) -> dict[str, ProblemRecord]:
        return self.cluster.ledgers(solvers=2)

    def solver_ledgers(self) -> dict[str, dict[str, ProblemRecord]]:
        return self.cluster.solver_ledgers(solvers=2)


@pytest.fixture(scope="module")
def cluster(settings: Settings, baseline: list[dict[str, Any]]) -> Iterator[RayCluster]:
    """Head + two worker nodes; on each worker an engine replica and a solver replica."""
    with simulated_cluster(workers=2) as nodes:
        nodes.deploy(build_app(settings, engine_options=placed(2, "engine"), solver_options=placed(2, "solver")))
        yield RayCluster(nodes, nodes.url, engine_replicas(serve.get_deployment_handle(ENGINE, APP)))


def engine_replicas(handle: serve.handle.DeploymentHandle) -> dict[str, ray.actor.ActorHandle]:
    """Each engine replica's id and actor, reached through problem keys (the router sends a key to its replica)."""
    found: dict[str, ray.actor.ActorHandle] = {}
    for key in range(200):
        replica, actor = handle.options(session_id=f"probe-{key}").identity.remote().result(timeout_s=60)
        found[replica] = actor
        if len(found) == 2:
            return found
    raise AssertionError(f"only engine replicas {sorted(found)} answered")


def split_ids(prefix: str, replicas: list[str]) -> list[str]:
    """A request id per problem, chosen so that the problems alternate between the two engine replicas."""
    ids = []
    for index in range(len(PROBLEMS)):
        wanted = replicas[index % 2]
        key = next(k for k in range(1000) if preferred_first(f"{prefix}{index}-{k}", replicas, str)[0] == wanted)
        ids.append(f"{prefix}{index}-{key}")
    return ids


async def solve_all(url: str, request_ids: list[str]) -> list[dict[str, Any]]:
    """Every problem at once (problem i with seed i), with its traces."""
    async with httpx.AsyncClient(timeout=TIMEOUT_S) as client:

        async def solve(index: int) -> dict[str, Any]:
            body = {"problem": PROBLEMS[index], "seed": index, "return_traces": True}
            response = await client.post(f"{url}/solve", json=body, headers={"X-Request-Id": request_ids[index]})
            assert response.status_code == 200, response.text
            return response.json()

        return list(await asyncio.gather(*(solve(i) for i in range(len(PROBLEMS)))))


def outcome(response: dict[str, Any]) -> tuple:
    """What a seed must repeat: the vote and every candidate's status, answer and full text."""
    candidates = [(c["status"], c["answer"], c["steps"], c["text"]) for c in response["candidates"]]
    return response["answer"], response["votes"], candidates


@dataclass
class Solved:
    request_ids: list[str]
    responses: list[dict[str, Any]]
    ledgers: dict[str, ProblemRecord]
    expected_replica: dict[str, str]  # request id -> the engine replica its problem prefers


@pytest.fixture(scope="module")
def solved(cluster: RayCluster) -> Solved:
    replicas = sorted(cluster.engines)
    request_ids = split_ids("p", replicas)
    responses = asyncio.run(solve_all(cluster.url, request_ids))
    expected = {rid: preferred_first(rid, replicas, str)[0] for rid in request_ids}
    return Solved(request_ids, responses, cluster.ledgers(), expected)


def test_problems_through_the_proxy_get_the_single_process_answers(
    solved: Solved, baseline: list[dict[str, Any]]
) -> None:
    for index, (response, alone) in enumerate(zip(solved.responses, baseline, strict=True)):
        assert response["answer"] is not None, f"problem {index} unanswered: {response}"
        assert outcome(response) == outcome(alone), f"problem {index} differs from the single-process service"
    assert sum(c["executions"] for r in solved.responses for c in r["candidates"]) >= len(PROBLEMS)


def test_every_step_of_a_problem_runs_on_its_engine_replica(solved: Solved) -> None:
    for request_id, response in zip(solved.request_ids, solved.responses, strict=True):
        record = solved.ledgers[request_id]
        steps = sum(c["steps"] for c in response["candidates"])
        assert dict(record.replicas) == {solved.expected_replica[request_id]: steps}, request_id
        assert record.retried_steps == 0
    assert len(set(solved.expected_replica.values())) == 2  # both replicas served problems


def test_the_stream_crosses_the_handle(cluster: RayCluster, baseline: list[dict[str, Any]]) -> None:
    """Text deltas stream from the engine replica through the solver replica and the proxy to the client."""
    body = {"problem": PROBLEMS[0], "seed": 0, "return_traces": True, "stream": True}
    with httpx.stream("POST", f"{cluster.url}/solve", json=body, timeout=TIMEOUT_S) as response:
        assert response.status_code == 200
        streamed = read_stream(response)
    result = streamed.named("result")[0]
    assert outcome(result) == outcome(baseline[0])
    for index, candidate in enumerate(result["candidates"]):
        told = "".join(data["text"] for event, data in streamed.of_candidate(index) if event == "step")
        assert told and candidate["text"].startswith(told[:20])


def test_an_abort_reaches_the_replica_running_the_step(cluster: RayCluster) -> None:
    async def run() -> tuple[str, int, int, str]:
        engine = RayEngine(cluster.engine_handle())
        await engine.start()
        told: list[str] = []
        # Seed 4 at T=2.0 writes 900 tokens of the demo model's noise (seconds): it is running when aborted.
        params = SamplingParams(temperature=2.0, max_new_tokens=900, seed=4)
        prompt = engine.format_prompt(PROBLEMS[0])
        step = asyncio.create_task(engine.complete(StepRequest("abort-probe-0-0", prompt, params, on_text=told.append)))
        while not told:
            await asyncio.sleep(0.01)
        problem = cluster.engine_handle().options(session_id="abort-probe")
        before = await problem.unfinished_requests.remote()
        await engine.abort("abort-probe-0-0")
        result = await step
        deadline = time.monotonic() + 10
        while (after := await problem.unfinished_requests.remote()) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        return result.finish_reason, before, after, "".join(told)

    finish_reason, before, after, told = asyncio.run(run())
    assert (finish_reason, before, after) == ("abort", 1, 0)
    assert told


def test_vllm_metrics_come_out_of_every_engine_replica(cluster: RayCluster, solved: Solved) -> None:
    """vLLM's own metrics, through Ray's metrics agents, one series per replica (the ReplicaId label)."""
    deadline = time.monotonic() + 60
    while True:
        text = cluster.cluster.metrics()
        reporting = {
            replica
            for replica in cluster.engines
            if any(
                line.startswith("ray_vllm_generation_tokens") and f'ReplicaId="{replica}"' in line
                for line in text.splitlines()
            )
        }
        if reporting == set(cluster.engines) or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert reporting == set(cluster.engines)


def test_the_solvers_metrics_come_out_of_every_solver_replica(cluster: RayCluster, solved: Solved) -> None:
    """The solver's sctir_* through Ray's metrics agents, per solver replica (ReplicaId): each counts the
    candidates of the problems it solved, and only those (a scrape through Serve's proxy reads one replica)."""
    expected = {replica: float(N * len(ledger)) for replica, ledger in cluster.solver_ledgers().items()}
    ports = {node["MetricsExportPort"] for node in ray.nodes() if node["Alive"]}
    deadline = time.monotonic() + 60
    while True:
        counted: dict[str, float] = dict.fromkeys(expected, 0.0)
        for port in ports:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if sample.name == "ray_sctir_candidates_total":
                        replica = sample.labels["ReplicaId"]
                        counted[replica] = counted.get(replica, 0.0) + sample.value
        if counted == expected or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert counted == expected
    assert sum(expected.values()) >= N * len(PROBLEMS)  # the solved problems' candidates (and any streamed since)


def test_a_killed_engine_replica_costs_no_problem(
    cluster: RayCluster, solved: Solved, baseline: list[dict[str, Any]]
) -> None:
    """An engine replica killed while it generates: its steps go to the other replica (same text so far, same
    seed), every problem is answered as before, and the retried steps are counted. (Last: it kills a replica.)"""
    replicas = sorted(cluster.engines)
    victim = replicas[0]
    request_ids = split_ids("q", replicas)
    on_victim = [rid for rid in request_ids if preferred_first(rid, replicas, str)[0] == victim]

    async def run() -> list[dict[str, Any]]:
        solving = asyncio.create_task(solve_all(cluster.url, request_ids))
        watch = cluster.engine_handle().options(session_id=on_victim[0])
        deadline = time.monotonic() + TIMEOUT_S
        while not await watch.unfinished_requests.remote():
            assert not solving.done() and time.monotonic() < deadline, "the victim never had a step in flight"
            await asyncio.sleep(0.02)
        ray.kill(cluster.engines[victim], no_restart=True)
        return await solving

    responses = asyncio.run(run())
    for index, (response, alone) in enumerate(zip(responses, baseline, strict=True)):
        assert response["answer"] is not None, f"problem {index} unanswered: {response}"
        assert outcome(response) == outcome(alone), f"problem {index} differs from the single-process service"
    ledgers = cluster.ledgers()
    retried = {rid: ledgers[rid].retried_steps for rid in request_ids}
    assert sum(retried[rid] for rid in on_victim) >= 1, retried
    assert [response["retried_steps"] for response in responses] == [retried[rid] for rid in request_ids]
    assert all(retried[rid] == 0 for rid in request_ids if rid not in on_victim), retried
    for rid in on_victim:
        record = ledgers[rid]
        assert record.retried_steps <= sum(record.replicas.values())
