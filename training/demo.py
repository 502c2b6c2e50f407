"""The offline demo model: a tiny TIR model trained from scratch on CPU in minutes, shipped in models/demo.

    python -m training.demo --out models/demo     # `make demo-model`: 1200 steps, ~10 min on one busy core
    sctir serve --model models/demo               # the service applies the demo's CPU settings itself

The task (training.synthetic) is three families of problems that a 1.1M-parameter model cannot
solve in its head but can write the code for. So the model learns to write the code and to copy
the executed output into the box; the answer comes from the tool. `bench/demo_model.py` proves
it: through the real solver with code execution it answers all held-out problems, and with
every output block left empty none. tests/test_e2e.py checks that the shipped model votes each
of the README's examples (training.synthetic.EXAMPLES) through the real service.

The build: a tokenizer and a random Qwen2 from scratch (training.scratch: byte-level BPE with
every digit its own token and every word of the templates one token; "### Problem: " and "###
Solution: " as added tokens, so the prompt's trailing space tokenizes the same in training and
serving), then the loop of training.demo_training. The output directory is an ordinary Hugging
Face checkpoint (config.json, model.safetensors, tokenizer files with NuminaMath's chat template,
generation_config.json) that transformers loads and vLLM serves (4 heads of 32: vLLM's CPU
attention needs a head size of at least 32), plus its build record (demo_build.json), which
names the recipe by `build_signature()`: tests/test_demo_model.py fails when the shipped model
was built by another recipe.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from service.tir import NUMINA_CHAT_TEMPLATE, PROBLEM_PREFIX, SOLUTION_PREFIX
from training import demo_training, scratch, synthetic
from training.data import format_example
from training.demo_training import DemoConfig, scored_spans, take, train
from training.scratch import build_tokenizer, random_qwen2, save_tokenizer
from training.synthetic import heldout_problems, solution_text, training_problems

BUILD_VERSION = 3  # bump when the data, tokenizer or model recipe changes (build_signature covers it)
BUILD_RECORD = "demo_build.json"  # in the model's directory: what was built, how, and by which recipe


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
    import transformers

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
    model = random_qwen2(tokenizer, config.shape, config.seed)
    parameters = sum(p.numel() for p in model.parameters())
    run = train(model, tokenizer, config, heldout, progress=progress)

    model.generation_config = transformers.GenerationConfig(
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )
    model.save_pretrained(out, safe_serialization=True)
    report = BuildReport(
        out=str(out),
        build_version=BUILD_VERSION,
        steps=config.steps,
        train_seconds=round(run.seconds, 1),
        final_loss=round(run.final_loss, 4),
        teacher_forced_accuracy=run.accuracy["all"],
        by_family={name: value for name, value in run.accuracy.items() if name != "all"},
        parameters=parameters,
        threads=threads,
        history=run.history,
    )
    record = {
        "signature": build_signature(config),
        "report": asdict(report),
        "config": asdict(config),
        "total_seconds": round(time.monotonic() - started, 1),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    (out / BUILD_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return report


# The modules whose code is the recipe: the task, the tokenizer and model, the loop, the build.
RECIPE_MODULES = (synthetic, scratch, demo_training, sys.modules[__name__])


def build_signature(config: DemoConfig = DemoConfig()) -> str:
    """A short hash of the recipe: a shipped model whose build record holds another one is stale.

    It covers BUILD_VERSION, the config, the code of RECIPE_MODULES (`_recipe_code`: prose and
    imports do not count, so moving a name between modules keeps the signature as long as the
    code is the same) and what those modules take from elsewhere: a sample of the training
    texts as scored (training.data's prompt format, service.tir's output block) and the
    tokenizer's chat template and added tokens. Library versions do not count: the build checks
    its tokenizer's round trip, and the record names the versions it was built with.
    """
    import hashlib

    samples = [scored_spans(p) for p in take(training_problems(config.seed), 64)]
    digest = hashlib.sha256()
    for part in (
        str(BUILD_VERSION),
        json.dumps(asdict(config), sort_keys=True),
        *(_recipe_code(Path(module.__file__)) for module in RECIPE_MODULES),
        json.dumps(samples),
        NUMINA_CHAT_TEMPLATE,
        PROBLEM_PREFIX,
        SOLUTION_PREFIX,
    ):
        digest.update(part.encode())
    return digest.hexdigest()[:12]


def _recipe_code(path: Path) -> str:
    """The module's source without docstrings, comments, imports and blank lines.

    Read from the text, not from `ast.dump` or `ast.unparse`, whose output differs between
    Python 3.11 and 3.12 for the same source (measured): the signature must not depend on the
    interpreter that computes it.
    """
    import ast
    import io
    import tokenize

    source = path.read_text()
    lines = source.splitlines()
    skipped: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and ast.get_docstring(node) is not None:
            skipped.update(range(node.body[0].lineno - 1, node.body[0].end_lineno))
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            skipped.update(range(node.lineno - 1, node.end_lineno))
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            row, column = token.start
            lines[row - 1] = lines[row - 1][:column]
    return "\n".join(line.rstrip() for i, line in enumerate(lines) if i not in skipped and line.strip())


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
