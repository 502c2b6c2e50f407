"""The offline demo model: a tiny TIR model trained from scratch on CPU in a few minutes.

    python -m training.demo --out models/demo            # 1200 steps, ~5-7 min on one core
    SCTIR_ENGINE=vllm SCTIR_MODEL=models/demo SCTIR_DTYPE=float32 SCTIR_EXECUTOR=local sctir serve

The task is arithmetic that a 1.1M-parameter model cannot do in its head: multi-digit
products and sums ("What is 3272 * 825 + 86?"), asked in a few phrasings. Every training
solution is in the ToRA format the service speaks: a sentence, a ```python block that prints
the expression, the ```output block with the printed value, and "The answer is
$\\boxed{value}$." So the model learns to write the code and to copy the executed output into
the box; the answer comes from the tool. `bench/demo_model.py` proves it: through the real
solver with code execution it answers (almost) all held-out problems, and with every output
block left empty almost none.

The output directory is an ordinary Hugging Face checkpoint (config.json, model.safetensors,
tokenizer files with NuminaMath's chat template, generation_config.json) that transformers
loads and vLLM serves (4 heads of 32: vLLM's CPU attention needs a head size of at least 32).

What makes it learn on CPU (measured on 2 busy cores): byte-level BPE with every digit its own
token (numbers are copied digit by digit); "### Problem: " and "### Solution: " as added
tokens, so the prompt's trailing space tokenizes the same in training and serving; the
expression written in the problem as Python writes it (the code is one contiguous copy);
the loss on the completion only, without the output block (ToRA's masking: the executor
writes it); each example alone in its packed block (positions from 0, no attention across
examples), as it is served; lr 1e-3 (3e-3 did not learn within 1500 steps), cosine decay,
blocks of 512 tokens, batch 4, 1200 steps. The copy is learnt suddenly, around step 250-400.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.tir import OUTPUT_MARKER, output_block
from training.data import (
    NUMINA_CHAT_TEMPLATE,
    PROBLEM_PREFIX,
    SOLUTION_PREFIX,
    Record,
    format_example,
)

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedTokenizerFast

BUILD_VERSION = 2  # bump when the data, tokenizer or model recipe changes (caches key on it)
HELDOUT_SEED = 2024_11_25  # the evaluation problems; training never sees them
EOS, PAD = "<|endoftext|>", "<|pad|>"  # Qwen2's names (Qwen2Tokenizer's defaults)

# -- the synthetic task ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoProblem:
    problem: str
    code: str  # the expression the model must write, as Python
    answer: int


def _number(rng: random.Random, low_digits: int, high_digits: int) -> int:
    digits = rng.randint(low_digits, high_digits)
    return rng.randint(10 ** (digits - 1), 10**digits - 1)


QUESTIONS = ("What is {}?", "Compute {}.", "Evaluate {}.", "Find the value of {}.", "Calculate {} exactly.")


def make_problem(rng: random.Random) -> DemoProblem:
    """One problem whose answer needs a multi-digit product or sum computed exactly.

    The expression is written in the problem as Python writes it, so the code is a copy of it
    (a contiguous span: a 1M-parameter model learns that copy in a few hundred steps, while
    gathering numbers scattered through a word problem takes it far longer than the budget).
    """
    a, b, c = _number(rng, 3, 5), _number(rng, 2, 4), _number(rng, 2, 5)
    expression = rng.choice(
        (
            f"{a} * {b}",
            f"{a} * {b} + {c}",
            f"{a} * {b} - {c}",
            f"{a} + {b * 97} + {c * 89}",
            f"({a} + {c}) * {b}",
            f"{b} * {c} + {a}",
        )
    )
    answer = eval(expression)  # noqa: S307 - our own arithmetic on literals
    return DemoProblem(rng.choice(QUESTIONS).format(expression), expression, answer)


def solution_text(problem: DemoProblem, output: str | None = None) -> str:
    """The ToRA-format solution; `output` defaults to what the code prints."""
    value = str(problem.answer) if output is None else output
    return (
        "We compute it exactly with Python.\n\n"
        f"```python\nprint({problem.code})\n```\n"
        f"```output\n{value}\n```\n"
        f"The answer is $\\boxed{{{value}}}$."
    )


def heldout_problems(count: int = 100, seed: int = HELDOUT_SEED) -> list[DemoProblem]:
    """The evaluation problems (distinct statements), never used for training."""
    rng, seen, problems = random.Random(seed), set(), []
    while len(problems) < count:
        problem = make_problem(rng)
        if problem.problem not in seen:
            seen.add(problem.problem)
            problems.append(problem)
    return problems


def training_problems(seed: int, exclude: Sequence[DemoProblem] = ()) -> Iterator[DemoProblem]:
    """An endless stream of training problems, skipping any statement in `exclude`."""
    rng, excluded = random.Random(seed), {p.problem for p in exclude}
    while True:
        problem = make_problem(rng)
        if problem.problem not in excluded:
            yield problem


def synthetic_records(count: int, seed: int = 0) -> list[Record]:
    """The task as training.data Records (the `synthetic-arithmetic` data source)."""
    stream = training_problems(seed, exclude=heldout_problems())
    return [Record(p.problem, solution_text(p), str(p.answer)) for p in (next(stream) for _ in range(count))]


# -- tokenizer and model --------------------------------------------------------------------------


def build_tokenizer(texts: Sequence[str], vocab_size: int = 384) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on `texts`: digits one per token, the prompt markers as added tokens.

    The pipeline is Qwen2's own (NFC, Qwen2's pre-tokenizer regex, which isolates every digit,
    byte-level), and the tokenizer is a Qwen2Tokenizer: transformers maps a qwen2 checkpoint to
    that class whatever its tokenizer_config says and rebuilds that pipeline on load, so any
    other pipeline would tokenize differently when served than when trained. `save_tokenizer`
    checks the round trip.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX, Qwen2Tokenizer

    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    state = json.loads(tokenizer.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in state["merges"]]
    fast = Qwen2Tokenizer(
        vocab=state["vocab"],
        merges=merges,
        unk_token=EOS,
        eos_token=EOS,
        pad_token=PAD,
        model_max_length=4096,
        clean_up_tokenization_spaces=False,
    )
    # Ordinary added tokens (not special): they stay in decoded text, as NuminaMath's markers do.
    fast.add_tokens([PROBLEM_PREFIX, SOLUTION_PREFIX])
    fast.chat_template = NUMINA_CHAT_TEMPLATE
    return fast


def save_tokenizer(tokenizer, out: Path, probes: Sequence[str]):
    """Save `tokenizer` and return it as transformers (and so vLLM) loads it back.

    Raises if the reloaded tokenizer encodes any probe text differently, or has a different
    vocabulary size: training on one tokenization and serving another makes a model emit garbage.
    """
    from transformers import AutoTokenizer

    tokenizer.save_pretrained(out)
    loaded = AutoTokenizer.from_pretrained(out)
    if len(loaded) != len(tokenizer):
        raise RuntimeError(f"the saved tokenizer has {len(loaded)} tokens, the trained one {len(tokenizer)}")
    for text in probes:
        if (
            loaded(text, add_special_tokens=False)["input_ids"]
            != tokenizer(text, add_special_tokens=False)["input_ids"]
        ):
            raise RuntimeError(f"the saved tokenizer encodes {text!r} differently")
    return loaded


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
    vocab_size: int = 384
    max_positions: int = 4096
    seed: int = 0
    eval_every: int = 100
    eval_problems: int = 64


def build_model(tokenizer: PreTrainedTokenizerFast, config: DemoConfig):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    if config.hidden_size // config.num_heads < 32:
        raise ValueError("vLLM's CPU attention needs hidden_size / num_heads >= 32")
    model_config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_heads,
        max_position_embeddings=config.max_positions,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
    )
    torch.manual_seed(config.seed)
    return Qwen2ForCausalLM(model_config)


# -- training -------------------------------------------------------------------------------------


def _scored_spans(problem: DemoProblem) -> tuple[str, int, tuple[int, int]]:
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
        spans = [_scored_spans(p) for p in (next(problems) for _ in range(chunk))]
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


def teacher_forced_accuracy(model, tokenizer, problems: Sequence[DemoProblem]) -> float:
    """Share of problems whose code and boxed answer the model predicts exactly, token by token.

    Teacher-forced on the reference text (one forward pass per problem); the output block's
    contents are excluded (the executor, not the model, writes them). A cheap proxy of the
    solver's accuracy, logged while training.
    """
    import torch

    correct = 0
    model.eval()
    with torch.no_grad():
        for problem in problems:
            text, completion_start, output = _scored_spans(problem)
            [(ids, offsets)] = _encode_as_served(tokenizer, [(text, completion_start, output)])
            ids = ids + [tokenizer.eos_token_id]
            offsets = offsets + [(len(text), len(text))]
            scored = _loss_mask(offsets, completion_start, output)
            predicted = model(torch.tensor([ids])).logits[0].argmax(-1).tolist()
            correct += all(predicted[i - 1] == ids[i] for i in range(1, len(ids)) if scored[i])
    model.train()
    return correct / len(problems)


@dataclass
class BuildReport:
    out: str
    build_version: int
    steps: int
    train_seconds: float
    final_loss: float
    teacher_forced_accuracy: float
    parameters: int
    threads: int
    history: list[dict[str, float]]


def build_demo_model(
    out: Path,
    config: DemoConfig = DemoConfig(),
    *,
    threads: int | None = None,
    progress: bool = True,
) -> BuildReport:
    """Train the demo model from scratch and save it to `out`; returns what happened."""
    import torch
    from transformers import GenerationConfig

    started = time.monotonic()
    threads = threads or int(os.environ.get("OMP_NUM_THREADS") or 0) or 1
    torch.set_num_threads(threads)
    random.seed(config.seed)

    heldout = heldout_problems()
    corpus = training_problems(config.seed + 1, exclude=heldout)
    texts = [format_example(p.problem, solution_text(p)) for p in (next(corpus) for _ in range(3000))]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # Train with the tokenizer exactly as transformers and vLLM will load it from `out`.
    tokenizer = save_tokenizer(build_tokenizer(texts, vocab_size=config.vocab_size), out, texts[:200])
    model = build_model(tokenizer, config)
    parameters = sum(p.numel() for p in model.parameters())
    validation = list(_take(training_problems(config.seed + 2, exclude=heldout), config.eval_problems))

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.learning_rate,
        betas=(0.9, 0.95),
    )
    schedule = _cosine_with_floor(optimizer, config)
    batches = _blocks(
        _examples(tokenizer, training_problems(config.seed, exclude=heldout)),
        config.batch_size,
        config.block_size,
        tokenizer.pad_token_id,
    )

    history: list[dict[str, float]] = []
    loss_value, accuracy, ema = float("nan"), 0.0, None
    train_started = time.monotonic()
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
                elapsed = time.monotonic() - train_started
                history.append(
                    {"step": step, "loss": round(ema, 4), "accuracy": accuracy, "seconds": round(elapsed, 1)}
                )
                if not progress:
                    print(
                        f"step {step}: loss {ema:.3f}, held-out code+answer {accuracy:.0%}, {elapsed:.0f} s", flush=True
                    )
            bar.update(task, advance=1, loss=ema, acc=accuracy)
    train_seconds = time.monotonic() - train_started

    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )
    model.save_pretrained(out, safe_serialization=True)
    report = BuildReport(
        out=str(out),
        build_version=BUILD_VERSION,
        steps=config.steps,
        train_seconds=round(train_seconds, 1),
        final_loss=round(ema if ema is not None else loss_value, 4),
        teacher_forced_accuracy=accuracy,
        parameters=parameters,
        threads=threads,
        history=history,
    )
    (out / "demo_build.json").write_text(
        json.dumps(
            {"report": asdict(report), "config": asdict(config), "total_seconds": time.monotonic() - started}, indent=2
        )
    )
    return report


def build_signature(config: DemoConfig = DemoConfig()) -> str:
    """A short hash of everything the demo model depends on: caches of it key on this."""
    import hashlib

    import transformers

    from training import data

    digest = hashlib.sha256()
    for part in (
        str(BUILD_VERSION),
        json.dumps(asdict(config), sort_keys=True),
        Path(__file__).read_text(),
        Path(data.__file__).read_text(),
        transformers.__version__,
    ):
        digest.update(part.encode())
    return digest.hexdigest()[:12]


def _take(iterator: Iterator[DemoProblem], count: int) -> list[DemoProblem]:
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("models/demo"), help="output directory (default: models/demo)")
    parser.add_argument("--steps", type=int, default=DemoConfig.steps)
    parser.add_argument("--seed", type=int, default=DemoConfig.seed)
    parser.add_argument(
        "--threads",
        type=int,
        help="torch threads (default: OMP_NUM_THREADS, else 1; two threads on a busy 2-core machine ran 9x slower)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    from rich.console import Console

    console = Console(stderr=True)
    report = build_demo_model(
        args.out, DemoConfig(steps=args.steps, seed=args.seed), threads=args.threads, progress=not args.quiet
    )
    console.print(
        f"[bold green]demo model[/] -> {report.out}: {report.parameters / 1e6:.2f}M parameters, {report.steps} steps "
        f"in {report.train_seconds:.0f} s on {report.threads} thread(s); loss {report.final_loss:.3f}, held-out "
        f"code+answer (teacher-forced) {report.teacher_forced_accuracy:.0%}"
    )
    console.print(f"serve it: SCTIR_ENGINE=vllm SCTIR_MODEL={report.out} SCTIR_DTYPE=float32 sctir serve")
    if report.teacher_forced_accuracy < 0.9:
        console.print("[yellow]the model has not learnt the task yet: train longer (--steps)[/]")
        sys.exit(1)


if __name__ == "__main__":
    main()
