"""The demo model's answers come from the tool: accuracy with and without code execution.

    python -m bench.demo_model                       # models/demo (built first if missing)
    python -m bench.demo_model --model /path --engine transformers --json-out results.json
    python -m bench.demo_model --executor docker     # through the Docker sandbox

Solves the 100 held-out synthetic problems (training.synthetic.heldout_problems: the model never saw
them; arithmetic, word problems and linear equations in turn) through the real solver
(service.solver.Solver) twice: with real code execution (the service's executor: --executor
local, or docker for the sandbox containers) and with every output block left empty
(training.evaluate.BlindExecutor). Greedy, one candidate, up to 4 steps, integer answers
compared exactly. Prints both accuracies (and the problems solved in each
family), the model's training time (from its demo_build.json), and the wall time of each run;
--json-out writes them for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from service.answers import AnswerMode
from training.demo import build_demo_model
from training.demo_training import DemoConfig
from training.evaluate import VLLM_CPU_ENV, BlindExecutor, Evaluation, checkpoint_engine, solve_all, solve_config
from training.synthetic import FAMILIES, DemoProblem, heldout_problems

console = Console(stderr=True)


def make_real_executor(kind: str):
    """The service's own executor: "local" (LocalExecutor) or "docker" (the sandbox containers)."""
    from service.components import make_executor
    from service.settings import Settings

    return make_executor(Settings(executor=kind, execution_timeout_s=10.0))


async def measure(
    model: str, engine_kind: str, problems: int, num_samples: int, temperature: float, executor_kind: str = "local"
) -> dict[str, Any]:
    heldout = heldout_problems(problems)
    pairs = [(p.problem, str(p.answer)) for p in heldout]
    config = solve_config(
        num_samples=num_samples,
        max_steps=4,
        temperature=temperature,
        max_new_tokens=256,
        answer_mode=AnswerMode.INTEGER,
        seed=0,
    )
    engine = checkpoint_engine(model, engine_kind, max_model_len=1024)
    started = time.monotonic()
    await engine.start()
    engine_start_s = time.monotonic() - started
    runs: dict[str, Evaluation] = {}
    try:
        executor = make_real_executor(executor_kind)
        await executor.start()
        try:
            runs["with execution"] = await solve_all(engine, executor, pairs, config, concurrency=16)
        finally:
            await executor.close()
        runs["execution disabled"] = await solve_all(engine, BlindExecutor(), pairs, config, concurrency=16)
    finally:
        await engine.close()
    engine_name = type(engine).__name__
    del engine
    gc.collect()  # release vLLM's client here, not at interpreter exit
    return {
        "model": model,
        "engine": engine_name,
        "executor": executor_kind,
        "engine_start_s": round(engine_start_s, 1),
        "problems": len(pairs),
        "num_samples": num_samples,
        "temperature": temperature,
        "runs": {name: run_summary(run, heldout) for name, run in runs.items()},
    }


def run_summary(run: Evaluation, heldout: list[DemoProblem]) -> dict[str, Any]:
    """One run's figures: accuracy, time, code executions, per family, an example text, the first failures."""
    return {
        "correct": run.correct,
        "total": run.total,
        "accuracy": run.accuracy,
        "seconds": round(run.seconds, 1),
        "executions": sum(c.executions for o in run.outcomes for c in o.result.candidates),
        "by_family": {
            family: sum(o.correct for p, o in zip(heldout, run.outcomes) if p.family == family) for family in FAMILIES
        },
        "example": run.outcomes[0].result.candidates[0].text,
        "failures": [
            {"problem": o.problem, "reference": o.reference, "answer": o.answer} for o in run.outcomes if not o.correct
        ][:5],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.demo_model", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="models/demo", help="the demo model (built there if missing)")
    parser.add_argument("--engine", default="auto", choices=["auto", "vllm", "transformers"])
    parser.add_argument(
        "--executor", default="local", choices=["local", "docker"], help="docker: the sandbox image must be built"
    )
    parser.add_argument("--problems", type=int, default=100)
    parser.add_argument("--num-samples", type=int, default=1)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)
    for name, value in VLLM_CPU_ENV.items():
        os.environ.setdefault(name, value)

    model_dir = Path(args.model)
    if not (model_dir / "config.json").exists():
        console.print(f"building the demo model in {model_dir} (python -m training.demo)")
        build_demo_model(model_dir, DemoConfig())
    results = asyncio.run(
        measure(str(model_dir), args.engine, args.problems, args.num_samples, args.temperature, args.executor)
    )
    build_file = model_dir / "demo_build.json"
    if build_file.exists():
        report = json.loads(build_file.read_text())["report"]
        results["training"] = {k: report[k] for k in ("steps", "train_seconds", "threads", "parameters")}

    table = Table("run", "correct", "accuracy", *FAMILIES, "code blocks run", "wall time")
    for name, run in results["runs"].items():
        table.add_row(
            name,
            f"{run['correct']}/{run['total']}",
            f"{run['accuracy']:.0%}",
            *(str(run["by_family"][family]) for family in FAMILIES),
            str(run["executions"]),
            f"{run['seconds']:.1f} s",
        )
    console.print(table)
    console.print(
        f"engine: {results['engine']} (started in {results['engine_start_s']} s); executor: {results['executor']}"
    )
    if "training" in results:
        t = results["training"]
        console.print(
            f"training: {t['steps']} steps, {t['train_seconds']:.0f} s on {t['threads']} thread(s), "
            f"{t['parameters'] / 1e6:.2f}M parameters"
        )
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(results, indent=2))
    print(json.dumps({name: run["accuracy"] for name, run in results["runs"].items()}))


if __name__ == "__main__":
    main()
