"""Scheduling benchmark: this service's async pipeline versus the seed's step barrier.

Same engine (vLLM in-process on CPU serving the trained demo model, which really writes code),
same executor (the Docker sandbox pool), same problems and seeds, N=48, M=4, in one run. The
baseline is bench/seed_baseline.py: every step waits for the slowest candidate, then all code
runs, then the next step. Reported: wall time per problem for both and the ratio, and the share
of candidates whose texts are identical under the two schedules (vLLM's per-request seeds make
a candidate's text independent of the batch it runs in, up to numerics).

    python -m bench.scheduler --model models/demo --problems 5
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

from rich.console import Console
from rich.progress import track
from rich.table import Table

from bench.seed_baseline import solve_with_step_barrier
from sandbox.pool import DockerExecutor
from service.answers import AnswerMode
from service.solver import ExecutionMode, SolveConfig, Solver
from training.demo import heldout_problems
from training.evaluate import make_engine


async def run(model: str, problems: int, samples: int, steps: int) -> None:
    engine = make_engine(model, "vllm", max_model_len=1024)
    executor = DockerExecutor(image="sctir-sandbox:latest", size=2, concurrency=4, pool_name="sctir-bench-scheduler")
    await engine.start()
    await executor.start()
    rows, same, total = [], 0, 0
    try:
        solver = Solver(engine, executor)
        warmup = heldout_problems(problems + 1)[-1]
        await solver.solve(warmup.problem, _config(samples, steps, seed=999), "warmup")
        for index, problem in track(list(enumerate(heldout_problems(problems))), description="problems"):
            config = _config(samples, steps, seed=index)
            started = time.monotonic()
            pipelined = await solver.solve(problem.problem, config, f"p{index}")
            pipelined_s = time.monotonic() - started
            started = time.monotonic()
            barrier = await solve_with_step_barrier(engine, executor, problem.problem, config, f"b{index}")
            barrier_s = time.monotonic() - started
            same += sum(a.text == b.text for a, b in zip(pipelined.candidates, barrier.candidates))
            total += samples
            rows.append((pipelined_s, barrier_s, pipelined.answer == str(problem.answer)))
    finally:
        await executor.close()
        await engine.close()
    table = Table("problem", "pipeline s", "step barrier s", "ratio", "pipeline right")
    for i, (p, b, right) in enumerate(rows):
        table.add_row(str(i), f"{p:.2f}", f"{b:.2f}", f"{b / p:.2f}x", str(right))
    console = Console()
    console.print(table)
    ratio = statistics.median(b / p for p, b, _ in rows)
    console.print(
        f"median ratio (barrier / pipeline): {ratio:.2f}x; identical candidate texts: {same}/{total}; "
        f"N={samples}, M={steps}, cores={os.cpu_count()}"
    )


def _config(samples: int, steps: int, seed: int) -> SolveConfig:
    return SolveConfig(
        num_samples=samples,
        max_steps=steps,
        temperature=0.8,
        top_p=1.0,
        max_new_tokens=256,
        answer_mode=AnswerMode.INTEGER,
        execution_mode=ExecutionMode.LAST_BLOCK,
        deadline_s=3600,
        seed=seed,
        early_stop=False,  # the same work for both schedules
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="the demo model directory (make demo-model)")
    parser.add_argument("--problems", type=int, default=5)
    parser.add_argument("--num-samples", type=int, default=48)
    parser.add_argument("--max-steps", type=int, default=4)
    args = parser.parse_args()
    asyncio.run(run(args.model, args.problems, args.num_samples, args.max_steps))


if __name__ == "__main__":
    main()
