"""KTO on self-sampled completions, the winners' optional last step.

    python -m training.kto training/recipes/tiny/kto.yaml                 # sample, then train
    python -m training.kto RECIPE --sample-only                           # samples only (one process)
    accelerate launch ... -m training.kto RECIPE --skip-sampling          # train on saved samples

1. Sample: `sampling.samples_per_problem` (4) completions per problem from the SFT model through
   the service's own solver (service.solver.Solver) with real code execution (LocalExecutor), on
   the vLLM engine (or training.hf_engine.TransformersEngine where vLLM is not installed).
   Early stopping and restarts are off, so every candidate finishes with the text it wrote.
2. Label: a completion is desirable when its final answer equals the reference answer under
   `sampling.answer_mode` (service.answers), undesirable otherwise (wrong, no answer, pruned).
3. Train: TRL's KTOTrainer on prompt/completion message lists (the served chat template renders
   them exactly as the solver prompted the model) with a bool label; the implicit rewards of
   chosen and rejected completions (rewards/chosen, rewards/rejected, rewards/margins) are
   logged and written to `kto_summary.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from service.answers import AnswerMode, matches_reference
from training.data import DataSpec, problems_with_answers, write_jsonl
from training.evaluate import VLLM_CPU_ENV, make_engine, solve_config
from training.recipe import batch_arguments, load_recipe

log = logging.getLogger(__name__)
SAMPLES_FILE = "kto_samples.jsonl"


@dataclass
class SamplingSummary:
    problems: int
    completions: int
    desirable: int
    undesirable: int
    seconds: float
    engine: str


async def sample_completions(recipe: dict[str, Any], *, progress: bool = True) -> tuple[list[dict], SamplingSummary]:
    """KTO rows ({prompt, completion, label, answer, reference, status}) sampled through the solver."""
    from sandbox.executors import LocalExecutor
    from service.solver import Solver

    sampling = recipe.get("sampling") or {}
    spec = DataSpec.from_dict({**recipe["data"], "require_answer": True})
    records = problems_with_answers(spec, limit=sampling.get("problems"))
    if not records:
        raise ValueError(f"no problems with reference answers in {spec.dataset}")
    mode = AnswerMode(sampling.get("answer_mode", "expression"))
    config = solve_config(
        num_samples=int(sampling.get("samples_per_problem", 4)),
        max_steps=int(sampling.get("max_steps", 4)),
        temperature=float(sampling.get("temperature", 0.8)),
        max_new_tokens=int(sampling.get("max_new_tokens", 1024)),
        answer_mode=mode,
        seed=int(sampling.get("seed", 0)),
        early_stop=False,  # every candidate is a training example
        # A restart would drop the failed attempt's text: keep it, it is an undesirable example.
        restart_on_fail=bool(sampling.get("restart_on_fail", False)),
        deadline_s=float(sampling.get("deadline_s", 3600)),
    )
    engine_kind = sampling.get("engine", "auto")
    if engine_kind in ("auto", "vllm") and not _has_cuda():
        for name, value in VLLM_CPU_ENV.items():
            os.environ.setdefault(name, value)
    engine = make_engine(
        recipe["model"]["name_or_path"],
        engine_kind,
        dtype=sampling.get("dtype", "float32"),
        max_model_len=int(sampling.get("max_model_len", 4096)),
        kv_cache_memory_bytes=sampling.get("kv_cache_memory_bytes", None if _has_cuda() else 256 * 2**20),
        enforce_eager=bool(sampling.get("enforce_eager", not _has_cuda())),
    )
    executor = LocalExecutor(
        timeout_s=float(sampling.get("execution_timeout_s", 5.0)), concurrency=sampling.get("execution_concurrency")
    )
    rows: list[dict] = []
    started = time.monotonic()
    await engine.start()
    try:
        await executor.start()
        solver = Solver(engine, executor)
        limit = asyncio.Semaphore(int(sampling.get("concurrency", 16)))
        with _progress(progress, len(records)) as advance:

            async def one(index: int, record) -> list[dict]:
                async with limit:
                    per_problem = solve_config_with_seed(config, index)
                    result = await solver.solve(record.problem, per_problem, f"kto{index}")
                advance()
                out = []
                for candidate in result.candidates:
                    if not candidate.text.strip():
                        continue  # cancelled or failed before writing anything: nothing to learn from
                    out.append(
                        {
                            "prompt": [{"role": "user", "content": record.problem}],
                            "completion": [{"role": "assistant", "content": candidate.text}],
                            "label": matches_reference(candidate.answer, record.answer, mode),
                            "answer": candidate.answer,
                            "reference": record.answer,
                            "status": str(candidate.status),
                        }
                    )
                return out

            for problem_rows in await asyncio.gather(*(one(i, r) for i, r in enumerate(records))):
                rows.extend(problem_rows)
    finally:
        await engine.close()
        await executor.close()
        engine_name = type(engine).__name__
        del engine
        gc.collect()  # let vLLM's client go now, not at interpreter exit
    desirable = sum(row["label"] for row in rows)
    summary = SamplingSummary(
        problems=len(records),
        completions=len(rows),
        desirable=desirable,
        undesirable=len(rows) - desirable,
        seconds=round(time.monotonic() - started, 1),
        engine=engine_name,
    )
    return rows, summary


def solve_config_with_seed(config, index: int):
    from service.solver import derive_seed

    return config.model_copy(update={"seed": derive_seed(config.seed, index)})


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        return False


class _progress:
    """A rich progress bar over problems (a no-op when disabled)."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled, self.total, self.bar = enabled, total, None

    def __enter__(self):
        if self.enabled:
            from rich.progress import Progress

            self.bar = Progress()
            self.bar.__enter__()
            self.task = self.bar.add_task("sampling (problems)", total=self.total)
        return self.advance

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.advance(self.task)

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)


@dataclass
class KTOSummary:
    output_dir: str
    examples: int
    desirable: int
    undesirable: int
    steps: int
    train_seconds: float
    rewards: list[dict[str, float]]  # per logging step: rewards/chosen, rewards/rejected, rewards/margins, kl, loss


def kto_config(recipe: dict[str, Any], output_dir: str, *, desirable: int, undesirable: int):
    """trl.KTOConfig from the recipe's `training` section; desirable_weight "auto" balances the labels."""
    from trl import KTOConfig

    training = dict(recipe.get("training") or {})
    training.update(batch_arguments(recipe))
    if training.get("desirable_weight") == "auto":
        # The KTO paper's guidance (and TRL's check): desirable x its weight ~ undesirable x its weight.
        ratio = undesirable / desirable if desirable and undesirable else 1.0
        training["desirable_weight"] = round(max(ratio, 1.0), 2)
        training["undesirable_weight"] = round(max(1 / ratio, 1.0), 2)
    return KTOConfig(output_dir=output_dir, **training)


def train_kto(recipe: dict[str, Any], rows: list[dict], output_dir: str) -> KTOSummary:
    from datasets import Dataset
    from trl import KTOTrainer

    from training.models import load_model_and_tokenizer

    if not rows:
        raise ValueError("no KTO examples")
    desirable = sum(bool(r["label"]) for r in rows)
    if desirable in (0, len(rows)):
        log.warning("all %d completions have the same label: KTO learns little without both kinds", len(rows))
    dataset = Dataset.from_list(
        [{"prompt": r["prompt"], "completion": r["completion"], "label": bool(r["label"])} for r in rows]
    )
    model, tokenizer = load_model_and_tokenizer(recipe["model"])
    args = kto_config(recipe, output_dir, desirable=desirable, undesirable=len(rows) - desirable)
    trainer = KTOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    started = time.monotonic()
    trainer.train()
    seconds = time.monotonic() - started
    trainer.save_model(output_dir)
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(output_dir)
    keys = ("rewards/chosen", "rewards/rejected", "rewards/margins", "kl", "loss")
    rewards = [
        {"step": entry.get("step"), **{k: entry[k] for k in keys if k in entry}}
        for entry in trainer.state.log_history
        if any(k in entry for k in keys[:3])
    ]
    for entry in rewards:
        log.info("KTO step %s: %s", entry["step"], {k: v for k, v in entry.items() if k != "step"})
    summary = KTOSummary(
        output_dir=output_dir,
        examples=len(rows),
        desirable=desirable,
        undesirable=len(rows) - desirable,
        steps=trainer.state.global_step,
        train_seconds=round(seconds, 1),
        rewards=rewards,
    )
    if trainer.is_world_process_zero():
        Path(output_dir, "kto_summary.json").write_text(json.dumps(asdict(summary), indent=2))
    return summary


def run_kto(
    recipe: dict[str, Any],
    output_dir: str | Path | None = None,
    *,
    sample: bool = True,
    train: bool = True,
    progress: bool = True,
) -> tuple[SamplingSummary | None, KTOSummary | None]:
    output_dir = str(output_dir or recipe["output_dir"])
    samples_path = Path(output_dir) / SAMPLES_FILE
    sampling_summary = None
    if sample:
        rows, sampling_summary = asyncio.run(sample_completions(recipe, progress=progress))
        write_jsonl(rows, samples_path)
        Path(output_dir, "sampling_summary.json").write_text(json.dumps(asdict(sampling_summary), indent=2))
        log.info("sampled %s", sampling_summary)
    else:
        rows = [json.loads(line) for line in samples_path.read_text().splitlines() if line.strip()]
    kto_summary = train_kto(recipe, rows, output_dir) if train else None
    return sampling_summary, kto_summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.kto", description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe")
    parser.add_argument("overrides", nargs="*", help="dotted KEY=VALUE overrides, e.g. sampling.problems=8")
    parser.add_argument("--output-dir")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--sample-only", action="store_true", help="write kto_samples.jsonl and stop")
    group.add_argument("--skip-sampling", action="store_true", help="train on an existing kto_samples.jsonl")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    recipe = load_recipe(args.recipe, args.overrides)
    sampled, trained = run_kto(recipe, args.output_dir, sample=not args.skip_sampling, train=not args.sample_only)
    if sampled:
        print(
            f"sampled {sampled.completions} completions of {sampled.problems} problems in {sampled.seconds:.0f} s "
            f"({sampled.engine}): {sampled.desirable} desirable, {sampled.undesirable} undesirable"
        )
    if trained:

        def last(key: str) -> float:
            return next((r[key] for r in reversed(trained.rewards) if key in r), float("nan"))

        print(
            f"KTO: {trained.steps} steps in {trained.train_seconds:.0f} s; last rewards: chosen "
            f"{last('rewards/chosen'):.4f}, rejected {last('rewards/rejected'):.4f}; model in {trained.output_dir}"
        )


if __name__ == "__main__":
    main()
