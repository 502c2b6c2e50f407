"""The offline demo model: a tiny TIR model trained from scratch on CPU in minutes, shipped in models/demo.

    python -m training.demo --out models/demo     # `make demo-model`: 1200 steps, ~10 min on one busy core
    sctir serve --model models/demo               # the service applies the demo's CPU settings itself

The task is three families of problems that a 1.1M-parameter model cannot solve in its head but
can write the code for:
- integer arithmetic with products, powers and parentheses ("What is 2^10 - 1?", "Compute
  (17 + 8) * 3^4."), the power written `^` in the problem and `**` in the code;
- word problems from templates: someone has, buys, gives away, shares or packs things ("Tom has
  48 apples. Tom buys 25 more apples. How many apples does Tom have now?"), the code one
  expression of the story's numbers;
- linear equations in x with an integer root ("Solve 5x - 8 = 2x + 19 for x."), solved in the
  code with SymPy (`sp`, from the executor's preamble).
Every training solution is in the ToRA format the service speaks: a sentence, a ```python block
that prints the answer, the ```output block with the printed value, and "The answer is
$\\boxed{value}$." So the model learns to write the code and to copy the executed output into
the box; the answer comes from the tool. `bench/demo_model.py` proves it: through the real
solver with code execution it answers all held-out problems, and with every output block left
empty none. `EXAMPLES` are the problems the README shows; tests/test_e2e.py checks that the
shipped model votes each one's answer through the real service.

The output directory is an ordinary Hugging Face checkpoint (config.json, model.safetensors,
tokenizer files with NuminaMath's chat template, generation_config.json) that transformers
loads and vLLM serves (4 heads of 32: vLLM's CPU attention needs a head size of at least 32),
plus its build record (demo_build.json), which names the recipe by `build_signature()`:
tests/test_demo_model.py fails when the shipped model was built by another recipe.

What makes it learn on CPU (measured on 2 busy cores): byte-level BPE with every digit its own
token (numbers are copied digit by digit) and every word of the templates one token; "###
Problem: " and "### Solution: " as added tokens, so the prompt's trailing space tokenizes the
same in training and serving; code that copies the problem: the expression or equation as
written, with one token translated (`^` -> `**`, `3x` -> `3*x`), and each number of a story
right after a fixed word of its template (found by what precedes it, not by where it is); the
loss on the completion only, without the output block (ToRA's masking: the executor writes it);
each example alone in its packed block (positions from 0, no attention across examples), as it
is served (`_encode_as_served`: tokenized as the service's prompts are); lr 1e-3 (3e-3 did not
learn within 1500 steps), cosine decay, blocks of 512 tokens, batch 4, 1200 steps. The copy is
learnt suddenly, around step 300-400; word problems first, arithmetic last.
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

BUILD_VERSION = 3  # bump when the data, tokenizer or model recipe changes (build_signature covers it)
BUILD_RECORD = "demo_build.json"  # in the model's directory: what was built, how, and by which recipe
HELDOUT_SEED = 2024_11_25  # the evaluation problems; training never sees them
EOS, PAD = "<|endoftext|>", "<|pad|>"  # Qwen2's names (Qwen2Tokenizer's defaults)

# -- the synthetic task ---------------------------------------------------------------------------

FAMILIES = ("arithmetic", "word", "equation")
# Their shares of the training problems: arithmetic is learnt last (its copies are the longest and
# the most varied), word problems first (measured: 100% of held-out word problems by step 400).
FAMILY_WEIGHTS = (4, 2, 3)


@dataclass(frozen=True)
class DemoProblem:
    family: str  # one of FAMILIES
    problem: str
    code: str  # the ```python block the model must write (the sandbox's preamble gives it `sp`)
    answer: int  # what that block prints


@dataclass(frozen=True)
class DemoExample:
    """A problem the README shows, and the answer the shipped model must vote for."""

    problem: str
    answer: int


# The README's examples, two or more per family (tests/test_demo_model.py checks that the shipped
# model votes each answer through the real solver). Training never sees these statements.
EXAMPLES: tuple[DemoExample, ...] = (
    DemoExample("What is 2^10 - 1?", 1023),
    DemoExample("Compute (17 + 8) * 3^4.", 2025),
    DemoExample("What is 3272 * 825 + 86?", 2699486),
    DemoExample("Tom has 48 apples. Tom buys 25 more apples. How many apples does Tom have now?", 73),
    DemoExample("Mia shares 144 cookies equally among 6 friends. How many cookies does each friend get?", 24),
    DemoExample(
        "Sara has 12 bags with 15 marbles in each bag and gives away 23 marbles. How many marbles are left?", 157
    ),
    DemoExample("Solve 3x + 7 = 22 for x.", 5),
    DemoExample("Solve 5x - 8 = 2x + 19 for x.", 9),
)

ARITHMETIC_QUESTIONS = ("What is {}?", "Compute {}.", "Evaluate {}.", "Find the value of {}.", "Calculate {}.")
EQUATION_QUESTIONS = ("Solve {} for x.", "Find x such that {}.", "Solve for x: {}.", "What value of x satisfies {}?")
NAMES = ("Tom", "Mia", "Ali", "Sara", "Ben", "Lena", "Omar", "Zoe", "Ravi", "Emma", "Kai", "Nora")
ITEMS = ("apples", "marbles", "stickers", "cookies", "pencils", "cards", "books", "coins", "shells", "stamps")
# Word problems: the statement ({n} and {m} names, {i} the things, {a} {b} {c} numbers) and the
# expression that answers it. Division is exact; differences stay positive.
WORD_TEMPLATES = (
    ("{n} has {a} {i}. {n} buys {b} more {i}. How many {i} does {n} have now?", "{a} + {b}"),
    ("{n} has {a} {i} and {m} has {b} {i}. How many {i} do they have together?", "{a} + {b}"),
    ("{n} has {a} {i} and gives away {b} of them. How many {i} does {n} have left?", "{a} - {b}"),
    ("{n} had {a} {i} and lost {b}. How many {i} are left?", "{a} - {b}"),
    ("{n} buys {a} boxes of {i}. Each box holds {b} {i}. How many {i} does {n} buy?", "{a} * {b}"),
    ("There are {a} boxes with {b} {i} in each box. How many {i} are there in total?", "{a} * {b}"),
    ("A pack of {i} costs {a} dollars. How many dollars do {b} packs cost?", "{a} * {b}"),
    ("{n} shares {a} {i} equally among {b} friends. How many {i} does each friend get?", "{a} // {b}"),
    ("{n} packs {a} {i} into bags of {b}. How many bags does {n} fill?", "{a} // {b}"),
    ("{n} has {a} {i}, buys {b} more and then gives away {c}. How many {i} does {n} have now?", "{a} + {b} - {c}"),
    ("{n} has {a} bags with {b} {i} in each bag and gives away {c} {i}. How many {i} are left?", "{a} * {b} - {c}"),
)


def _number(rng: random.Random, low_digits: int, high_digits: int) -> int:
    digits = rng.randint(low_digits, high_digits)
    return rng.randint(10 ** (digits - 1), 10**digits - 1)


def _power(rng: random.Random) -> str:
    """`base^exponent`, at most 10 digits: beyond mental arithmetic, short enough to copy back."""
    base = rng.randint(2, 30)
    exponent = rng.randint(2, max(2, min(12, int(10 / math.log10(base)))))
    return f"{base}^{exponent}"


def _arithmetic(rng: random.Random) -> tuple[str, str, int]:
    """An integer expression with products, powers and parentheses, as (problem, code, answer).

    The expression is written in the problem as Python writes it, except `^` for `**`, so the
    code is a copy of it (a contiguous span: a 1M-parameter model learns that copy in a few
    hundred steps) with one token translated.
    """
    while True:
        a, b, c, d = _number(rng, 1, 4), _number(rng, 1, 3), _number(rng, 1, 4), _number(rng, 1, 3)
        big, mid = _number(rng, 3, 4), _number(rng, 2, 3)
        p, q, e = _power(rng), _power(rng), rng.randint(2, 5)
        expression = rng.choice(
            (
                f"{a} + {b}",
                f"{a} - {c}",
                f"{a} * {b}",
                p,
                f"{p} - {c}",
                f"{p} + {c}",
                f"{a} * {p}",
                f"{p} + {q}",
                f"{p} - {q}",
                f"({a} + {b})^{e}",
                f"({a} + {b}) * {c}",
                f"({a} + {b}) * ({c} + {d})",
                f"({a} + {b}) * ({c} - {d})",
                f"{a} * ({c} - {b})",
                f"({big} - {mid}) * {c}",
                f"({a} + {b}) * {p}",
                f"{big} * {mid} + {c}",
                f"{big} * {mid} - {c}",
                f"{big} + {mid * 97} + {c * 89}",
            )
        )
        code = expression.replace("^", "**")
        answer = eval(code)  # noqa: S307 - our own arithmetic on literals
        if abs(answer) < 10**12:
            return rng.choice(ARITHMETIC_QUESTIONS).format(expression), f"print({code})", answer


def _word(rng: random.Random) -> tuple[str, str, int]:
    """A one- or two-step story about things bought, given away, shared or packed."""
    template, formula = rng.choice(WORD_TEMPLATES)
    name, other = rng.sample(NAMES, 2)
    if "//" in formula:
        b = rng.randint(2, 12)
        a, c = b * rng.randint(2, 99), 0
    elif "*" in formula:
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        c = rng.randint(1, a * b - 1)
    else:
        a, b, c = rng.randint(10, 999), rng.randint(2, 99), rng.randint(2, 99)
        if "-" in formula:
            a = max(a, b + c + 1)
    expression = formula.format(a=a, b=b, c=c)
    problem = template.format(n=name, m=other, i=rng.choice(ITEMS), a=a, b=b, c=c)
    return problem, f"print({expression})", eval(expression)  # noqa: S307 - our own arithmetic


def _linear(coefficient: int, constant: int) -> tuple[str, str]:
    """`ax + b` as the problem writes it and as SymPy code: ("3x - 4", "3*x - 4"), ("x + 2", "x + 2")."""
    term = "x" if coefficient == 1 else f"{coefficient}x"
    sign = "+" if constant >= 0 else "-"
    text = f"{term} {sign} {abs(constant)}" if constant else term
    return text, text.replace(f"{coefficient}x", f"{coefficient}*x")


def _equation(rng: random.Random) -> tuple[str, str, int]:
    """A linear equation in x with an integer root, solved with SymPy in the code."""
    x, a, b = rng.randint(-9, 60), rng.randint(1, 12), rng.choice((-1, 1)) * rng.randint(1, 99)
    form = rng.randrange(3)
    if form < 2 and rng.random() < 0.2:
        b = 0  # "2x = 10", "5x = 2x + 27"
    if form == 0:  # ax + b = r
        left, code_left = _linear(a, b)
        right = code_right = str(a * x + b)
    elif form == 1:  # ax + b = cx + d, a > c
        c = rng.randint(1, 10)
        a = rng.randint(c + 1, 12)
        left, code_left = _linear(a, b)
        right, code_right = _linear(c, (a - c) * x + b)
    else:  # a(x + b) = r
        a = max(a, 2)
        inner, _ = _linear(1, b)
        left, code_left = f"{a}({inner})", f"{a}*({inner})"
        right = code_right = str(a * (x + b))
    code = f"x = sp.symbols('x')\nprint(sp.solve(sp.Eq({code_left}, {code_right}), x)[0])"
    return rng.choice(EQUATION_QUESTIONS).format(f"{left} = {right}"), code, x


_GENERATORS = {"arithmetic": _arithmetic, "word": _word, "equation": _equation}


def make_problem(rng: random.Random, family: str | None = None) -> DemoProblem:
    """One problem of `family` (default: drawn by FAMILY_WEIGHTS) whose answer needs its code run."""
    family = family or rng.choices(FAMILIES, weights=FAMILY_WEIGHTS)[0]
    problem, code, answer = _GENERATORS[family](rng)
    return DemoProblem(family, problem, code, answer)


def solution_text(problem: DemoProblem, output: str | None = None) -> str:
    """The ToRA-format solution; `output` defaults to what the code prints."""
    value = str(problem.answer) if output is None else output
    opening = "We solve the equation with SymPy." if problem.family == "equation" else "We compute it with Python."
    return f"{opening}\n\n```python\n{problem.code}\n```\n```output\n{value}\n```\nThe answer is $\\boxed{{{value}}}$."


def heldout_problems(count: int = 100, seed: int = HELDOUT_SEED) -> list[DemoProblem]:
    """The evaluation problems (distinct statements, the families in turn), never used for training."""
    rng, seen, problems = random.Random(seed), {e.problem for e in EXAMPLES}, []
    while len(problems) < count:
        problem = make_problem(rng, FAMILIES[len(problems) % len(FAMILIES)])
        if problem.problem not in seen:
            seen.add(problem.problem)
            problems.append(problem)
    return problems


def training_problems(seed: int, exclude: Sequence[DemoProblem] = ()) -> Iterator[DemoProblem]:
    """An endless stream of training problems, skipping any statement in `exclude` or EXAMPLES."""
    rng = random.Random(seed)
    excluded = {p.problem for p in exclude} | {e.problem for e in EXAMPLES}
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
    vocab_size: int = 1024  # a cap: the corpus yields ~570 tokens, every word of the templates one token
    max_positions: int = 4096
    seed: int = 0
    eval_every: int = 100
    eval_problems: int = 96


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
            text, completion_start, output = _scored_spans(problem)
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


@dataclass
class BuildReport:
    out: str
    build_version: int
    steps: int
    train_seconds: float
    final_loss: float
    teacher_forced_accuracy: float  # on all families; by_family has each one's
    by_family: dict[str, float]
    parameters: int
    threads: int
    history: list[dict[str, Any]]


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

    history: list[dict[str, Any]] = []
    loss_value, accuracy, ema = float("nan"), {"all": 0.0}, None
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
                    families = ", ".join(f"{name} {value:.0%}" for name, value in accuracy.items() if name != "all")
                    print(
                        f"step {step}: loss {ema:.3f}, held-out code+answer {accuracy['all']:.0%} ({families}), "
                        f"{elapsed:.0f} s",
                        flush=True,
                    )
            bar.update(task, advance=1, loss=ema, acc=accuracy["all"])
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
        teacher_forced_accuracy=accuracy["all"],
        by_family={name: value for name, value in accuracy.items() if name != "all"},
        parameters=parameters,
        threads=threads,
        history=history,
    )
    import transformers

    record = {
        "signature": build_signature(config),
        "report": asdict(report),
        "config": asdict(config),
        "total_seconds": round(time.monotonic() - started, 1),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    (out / BUILD_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return report


def build_signature(config: DemoConfig = DemoConfig()) -> str:
    """A short hash of the recipe: a shipped model whose build record holds another one is stale.

    It covers BUILD_VERSION, the config, this module's code (`_recipe_code`: prose does not
    count) and what the module takes from elsewhere: a sample of the training texts as scored
    (training.data's prompt format, service.tir's output block) and the tokenizer's chat
    template and added tokens. Library versions do not count: the build checks its tokenizer's
    round trip, and the record names the versions it was built with.
    """
    import hashlib

    samples = [_scored_spans(p) for p in _take(training_problems(config.seed), 64)]
    digest = hashlib.sha256()
    for part in (
        str(BUILD_VERSION),
        json.dumps(asdict(config), sort_keys=True),
        _recipe_code(),
        json.dumps(samples),
        NUMINA_CHAT_TEMPLATE,
        PROBLEM_PREFIX,
        SOLUTION_PREFIX,
    ):
        digest.update(part.encode())
    return digest.hexdigest()[:12]


def _recipe_code() -> str:
    """This module's source without docstrings, comments and blank lines.

    Read from the text, not from `ast.dump` or `ast.unparse`, whose output differs between
    Python 3.11 and 3.12 for the same source (measured): the signature must not depend on the
    interpreter that computes it.
    """
    import ast
    import io
    import tokenize

    source = Path(__file__).read_text()
    lines = source.splitlines()
    prose: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and ast.get_docstring(node) is not None:
            prose.update(range(node.body[0].lineno - 1, node.body[0].end_lineno))
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            row, column = token.start
            lines[row - 1] = lines[row - 1][:column]
    return "\n".join(line.rstrip() for i, line in enumerate(lines) if i not in prose and line.strip())


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
    console.print(f"serve it: sctir serve --model {report.out}")
    if report.teacher_forced_accuracy < 0.9:
        console.print("[yellow]the model has not learnt the task yet: train longer (--steps)[/]")
        sys.exit(1)


if __name__ == "__main__":
    main()
