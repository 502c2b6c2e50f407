"""Supervised fine-tuning with TRL's SFTTrainer: stage 1 (CoT) and stage 2 (TIR).

    python -m training.sft training/recipes/tiny/stage1_cot.yaml            # CPU, tiny model
    accelerate launch --config_file training/recipes/accelerate/zero3.yaml \\
        -m training.sft training/recipes/stage1_cot.yaml                     # 8 GPUs

Texts are rendered in the served chat template by training.data (the trainer adds EOS), packed
into blocks of `training.max_length` tokens, and the loss covers the whole text, as the
winners trained. The output directory is a Hugging Face checkpoint with the served chat
template in its tokenizer, plus `sft_summary.json` (losses, steps, time).
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.data import DataSpec, load_splits
from training.models import load_model_and_tokenizer, train_and_save, write_summary
from training.recipe import ModelSection, batch_arguments, load_recipe, section

log = logging.getLogger(__name__)


@dataclass
class SFTSummary:
    output_dir: str
    train_examples: int
    steps: int
    losses: list[float]  # training loss at every logging step
    eval_loss: float | None
    train_seconds: float

    @property
    def first_loss(self) -> float:
        return self.losses[0]

    @property
    def last_loss(self) -> float:
        return self.losses[-1]


def sft_config(recipe: dict[str, Any], output_dir: str):
    """trl.SFTConfig from the recipe's `training` section and its batch arithmetic."""
    from trl import SFTConfig

    training = dict(recipe.get("training") or {})
    training.update(batch_arguments(recipe))
    return SFTConfig(output_dir=output_dir, **training)


def run_sft(recipe: dict[str, Any], output_dir: str | Path | None = None) -> SFTSummary:
    from trl import SFTTrainer

    output_dir = str(output_dir or recipe["output_dir"])
    train, test = load_splits(DataSpec.from_dict(recipe["data"]))
    model, tokenizer = load_model_and_tokenizer(section(recipe, "model", ModelSection), scratch_texts=train["text"])
    args = sft_config(recipe, output_dir)
    if test is None or args.eval_strategy == "no":
        test = None
    trainer = SFTTrainer(model=model, args=args, train_dataset=train, eval_dataset=test, processing_class=tokenizer)
    seconds = train_and_save(trainer, tokenizer, output_dir)
    history = trainer.state.log_history
    losses = [entry["loss"] for entry in history if "loss" in entry]
    eval_losses = [entry["eval_loss"] for entry in history if "eval_loss" in entry]
    summary = SFTSummary(
        output_dir=output_dir,
        train_examples=len(train),
        steps=trainer.state.global_step,
        losses=losses,
        eval_loss=eval_losses[-1] if eval_losses else None,
        train_seconds=round(seconds, 1),
    )
    write_summary(trainer, Path(output_dir, "sft_summary.json"), summary)
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.sft", description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe", help="a recipe YAML (e.g. training/recipes/stage1_cot.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted KEY=VALUE overrides, e.g. training.max_steps=5")
    parser.add_argument("--output-dir", help="default: the recipe's output_dir")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    recipe = load_recipe(args.recipe, args.overrides)
    summary = run_sft(recipe, args.output_dir)
    print(
        f"SFT done: {summary.steps} steps on {summary.train_examples} examples in {summary.train_seconds:.0f} s; "
        f"loss {summary.first_loss:.3f} -> {summary.last_loss:.3f}"
        + (f", eval loss {summary.eval_loss:.3f}" if summary.eval_loss is not None else "")
        + f"; model in {summary.output_dir}"
    )


if __name__ == "__main__":
    main()
