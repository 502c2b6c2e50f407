"""Scheduling benchmark: this service's async pipeline versus the reference's step barrier.

One engine (vLLM in-process on CPU), one executor (the Docker sandbox pool), the same problems
and seeds, N=48, M=4, in one run. The baseline is bench/reference_schedule.py: every step waits for
the slowest candidate, then all code runs, then the next step. The pipeline (service.solver)
lets every candidate go on as soon as its own code has run.

The barrier only costs time when candidates differ, so by default the model is the random tiny
model (tests/support/tiny_model.py) constrained to TIR text whose code blocks have a geometric number of
lines and which, after an executed block, either answers or writes more code
(tests/support/constrained.py): candidates differ in code length and in steps. `--model DIR` serves a
real model (e.g. the demo model, whose code is of near-constant length) unconstrained.

Each problem runs under both schedules, in alternating order, each from a cold prefix cache.
Reported per problem: the wall time of both and their ratio (median over problems); the critical
paths in tokens (barrier: the sum over steps of the longest step; pipeline: the longest
candidate's sum), i.e. the ratio if an engine step cost the same whatever the batch; how busy the
vLLM engine core was; and how many candidates' texts are identical under the two schedules
(per-request seeds make a candidate's text independent of the batch it runs in).

    flock /tmp/sctir-bench.lock python -m bench.scheduler --problems 10
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import psutil
from rich.console import Console
from rich.table import Table

from bench.reference_schedule import solve_with_step_barrier
from sandbox.executors import DockerExecutor
from service.answers import AnswerMode
from service.engines.base import StepRequest, StepResult
from service.engines.vllm_local import VllmEngine
from service.solver import SolveConfig, Solver, SolveResult
from tests.support.constrained import ConstrainedVllmEngine, varying_tir_regex
from tests.support.tiny_model import BUILD_VERSION, VLLM_CPU_ENV, build_tiny_model, tiny_vllm_options
from training.synthetic import heldout_problems

TINY_MODEL_DIR = Path.home() / ".cache" / "sctir" / f"tiny-model-v{BUILD_VERSION}"
console = Console(width=150)

Schedule = Callable[[str, SolveConfig, str], Awaitable[SolveResult]]


class StepTokens:
    """The engine, noting every step's completion tokens by request id ("{rid}-{candidate}-{step}").

    From them, each schedule's critical path in tokens: what the ratio would be if an engine step
    cost the same whatever the batch (nearly so on a GPU; on CPU a step costs more per sequence).
    """

    def __init__(self, engine: VllmEngine) -> None:
        self.engine = engine
        self.tokens: dict[str, int] = {}

    def format_prompt(self, problem: str) -> str:
        return self.engine.format_prompt(problem)

    async def complete(self, request: StepRequest) -> StepResult:
        result = await self.engine.complete(request)
        self.tokens[request.request_id] = result.completion_tokens
        return result

    async def abort(self, request_id: str) -> None:
        await self.engine.abort(request_id)

    def critical_paths(self, rid: str) -> tuple[int, int]:
        """(barrier, pipeline): the sum over steps of the longest step, the longest candidate's sum."""
        steps: dict[int, dict[int, int]] = {}
        for request_id, tokens in self.tokens.items():
            head, candidate, step = request_id.rsplit("-", 2)
            if head == rid:
                steps.setdefault(int(candidate), {})[int(step)] = tokens
        barrier = sum(max(s.get(k, 0) for s in steps.values()) for k in range(max(map(len, steps.values()))))
        return barrier, max(sum(s.values()) for s in steps.values())


@dataclass
class Timed:
    result: SolveResult
    wall_s: float
    engine_busy: float  # the engine core's CPU time over the wall time: 1.0 is a saturated core


@dataclass
class Row:
    pipeline: Timed
    barrier: Timed
    identical: int
    steps: list[int]  # per candidate, under the pipeline
    paths: tuple[int, int]  # critical paths in tokens: barrier, pipeline

    @property
    def ratio(self) -> float:
        return self.barrier.wall_s / self.pipeline.wall_s


def benchmark_engine(model: str | None, max_num_seqs: int | None, *, loops: bool) -> VllmEngine:
    """The tiny model, constrained (model None), or `model` as the service would serve it on CPU.

    `loops`: the tiny model's code also runs a loop of a length it picks (tests/support/constrained.py).
    """
    # float32 (tiny_vllm_options): batch-invariant numerics, so a seed's text does not depend on the schedule.
    model_dir = build_tiny_model(TINY_MODEL_DIR) if model is None else Path(model)
    options = tiny_vllm_options(model_dir, max_num_seqs=max_num_seqs, disable_log_stats=True)
    if model is None:
        return ConstrainedVllmEngine(options, regex_for=functools.partial(varying_tir_regex, loops=loops))
    return VllmEngine(options)


def engine_cpu_s() -> float:
    """CPU seconds used so far by this process's children: vLLM's engine core process.

    Under the pipeline the engine core is the bottleneck on CPU; its busy share says how much
    room a schedule leaves.
    """
    return sum(sum(child.cpu_times()[:2]) for child in psutil.Process().children(recursive=True))


async def timed(engine: VllmEngine, schedule: Schedule, problem: str, config: SolveConfig, rid: str) -> Timed:
    await engine.reset_prefix_cache()
    cpu, started = engine_cpu_s(), time.monotonic()
    result = await schedule(problem, config, rid)
    wall_s = time.monotonic() - started
    return Timed(result, wall_s, (engine_cpu_s() - cpu) / wall_s)


async def run(args: argparse.Namespace) -> list[Row]:
    engine = benchmark_engine(args.model, args.max_num_seqs, loops=args.code == "loops")
    recorder = StepTokens(engine)
    executor = DockerExecutor(image=args.image, size=2, concurrency=4, pool_name="sctir-bench-scheduler")
    await engine.start()
    await executor.start()
    try:
        solver = Solver(recorder, executor)

        async def barrier(problem: str, config: SolveConfig, rid: str) -> SolveResult:
            return await solve_with_step_barrier(recorder, executor, problem, config, rid)

        problems = [p.problem for p in heldout_problems(args.problems + 1)]
        warmup = _config(args, seed=10_000)
        await solver.solve(problems[-1], warmup, "warmup-p")
        await barrier(problems[-1], warmup, "warmup-b")
        rows = []
        for index, problem in enumerate(problems[:-1]):
            config = _config(args, seed=index)
            order = [(solver.solve, "p"), (barrier, "b")]
            if index % 2:
                order.reverse()  # neither schedule always runs first
            results = {tag: await timed(engine, fn, problem, config, f"{tag}{index}") for fn, tag in order}
            pipelined, barriered = results["p"], results["b"]
            pairs = zip(pipelined.result.candidates, barriered.result.candidates)
            identical = sum(a.text == b.text for a, b in pairs)
            steps = [c.steps for c in pipelined.result.candidates]
            rows.append(Row(pipelined, barriered, identical, steps, recorder.critical_paths(f"p{index}")))
            console.print(f"problem {index}: pipeline {pipelined.wall_s:.2f} s, barrier {barriered.wall_s:.2f} s")
    finally:
        await executor.close()
        await engine.close()
    return rows


def report(rows: list[Row], args: argparse.Namespace) -> None:
    table = Table(
        "problem",
        "pipeline s",
        "step barrier s",
        "barrier / pipeline",
        "critical path tokens (barrier / pipeline)",
        "engine core busy (pipeline / barrier)",
        "identical texts",
        "candidates by steps (1/2/3/...)",
    )
    for i, row in enumerate(rows):
        steps = "/".join(str(row.steps.count(k)) for k in range(1, args.max_steps + 1))
        table.add_row(
            str(i),
            f"{row.pipeline.wall_s:.2f}",
            f"{row.barrier.wall_s:.2f}",
            f"{row.ratio:.2f}x",
            f"{row.paths[0]} / {row.paths[1]} = {row.paths[0] / row.paths[1]:.2f}x",
            f"{row.pipeline.engine_busy:.0%} / {row.barrier.engine_busy:.0%}",
            f"{row.identical}/{args.num_samples}",
            steps,
        )
    console.print(table)
    identical = sum(r.identical for r in rows)
    console.print(
        f"median ratio (barrier / pipeline): {statistics.median(r.ratio for r in rows):.2f}x "
        f"(of critical paths in tokens: {statistics.median(r.paths[0] / r.paths[1] for r in rows):.2f}x); "
        f"median wall time: pipeline {statistics.median(r.pipeline.wall_s for r in rows):.2f} s, "
        f"barrier {statistics.median(r.barrier.wall_s for r in rows):.2f} s; identical candidate texts: "
        f"{identical}/{len(rows) * args.num_samples}; model {args.model or 'tiny, constrained, code: ' + args.code}; "
        f"N={args.num_samples}, M={args.max_steps}, cores={os.cpu_count()}"
    )


def _config(args: argparse.Namespace, seed: int) -> SolveConfig:
    return SolveConfig(
        num_samples=args.num_samples,
        max_steps=args.max_steps,
        max_new_tokens=1024,
        answer_mode=AnswerMode.INTEGER,
        deadline_s=3600,
        seed=seed,
        early_stop=False,  # the same work for both schedules
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a model directory served unconstrained; default: the tiny model, constrained")
    parser.add_argument(
        "--code",
        choices=("assignments", "loops"),
        default="assignments",
        help="the tiny model's code: assignments and a print (runs in microseconds), or also a loop of "
        "10**k iterations, k from 1 to 6 picked by the model (runs for up to about 0.3 s)",
    )
    parser.add_argument("--problems", type=int, default=10)
    parser.add_argument("--num-samples", type=int, default=48)
    parser.add_argument("--max-steps", type=int, default=4)
    parser.add_argument("--max-num-seqs", type=int, help="vLLM's batch size; default: vLLM's")
    parser.add_argument("--image", default="sctir-sandbox:latest")
    args = parser.parse_args()
    os.environ.update(VLLM_CPU_ENV)
    report(asyncio.run(run(args)), args)


if __name__ == "__main__":
    main()
