"""Evaluation through the service's own solver: engines for a checkpoint, accuracy, blind execution.

The harness that compares checkpoints (and KTO's sampler) solves problems with
``service.solver.Solver`` exactly as the service does: the checkpoint's chat template, SC-TIR
steps, real code execution, the answer modes of ``service.answers``. ``BlindExecutor`` runs
nothing and returns an empty output, so every output block the model sees is empty: a model
whose answers come from the tool then fails, which is what the demo model's benchmark shows.
"""

from __future__ import annotations

import asyncio
import importlib.util
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sandbox.execution import ExecutionResult, ExecutionStatus, Executor
from service.answers import AnswerMode, matches_reference
from service.engines.base import Engine
from service.solver import SolveConfig, Solver, SolveResult, derive_seed

# vLLM on a CPU host: the engine core in this process, no CPU pinning (set before it starts).
VLLM_CPU_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_OMP_THREADS_BIND": "nobind"}


class BlindExecutor:
    """An Executor that runs nothing: every block "prints" nothing (the no-tool ablation)."""

    def __init__(self) -> None:
        self.blocks: list[str] = []

    async def start(self) -> None:
        return None

    async def ready(self) -> bool:
        return True

    async def execute(self, code: str, session_id: str | None = None, tenant: str | None = None) -> ExecutionResult:
        self.blocks.append(code)
        return ExecutionResult(status=ExecutionStatus.OK, stdout="", error="", duration_s=0.0)

    async def close_session(self, session_id: str) -> None:
        return None

    async def release(self, tenant: str) -> None:
        return None

    async def close(self) -> None:
        return None


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def checkpoint_engine(
    model: str,
    kind: str = "auto",
    *,
    dtype: str = "float32",
    max_model_len: int = 2048,
    kv_cache_memory_bytes: int | None = 256 * 2**20,
    enforce_eager: bool = True,
    max_batch: int = 16,
) -> Engine:
    """An engine serving the checkpoint `model`: "vllm" (the service's), "transformers", or "auto" (vllm if installed).

    Unlike service.components.make_engine, which builds the served engine from Settings, this one
    takes a checkpoint and the few engine arguments an evaluation or KTO's sampling varies.
    """
    if kind == "auto":
        kind = "vllm" if vllm_available() else "transformers"
    if kind == "vllm":
        from service.engines.vllm_local import VllmEngine, VllmOptions

        return VllmEngine(
            VllmOptions(
                model=model,
                dtype=dtype,
                max_model_len=max_model_len,
                kv_cache_memory_bytes=kv_cache_memory_bytes,
                enforce_eager=enforce_eager,
                disable_log_stats=True,
            )
        )
    if kind == "transformers":
        from training.hf_engine import TransformersEngine

        return TransformersEngine(model, dtype=dtype, max_model_len=max_model_len, max_batch=max_batch)
    raise ValueError(f"unknown engine {kind!r} (vllm, transformers, auto)")


# Where an evaluation differs from the service's defaults: one greedy candidate, short steps, integer
# answers, a fixed seed (its figures are reproducible).
EVALUATION_PARAMETERS: dict[str, Any] = {
    "num_samples": 1,
    "temperature": 0.0,
    "max_new_tokens": 512,
    "answer_mode": AnswerMode.INTEGER,
    "seed": 0,
}


def solve_config(**overrides: Any) -> SolveConfig:
    """The service's defaults with EVALUATION_PARAMETERS, then `overrides`."""
    return SolveConfig(**EVALUATION_PARAMETERS | overrides)


@dataclass
class ProblemOutcome:
    problem: str
    reference: str
    answer: str | None
    correct: bool
    result: SolveResult


@dataclass
class Evaluation:
    outcomes: list[ProblemOutcome]
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def correct(self) -> int:
        return sum(o.correct for o in self.outcomes)

    @property
    def total(self) -> int:
        return len(self.outcomes)

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0


async def solve_all(
    engine: Engine,
    executor: Executor,
    problems: Sequence[tuple[str, str]],
    config: SolveConfig,
    *,
    concurrency: int = 8,
    on_done: Callable[[ProblemOutcome], None] | None = None,
) -> Evaluation:
    """Solve (problem, reference) pairs, `concurrency` at a time; outcomes in input order."""
    solver = Solver(engine, executor)
    limit = asyncio.Semaphore(concurrency)
    started = time.monotonic()

    async def one(index: int, problem: str, reference: str) -> ProblemOutcome:
        async with limit:
            per_problem = config.model_copy(update={"seed": derive_seed(config.seed, index)})
            result = await solver.solve(problem, per_problem, f"eval{index}")
        outcome = ProblemOutcome(
            problem, reference, result.answer, matches_reference(result.answer, reference, config.answer_mode), result
        )
        if on_done is not None:
            on_done(outcome)
        return outcome

    outcomes = await asyncio.gather(*(one(i, p, r) for i, (p, r) in enumerate(problems)))
    return Evaluation(list(outcomes), time.monotonic() - started)
