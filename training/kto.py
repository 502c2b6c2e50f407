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
from service.engines.base import Engine
from training.data import DataSpec, problems_with_answers, write_jsonl
from training.evaluate import VLLM_CPU_ENV, ProblemOutcome, checkpoint_engine, solve_all, solve_config
from training.models import load_model_and_tokenizer, train_and_save, write_summary
from training.recipe import ModelSection, SamplingSection, batch_arguments, load_recipe, section

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

    sampling = section(recipe, "sampling", SamplingSection)
    spec = DataSpec.from_dict({**recipe["data"], "require_answer": True})
    records = problems_with_answers(spec, limit=sampling.problems)
    if not records:
        raise ValueError(f"no problems with reference answers in {spec.dataset}")
    config = solve_config(
        num_samples=sampling.samples_per_problem,
        max_steps=sampling.max_steps,
        temperature=sampling.temperature,
        max_new_tokens=sampling.max_new_tokens,
        answer_mode=sampling.answer_mode,
        seed=sampling.seed,
        early_stop=False,  # every candidate is a training example
        restart_on_fail=sampling.restart_on_fail,
        deadline_s=sampling.deadline_s,
    )
    engine = _sampling_engine(section(recipe, "model", ModelSection), sampling)
    executor = LocalExecutor(timeout_s=sampling.execution_timeout_s, concurrency=sampling.execution_concurrency)
    started = time.monotonic()
    await engine.start()
    try:
        await executor.start()
        with _progress(progress, len(records)) as advance:
            evaluation = await solve_all(
                engine,
                executor,
                [(record.problem, record.answer) for record in records],
                config,
                concurrency=sampling.concurrency,
                on_done=lambda outcome: advance(),
            )
    finally:
        await engine.close()
        await executor.close()
        engine_name = type(engine).__name__
        del engine
        gc.collect()  # let vLLM's client go now, not at interpreter exit
    rows = [row for outcome in evaluation.outcomes for row in _rows(outcome, sampling.answer_mode)]
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


def _sampling_engine(model: ModelSection, sampling: SamplingSection) -> Engine:
    """The engine that samples: vLLM's CPU defaults where there is no GPU (a small KV cache, no CUDA graphs)."""
    cuda = _has_cuda()
    if sampling.engine in ("auto", "vllm") and not cuda:
        for name, value in VLLM_CPU_ENV.items():
            os.environ.setdefault(name, value)
    if model.name_or_path is None:
        raise ValueError("KTO samples from a checkpoint: the recipe's model section needs name_or_path")
    return checkpoint_engine(
        model.name_or_path,
        sampling.engine,
        dtype=sampling.dtype,
        max_model_len=sampling.max_model_len,
        kv_cache_memory_bytes=sampling.kv_cache_memory_bytes or (None if cuda else 256 * 2**20),
        enforce_eager=sampling.enforce_eager if sampling.enforce_eager is not None else not cuda,
    )


def _rows(outcome: ProblemOutcome, mode: AnswerMode) -> list[dict]:
    """One KTO row per candidate that wrote something, labelled by its answer against the reference."""
    return [
        {
            "prompt": [{"role": "user", "content": outcome.problem}],
            "completion": [{"role": "assistant", "content": candidate.text}],
            "label": matches_reference(candidate.answer, outcome.reference, mode),
            "answer": candidate.answer,
            "reference": outcome.reference,
            "status": str(candidate.status),
        }
        for candidate in outcome.result.candidates
        # a candidate cancelled or failed before writing anything has nothing to learn from
        if candidate.text.strip()
    ]


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

    if not rows:
        raise ValueError("no KTO examples")
    desirable = sum(bool(r["label"]) for r in rows)
    if desirable in (0, len(rows)):
        log.warning("all %d completions have the same label: KTO learns little without both kinds", len(rows))
    dataset = Dataset.from_list(
        [{"prompt": r["prompt"], "completion": r["completion"], "label": bool(r["label"])} for r in rows]
    )
    model, tokenizer = load_model_and_tokenizer(section(recipe, "model", ModelSection))
    args = kto_config(recipe, output_dir, desirable=desirable, undesirable=len(rows) - desirable)
    trainer = KTOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    seconds = train_and_save(trainer, tokenizer, output_dir)
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
    write_summary(trainer, Path(output_dir, "kto_summary.json"), summary)
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
