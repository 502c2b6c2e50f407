"""Faults of the engine (issue 15 items 4-6): the engine killed and restarted, the engine frozen, and the
service killed with SIGKILL under its engine, then started again.

Remote engine: `sctir serve` against a separate vLLM server (`python -m vllm.entrypoints.openai.api_server`)
serving the shipped demo model, which the scenarios kill and start again, or stop (SIGSTOP of its process
group) and resume. In-process engine: the demo service, whose EngineCore child is stopped and resumed, and
a demo service killed with SIGKILL and started again. SLOW_PROBLEM makes the model write a block that runs
until the execution timeout, so a request is reliably still solving when the fault comes. A step stalls
after STALL_S without a token (SCTIR_ENGINE_STALL_S, 20 s by default: shorter here to keep the tier short).

Each scenario checks what the client gets (status, message, Retry-After, the candidates counted as failed),
that nothing is left running or held (processes, containers, the service's requests, sandbox blocks and
engine requests, the vLLM server's requests), and the time to recover.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from service.tir import NUMINA_PROMPT_TEMPLATE
from tests.faults.harness import Service, containers_of, demo_service_env, running_service, wait_until
from tests.support.docker import require_docker
from tests.support.fault_report import record
from tests.support.servers import free_port
from tests.support.tiny_model import VLLM_CPU_ENV, require_vllm

SLOW_PROBLEM = "What is 9^9^9?"
QUICK_PROBLEM, QUICK_ANSWER = "What is 2^10 - 1?", "1023"
SLOW_REQUEST = {"problem": SLOW_PROBLEM, "num_samples": 4, "max_steps": 3, "deadline_s": 60, "seed": 1}
QUICK_REQUEST = {"problem": QUICK_PROBLEM, "num_samples": 4, "seed": 2}
STALL_S = 5.0
SERVED_NAME = "sctir-demo"
SERVER_START_TIMEOUT_S = 240.0
POOL = "sctir-fault-engine"


# -- the pieces: a vLLM server, what a service holds, requests ----------------------------------------


@dataclass
class VllmServer:
    """A separate vLLM OpenAI server on the demo model, on a fixed port (so it can be started again)."""

    model: Path
    port: int
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        command = [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            *("--model", str(self.model), "--served-model-name", SERVED_NAME),
            *("--host", "127.0.0.1", "--port", str(self.port)),
            *("--dtype", "float32", "--max-model-len", "1024", "--kv-cache-memory-bytes", str(256 * 2**20)),
            *("--enforce-eager", "--seed", "0", "--disable-uvicorn-access-log"),
        ]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=os.environ | VLLM_CPU_ENV, start_new_session=True
            )

    def wait_up(self) -> float:
        """Seconds until it lists its model; fails with the log's tail if it exits first."""

        def up() -> bool:
            assert self.process is not None and self.process.poll() is None, self.log_path.read_text()[-3000:]
            try:
                return httpx.get(f"{self.url}/models", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        return wait_until(up, SERVER_START_TIMEOUT_S, interval_s=0.2)

    def signal_group(self, signum: int) -> None:
        """`signum` to the server and every process it started."""
        assert self.process is not None
        os.killpg(self.process.pid, signum)

    def kill(self) -> None:
        """SIGKILL to the whole server; returns once it is gone."""
        self.signal_group(signal.SIGKILL)
        assert self.process is not None
        self.process.wait(timeout=30)

    def requests(self) -> tuple[float, float]:
        """(running, waiting) requests, from the server's own /metrics."""
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=5).text
        values = {
            sample.name: sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name in ("vllm:num_requests_running", "vllm:num_requests_waiting")
        }
        return values["vllm:num_requests_running"], values["vllm:num_requests_waiting"]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.signal_group(signal.SIGCONT)  # a stopped process cannot act on SIGTERM
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


def wait_until_running_code(service: Service) -> None:
    """Until a candidate of the request in flight runs its first block (SLOW_PROBLEM's runs for the whole
    execution timeout): the fault then comes while that candidate still needs the engine for its next step,
    whereas a fault timed by a step in flight may land as the last tokens of the request's last step arrive."""
    wait_until(lambda: service.held()["sandbox_busy"] >= 1, timeout_s=30, interval_s=0.02)


def failed_candidates(service: Service) -> float:
    return service.metrics()['sctir_candidates_total{status="failed"}']


def solve(service: Service, body: dict, timeout_s: float = 120.0) -> tuple[httpx.Response, float]:
    """The response to POST /solve and the seconds it took."""
    started = time.monotonic()
    response = httpx.post(f"{service.url}/solve", json=body, timeout=timeout_s)
    return response, time.monotonic() - started


def answers_correctly(service: Service) -> bool:
    response, _ = solve(service, QUICK_REQUEST)
    return response.status_code == 200 and response.json()["answer"] == QUICK_ANSWER


def readyz(service: Service) -> httpx.Response:
    return httpx.get(f"{service.url}/readyz", timeout=30)


def not_ready_within(service: Service, timeout_s: float) -> float:
    """Seconds until /readyz says the engine is not ready (a 503 with Retry-After), its probe's own time included."""

    def not_ready() -> bool:
        response = readyz(service)
        if response.json()["engine"]:
            return False
        assert response.status_code == 503 and response.headers["retry-after"] == "5", response.text
        return True

    return wait_until(not_ready, timeout_s, interval_s=0.05)


def engine_ready_within(service: Service, timeout_s: float) -> float:
    """Seconds until /readyz says the engine is ready (the sandbox may still be warming a container)."""
    return wait_until(lambda: readyz(service).json()["engine"] is True, timeout_s, interval_s=0.05)


def post_in_background(url: str, body: dict) -> tuple[threading.Thread, list]:
    """POST /solve from a thread; the list gets the response (and the seconds it took) or the exception."""
    outcome: list = []

    def post() -> None:
        started = time.monotonic()
        try:
            outcome.append(httpx.post(f"{url}/solve", json=body, timeout=120))
        except httpx.HTTPError as error:
            outcome.append(error)
        outcome.append(time.monotonic() - started)

    thread = threading.Thread(target=post)
    thread.start()
    return thread, outcome


def running(processes: list) -> list:
    """Those of `processes` (psutil) still running: a zombie left for its new parent to reap has ended."""
    import psutil

    alive = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
        except psutil.NoSuchProcess:
            pass
    return alive


def descendants(service: Service) -> list:
    """The service's processes (psutil): vLLM's, the sandbox's helpers, multiprocessing's resource tracker."""
    import psutil

    return psutil.Process(service.pid).children(recursive=True)


def engine_processes(service: Service) -> list:
    """The service's vLLM processes (EngineCore, and its Worker on CPU), by their process titles."""
    return [p for p in descendants(service) if p.name().startswith("VLLM::")]


def engine_outage_503(response: httpx.Response, server: VllmServer) -> str:
    """The answer to a request whose every candidate found the remote engine gone; what the client got."""
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "5"
    message = response.json()["message"]
    failure = f"every candidate failed; first error: engine: POST {server.url}/completions failed: "
    assert message.startswith(failure), message
    kind, _, what = message.removeprefix(failure).partition(": ")
    assert kind.isidentifier() and what.strip(), message  # the exception's type, and what happened (never empty)
    return f"503 '{message.replace(server.url, '<server>/v1')}'"


def some_failed_in_flight(
    response: httpx.Response, failed_with: Callable[[str], bool], shown: str, finished_as: tuple[str, ...]
) -> str:
    """A 200 for a request solving when the engine failed: its candidates that still needed the engine failed
    (their errors pass `failed_with`); those already finished kept their status, one of `finished_as`."""
    assert response.status_code == 200, response.text
    candidates = response.json()["candidates"]
    failed = [c for c in candidates if c["status"] == "failed"]
    assert failed and all(failed_with(c["error"]) for c in failed), candidates
    assert all(c["status"] in finished_as for c in candidates if c not in failed)
    finished = ", ".join(sorted(c["status"] for c in candidates if c not in failed))
    return f"200 (answer {response.json()['answer']}): {len(failed)} candidates failed '{shown}', {finished} before"


def outage_in_flight(response: httpx.Response, server: VllmServer) -> str:
    """The answer to a request solving when the remote engine was killed: its candidates still generating, or
    starting a step after their code ran, failed with the engine's error; one that had already finished (the
    demo model sometimes ends a candidate in its first step) kept its result, and the request is a 200 then."""
    if response.status_code == 503:
        return engine_outage_503(response, server)
    outage = f"engine: POST {server.url}/completions failed: "
    return some_failed_in_flight(
        response, lambda error: error.startswith(outage), f"{outage}...", ("answered", "pruned", "exhausted")
    )


STALLED = f"engine: engine stalled: no token for {STALL_S:g} s"


def stalled_503(response: httpx.Response) -> str:
    """The answer to a request whose every candidate waited on a frozen engine; what the client got."""
    assert response.status_code == 503, response.text
    assert response.json()["message"] == f"every candidate failed; first error: {STALLED}"
    assert response.headers["retry-after"] == "5"
    return f"503 'every candidate failed; first error: {STALLED}'"


def stalled_in_flight(response: httpx.Response) -> str:
    """The answer to a request solving when the engine froze: its candidates still generating, or starting
    a step after their code ran, failed as stalled; those already finished kept their result (a 200 then)."""
    if response.status_code == 503:
        return stalled_503(response)
    return some_failed_in_flight(
        response, lambda error: error == STALLED, STALLED, ("answered", "pruned", "restarted", "exhausted")
    )


# -- the remote engine: the vLLM server killed and started again, stopped and resumed -----------------


@pytest.fixture(scope="module")
def remote(demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[VllmServer, Service]]:
    require_vllm()
    require_docker()
    logs = tmp_path_factory.mktemp("faults-engine-remote")
    server = VllmServer(demo_model, free_port(), logs / "vllm.log")
    server.start()
    try:
        server.wait_up()
        env = demo_service_env(
            demo_model,
            f"{POOL}-remote",
            SCTIR_ENGINE="remote",
            SCTIR_REMOTE_URL=server.url,
            SCTIR_MODEL=SERVED_NAME,
            SCTIR_PROMPT_TEMPLATE=NUMINA_PROMPT_TEMPLATE,  # the demo model's chat template
            SCTIR_MAX_NEW_TOKENS="256",  # the server refuses more than its 1024-token context
            SCTIR_ANSWER_MODE="integer",
            SCTIR_NUM_SAMPLES="4",
            SCTIR_EXECUTION_TIMEOUT_S="3",
            SCTIR_ENGINE_STALL_S=str(STALL_S),
        )
        with running_service(env, logs / "serve.log") as service:
            yield server, service
    finally:
        server.stop()


@pytest.fixture
def remote_up(remote: tuple[VllmServer, Service]) -> tuple[VllmServer, Service]:
    """`remote` with its server running and the service's engine ready, whatever the scenario before left."""
    server, service = remote
    if server.process is None or server.process.poll() is not None:
        server.start()
        server.wait_up()
    server.signal_group(signal.SIGCONT)
    engine_ready_within(service, timeout_s=30)
    return server, service


def test_remote_engine_killed_then_started_again(remote_up: tuple[VllmServer, Service]) -> None:
    server, service = remote_up
    assert answers_correctly(service)
    failed_before = failed_candidates(service)
    thread, outcome = post_in_background(service.url, SLOW_REQUEST)
    wait_until_running_code(service)
    server.kill()
    killed = time.monotonic()
    thread.join(timeout=30)
    in_flight, in_flight_s = outcome[0], time.monotonic() - killed
    in_flight_message = outage_in_flight(in_flight, server)
    assert in_flight_s < 10.0  # its candidates running code find the engine gone when they are done

    response, took_s = solve(service, QUICK_REQUEST)
    message = engine_outage_503(response, server)
    assert took_s < 5.0  # at once: nothing to wait for
    in_flight_failed = (
        SLOW_REQUEST["num_samples"]
        if in_flight.status_code == 503
        else sum(c["status"] == "failed" for c in in_flight.json()["candidates"])
    )
    assert failed_candidates(service) - failed_before == in_flight_failed + 4
    probe_s = not_ready_within(service, timeout_s=3)
    assert service.nothing_held()

    server.start()
    server_up_s = server.wait_up()
    up = time.monotonic()
    ready_s = engine_ready_within(service, timeout_s=10)
    assert answers_correctly(service)
    answered = time.monotonic()
    wait_until(lambda: service.nothing_held() and server.requests() == (0.0, 0.0), timeout_s=10)
    record(
        "remote engine: vLLM server killed (SIGKILL), then started again",
        client_gets=f"the request in flight, {in_flight_s:.1f} s after the kill: {in_flight_message}; a new one, in "
        f"{took_s:.2f} s: {message}; all with Retry-After: 5, every candidate failed; /readyz 503 (Retry-After) "
        f"within {probe_s:.2f} s; once the server was back ({server_up_s:.0f} s to start): engine ready in "
        f"{ready_s:.2f} s, 200 with the right answer, nothing done by hand",
        left_behind="nothing: no request, sandbox block or lease held; the restarted server holds no request",
        recovery_s=answered - up,  # from the server being back
    )


def test_remote_engine_frozen_then_resumed(remote_up: tuple[VllmServer, Service]) -> None:
    server, service = remote_up
    failed_before = failed_candidates(service)
    thread, outcome = post_in_background(service.url, SLOW_REQUEST)
    wait_until_running_code(service)
    server.signal_group(signal.SIGSTOP)
    frozen = time.monotonic()
    try:
        probe_s = not_ready_within(service, timeout_s=5)
        assert probe_s < 3.0  # tokens flowed a moment ago: 1 s for that to end, 1 s for the probe
        thread.join(timeout=60)
        in_flight = stalled_in_flight(outcome[0])
        in_flight_s = time.monotonic() - frozen
        assert (
            STALL_S - 1 <= in_flight_s < STALL_S + 10
        )  # its last token came a moment before the freeze  # the last step to start stalls STALL_S after it began
        new, new_s = solve(service, QUICK_REQUEST)
        new_answer = stalled_503(new)
        assert STALL_S <= new_s < STALL_S + 3
        assert failed_candidates(service) - failed_before >= 5  # the new request's 4, at least 1 in flight
        assert service.nothing_held()
    finally:
        server.signal_group(signal.SIGCONT)
    resumed = time.monotonic()
    ready_s = engine_ready_within(service, timeout_s=10)
    assert answers_correctly(service)
    answered_s = time.monotonic() - resumed
    wait_until(lambda: service.nothing_held() and server.requests() == (0.0, 0.0), timeout_s=15)
    record(
        "remote engine: vLLM server frozen (SIGSTOP), then resumed (SIGCONT)",
        client_gets=f"(SCTIR_ENGINE_STALL_S={STALL_S:g}) the request in flight, {in_flight_s:.1f} s after the "
        f"freeze: {in_flight}; a new one, in {new_s:.1f} s (no deadline wait): {new_answer}; 503s with Retry-After: 5; "
        f"/readyz 503 within {probe_s:.2f} s of the freeze; after SIGCONT: engine ready in {ready_s:.2f} s, 200 "
        "with the right answer",
        left_behind="nothing: no request, sandbox block or lease held; the server's requests of the stalled steps "
        "aborted (0 running, 0 waiting)",
        recovery_s=answered_s,
    )


# -- the in-process engine: its EngineCore frozen; the service killed under it -------------------------


def in_process_env(model: Path, pool: str) -> dict[str, str]:
    return demo_service_env(
        model, pool, SCTIR_NUM_SAMPLES="4", SCTIR_EXECUTION_TIMEOUT_S="3", SCTIR_ENGINE_STALL_S=str(STALL_S)
    )


def test_in_process_engine_core_frozen_then_resumed(demo_model: Path, tmp_path: Path) -> None:
    require_vllm()
    require_docker()
    with running_service(in_process_env(demo_model, f"{POOL}-frozen"), tmp_path / "serve.log") as service:
        (core,) = [p for p in engine_processes(service) if p.name() == "VLLM::EngineCore"]
        failed_before = failed_candidates(service)
        thread, outcome = post_in_background(service.url, SLOW_REQUEST)
        wait_until_running_code(service)
        core.suspend()  # SIGSTOP
        frozen = time.monotonic()
        try:
            probe_s = not_ready_within(service, timeout_s=5)  # vLLM's own check (errored) says ready
            assert probe_s < 3.0
            thread.join(timeout=60)
            in_flight = stalled_in_flight(outcome[0])
            in_flight_s = time.monotonic() - frozen
            assert STALL_S - 1 <= in_flight_s < STALL_S + 10  # its last token came a moment before the freeze
            new, new_s = solve(service, QUICK_REQUEST)
            new_answer = stalled_503(new)
            assert STALL_S <= new_s < STALL_S + 3
            assert failed_candidates(service) - failed_before >= 5
        finally:
            core.resume()  # SIGCONT
        resumed = time.monotonic()
        ready_s = engine_ready_within(service, timeout_s=10)
        assert answers_correctly(service)
        answered_s = time.monotonic() - resumed
        wait_until(lambda: service.nothing_held(), timeout_s=15)
    record(
        "in-process engine: EngineCore frozen (SIGSTOP), then resumed (SIGCONT)",
        client_gets=f"(SCTIR_ENGINE_STALL_S={STALL_S:g}) the request in flight, {in_flight_s:.1f} s after the "
        f"freeze: {in_flight}; a new one, in {new_s:.1f} s (no deadline wait): {new_answer}; 503s with Retry-After: 5; "
        f"/readyz 503 within {probe_s:.2f} s of the freeze (vLLM's own check said ready); after SIGCONT: engine "
        f"ready in {ready_s:.2f} s, 200 with the right answer",
        left_behind="nothing: no request, sandbox block or lease held; vLLM's requests 0 running, 0 waiting "
        "(the stalled steps aborted)",
        recovery_s=answered_s,
    )


def test_service_killed_with_sigkill_leaves_no_engine_process_and_starts_again(
    demo_model: Path, tmp_path: Path
) -> None:
    require_vllm()
    require_docker()
    pool = f"{POOL}-sigkill"
    env = in_process_env(demo_model, pool)
    with running_service(env, tmp_path / "serve.log") as service:
        children = descendants(service)
        assert sorted(p.name() for p in engine_processes(service)) == ["VLLM::EngineCore", "VLLM::Worker"]
        thread, outcome = post_in_background(service.url, SLOW_REQUEST)
        wait_until(lambda: service.held()["sandbox_busy"] >= 1, timeout_s=30)  # solving: its code runs
        containers = containers_of(pool)
        service.process.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        thread.join(timeout=30)
        assert isinstance(outcome[0], httpx.RemoteProtocolError)  # the connection closed without an answer
        gone_s = wait_until(lambda: not running(children), timeout_s=10)  # vLLM must not outlive the service
        left = containers_of(pool)
    assert set(left) <= set(containers)  # only the sandbox's containers outlive a SIGKILL: the restart reaps them
    with running_service(env, tmp_path / "restart.log") as restarted:
        ready_s = time.monotonic() - killed
        assert not set(left) & set(containers_of(pool))  # the dead service's leftovers are gone
        assert answers_correctly(restarted)
        recovered_s = time.monotonic() - killed
        wait_until(lambda: restarted.nothing_held(), timeout_s=10)
        children = descendants(restarted)
    wait_until(lambda: not running(children) and not containers_of(pool), timeout_s=30)
    record(
        "service killed with SIGKILL while solving, then started again",
        client_gets="the request in flight: the connection closes without an answer (RemoteProtocolError); "
        f"after the restart (ready {ready_s:.1f} s after the kill): 200 with the right answer",
        left_behind=f"no process: EngineCore, Worker and the service's other children gone {gone_s:.2f} s after "
        f"the kill; {len(left)} sandbox container(s) until the restart removed them; "
        "after the restarted service stopped: nothing",
        recovery_s=recovered_s,
    )
