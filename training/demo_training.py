"""The demo model's recipe and training loop: packed, masked examples in the served format.

What makes a 1.1M-parameter model learn the task on CPU (measured on 2 busy cores): code that
copies the problem (training.synthetic), the loss on the completion only, without the output
block (ToRA's masking: the executor writes it); each example alone in its packed block
(positions from 0, no attention across examples), as it is served (`_encode_as_served`:
tokenized as the service's prompts are); lr 1e-3 (3e-3 did not learn within 1500 steps), cosine
decay, blocks of 512 tokens, batch 4, 1200 steps. The copy is learnt suddenly, around step
300-400; word problems first, arithmetic last.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from service.tir import OUTPUT_MARKER, output_block
from training.data import format_example
from training.scratch import ModelShape
from training.synthetic import FAMILIES, DemoProblem, solution_text, training_problems


@dataclass(frozen=True)
class DemoConfig:
    """The recipe of the demo model (defaults: the measured one)."""

    steps: int = 1200
    batch_size: int = 4
    block_size: int = 512
    learning_rate: float = 1e-3  # 3e-3 never learnt the copy within 1500 steps here (measured)
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4  # head size 32: the minimum vLLM's CPU attention takes
    intermediate_size: int = 512
    vocab_size: int = 1024  # a cap: the corpus yields ~570 tokens, every word of the templates one token
    max_positions: int = 4096
    seed: int = 0
    eval_every: int = 100
    eval_problems: int = 96

    @property
    def shape(self) -> ModelShape:
        return ModelShape(
            hidden_size=self.hidden_size,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            intermediate_size=self.intermediate_size,
            max_positions=self.max_positions,
        )


def scored_spans(problem: DemoProblem) -> tuple[str, int, tuple[int, int]]:
    """(text, where the completion starts, the output block's contents as a character range)."""
    prompt = format_example(problem.problem, "")[:-1]
    text = prompt + solution_text(problem) + "\n"
    start = text.index(OUTPUT_MARKER) + len(OUTPUT_MARKER)
    # The executor writes the output and the block's closing fence (service.tir.output_block); the
    # newline after the fence is the model's own.
    return text, len(prompt), (start, start + len(output_block(str(problem.answer))))


def _loss_mask(offsets: Sequence[tuple[int, int]], completion_start: int, output: tuple[int, int]) -> list[bool]:
    """Which tokens the loss covers: the completion, except the output block's contents.

    As ToRA trains: the problem is given and the output is the executor's, so neither is the
    model's to predict (both are random digits here, noise that slows learning down).
    """
    return [start >= completion_start and not (output[0] <= start < output[1]) for start, _ in offsets]


def _encode_as_served(tokenizer, spans: list[tuple[str, int, tuple[int, int]]]) -> list[tuple[list[int], list]]:
    """(token ids, character offsets) of each text, tokenized as the service's prompts are.

    The service's text ends at the output block's closing fence and the model writes the rest, so
    the prompt is tokenized up to the fence and the model's tokens follow: a tokenizer that merges
    "```" with the newline after it (Qwen2's pre-tokenizer keeps punctuation and newlines together)
    would otherwise train on a token the served prompt never ends with.
    """
    cuts = [output[1] for _, _, output in spans]
    heads = tokenizer(
        [t[:c] for (t, _, _), c in zip(spans, cuts)], add_special_tokens=False, return_offsets_mapping=True
    )
    tails = tokenizer(
        [t[c:] for (t, _, _), c in zip(spans, cuts)], add_special_tokens=False, return_offsets_mapping=True
    )
    encoded = []
    for i, cut in enumerate(cuts):
        offsets = heads["offset_mapping"][i] + [(a + cut, b + cut) for a, b in tails["offset_mapping"][i]]
        encoded.append((heads["input_ids"][i] + tails["input_ids"][i], offsets))
    return encoded


def _examples(tokenizer, problems: Iterator[DemoProblem], chunk: int = 256) -> Iterator[tuple[list[int], list[bool]]]:
    """Training texts (the served format, EOS-terminated) as (token ids, in the loss) pairs."""
    eos = tokenizer.eos_token_id
    while True:
        spans = [scored_spans(p) for p in (next(problems) for _ in range(chunk))]
        for (ids, offsets), (_, completion_start, output) in zip(_encode_as_served(tokenizer, spans), spans):
            yield ids + [eos], _loss_mask(offsets, completion_start, output) + [True]


def _blocks(examples: Iterator[tuple[list[int], list[bool]]], batch_size: int, block_size: int, pad_id: int):
    """Batches of packed blocks: (input_ids, position_ids, labels).

    Whole examples are packed into a block (the rest is padding, outside the loss), and each
    example's positions start at 0, so the model sees every example as it sees a prompt when
    served: alone. transformers turns restarting position_ids (with no attention mask and no
    KV cache: use_cache=False) into a block-diagonal mask, so no example attends to another (as
    TRL's padding-free packing does).
    """
    import torch

    pending = next(examples)
    while True:
        ids_rows, pos_rows, label_rows = [], [], []
        for _ in range(batch_size):
            ids: list[int] = []
            positions: list[int] = []
            labels: list[int] = []
            while len(ids) + len(pending[0]) <= block_size:
                tokens, scored = pending
                ids += tokens
                positions += range(len(tokens))
                labels += [t if keep else -100 for t, keep in zip(tokens, scored)]
                pending = next(examples)
            padding = block_size - len(ids)
            ids_rows.append(ids + [pad_id] * padding)
            pos_rows.append(positions + list(range(padding)))
            label_rows.append(labels + [-100] * padding)
        yield torch.tensor(ids_rows), torch.tensor(pos_rows), torch.tensor(label_rows)


def teacher_forced_accuracy(model, tokenizer, problems: Sequence[DemoProblem]) -> dict[str, float]:
    """Share of problems whose code and boxed answer the model predicts exactly, token by token.

    Teacher-forced on the reference text (one forward pass per problem); the output block's
    contents are excluded (the executor, not the model, writes them). A cheap proxy of the
    solver's accuracy, logged while training: overall ("all") and per family, since the
    families are learnt at different times.
    """
    import torch

    hits: dict[str, list[bool]] = {"all": [], **{family: [] for family in FAMILIES}}
    model.eval()
    with torch.no_grad():
        for problem in problems:
            text, completion_start, output = scored_spans(problem)
            [(ids, offsets)] = _encode_as_served(tokenizer, [(text, completion_start, output)])
            ids = ids + [tokenizer.eos_token_id]
            offsets = offsets + [(len(text), len(text))]
            scored = _loss_mask(offsets, completion_start, output)
            predicted = model(torch.tensor([ids])).logits[0].argmax(-1).tolist()
            hit = all(predicted[i - 1] == ids[i] for i in range(1, len(ids)) if scored[i])
            hits["all"].append(hit)
            hits[problem.family].append(hit)
    model.train()
    return {name: sum(values) / len(values) for name, values in hits.items() if values}


def take(iterator: Iterator[DemoProblem], count: int) -> list[DemoProblem]:
    return [next(iterator) for _ in range(count)]


def _cosine_with_floor(optimizer, config: DemoConfig):
    """Linear warm-up, then cosine decay to `min_lr_ratio` of the peak."""
    import torch

    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class _NoProgress:
    def __enter__(self):
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def add_task(self, *args: Any, **kwargs: Any) -> int:
        return 0

    def update(self, *args: Any, **kwargs: Any) -> None:
        return None


def _progress(enabled: bool):
    if not enabled:
        return _NoProgress()
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.3f}  held-out code+answer {task.fields[acc]:.0%}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )


@dataclass
class TrainingRun:
    """What the loop measured: the loss and held-out accuracy every `eval_every` steps."""

    history: list[dict[str, Any]]
    final_loss: float  # an exponential moving average of the step losses
    accuracy: dict[str, float]  # teacher-forced, "all" and per family, at the last step
    seconds: float


def train(
    model: Any, tokenizer: Any, config: DemoConfig, heldout: Sequence[DemoProblem], *, progress: bool
) -> TrainingRun:
    """Train `model` in place for `config.steps` steps on problems outside `heldout`."""
    import torch

    validation = list(take(training_problems(config.seed + 2, exclude=heldout), config.eval_problems))
    optimizer = _optimizer(model, config)
    schedule = _cosine_with_floor(optimizer, config)
    batches = _blocks(
        _examples(tokenizer, training_problems(config.seed, exclude=heldout)),
        config.batch_size,
        config.block_size,
        tokenizer.pad_token_id,
    )
    history: list[dict[str, Any]] = []
    loss_value, accuracy, ema = float("nan"), {"all": 0.0}, None
    started = time.monotonic()
    with _progress(progress) as bar:
        task = bar.add_task("training", total=config.steps, loss=float("nan"), acc=0.0)
        model.train()
        for step in range(1, config.steps + 1):
            input_ids, position_ids, labels = next(batches)
            loss = model(input_ids=input_ids, position_ids=position_ids, labels=labels, use_cache=False).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            loss_value = loss.item()
            ema = loss_value if ema is None else 0.95 * ema + 0.05 * loss_value
            if step % config.eval_every == 0 or step == config.steps:
                accuracy = teacher_forced_accuracy(model, tokenizer, validation)
                history.append(_checkpoint(step, ema, accuracy, time.monotonic() - started, echo=not progress))
            bar.update(task, advance=1, loss=ema, acc=accuracy["all"])
    return TrainingRun(history, ema if ema is not None else loss_value, accuracy, time.monotonic() - started)


def _optimizer(model: Any, config: DemoConfig) -> Any:
    """AdamW with weight decay on the matrices only (not on norms and biases)."""
    import torch

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.learning_rate,
        betas=(0.9, 0.95),
    )


def _checkpoint(step: int, loss: float, accuracy: dict[str, float], elapsed: float, *, echo: bool) -> dict[str, Any]:
    """One history entry; printed as a line when there is no progress bar to show it (logs, CI)."""
    if echo:
        families = ", ".join(f"{name} {value:.0%}" for name, value in accuracy.items() if name != "all")
        print(
            f"step {step}: loss {loss:.3f}, held-out code+answer {accuracy['all']:.0%} ({families}), {elapsed:.0f} s",
            flush=True,
        )
    return {"step": step, "loss": round(loss, 4), "accuracy": accuracy, "seconds": round(elapsed, 1)}
