"""Feedback fidelity: what the model sees after a block, our runner vs the reference notebook's REPL.

Every ```python block of the real ToRA-70B GSM8K traces
(../shared/data/tora70b_gsm8k_traces.jsonl) and of the ToRA corpus examples
(tora_corpus_examples.jsonl), or $SCTIR_DATA_DIR, extracted as the notebook
extracts the block it runs (`re.findall(r"```python(.*?)```")`, so with the
newline after the fence), runs through

- the reference: bench/reference_executor.py, an independent reimplementation
  of the winning notebook's PythonREPL (textual print-wrap of the last line,
  a fresh `python tmp.py`, its traceback munging), capped by its process_code
  (200 characters + " ... (output truncated)");
- ours: sandbox.executors.LocalExecutor (the runner of the Docker sandbox, as a
  local process), the service's defaults (timeout, output cap), the text the
  service writes: service.tir.output_block(result.feedback).

Each block is identical (the same text in the output block), or differs by
kind, decided in this order: auto-print (the two programs differ: the
reference wraps the last line in print() textually, we decide with `ast`;
compared as ASTs), exit status (one failed, the other did not), cap (the
first 200 characters agree: the texts differ only in the truncation), traceback
(both failed, the texts differ), other (both succeeded, the stdout differs).
The closing fence is part of the compared text (the notebook appends
"\\n```", no newline after it).

    python -m bench.feedback_fidelity [--write] [--limit N]
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import json
import os
import platform
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.reference_executor import (
    REFERENCE_TIMEOUT_S,
    REFERENCE_TRUNCATION_LIMIT,
    ReferenceExecutor,
    reference_output_block,
    reference_program,
)
from bench.sandbox import TRACES, data_dir, write_section
from sandbox.execution import ExecutionResult, ExecutionStatus

CORPUS = "tora_corpus_examples.jsonl"
NOTEBOOK_BLOCK = re.compile(r"```python(.*?)```", re.DOTALL)  # execute_completion's regex
SECTION_START = "<!-- bench/feedback_fidelity.py: start -->"
SECTION_END = "<!-- bench/feedback_fidelity.py: end -->"
KINDS = ("identical", "auto-print", "exit status", "cap", "traceback", "other")
DATASETS = {"tora70b-gsm8k": TRACES, "tora-corpus": CORPUS}


@dataclass(frozen=True)
class Sample:
    dataset: str
    source: str  # the trace's idx or the example's id
    code: str  # as the notebook extracts it: the text between the fences


def load_samples(root: Path | None = None) -> list[Sample]:
    """Every ```python block of both data sets, in file order."""
    root = root or data_dir()
    samples = []
    with open(root / TRACES, encoding="utf-8") as file:
        for line in file:
            row = json.loads(line)
            for generation in row["code"]:
                samples += [Sample("tora70b-gsm8k", str(row["idx"]), c) for c in NOTEBOOK_BLOCK.findall(generation)]
    with open(root / CORPUS, encoding="utf-8") as file:
        for line in file:
            row = json.loads(line)
            for message in row["messages"]:
                if message["role"] == "assistant":
                    blocks = NOTEBOOK_BLOCK.findall(message["content"])
                    samples += [Sample("tora-corpus", row["id"], c) for c in blocks]
    return samples


def _tree(source: str) -> str | None:
    try:
        return ast.dump(ast.parse(source))
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None


def wrapping_differs(code: str) -> bool:
    """Whether the reference's program and ours differ (as ASTs: comments, blanks and spacing aside).

    Both unparsable counts as the same program (both report a SyntaxError).
    """
    from sandbox.runner.program import block_program  # our runner's preparation, the thing under test

    return _tree(reference_program(code)) != _tree(block_program(code))


@dataclass
class Outcome:
    sample: Sample
    kind: str
    reference: str  # the reference's text before its cap
    ours: str  # our feedback before the cap
    reference_failed: bool
    ours_failed: bool
    only_past_cap: bool = False  # identical in the output block, different before the cap
    reference_timed_out: bool = False
    ours_timed_out: bool = False


def our_block(feedback: str) -> str:
    """The text our service writes after the output marker (the capped feedback and the closing fence)."""
    from service.tir import output_block

    return output_block(feedback)


def classify(sample: Sample, reference: ExecutionResult, ours: ExecutionResult) -> Outcome:
    ref_text, our_raw = reference.feedback, ours.feedback
    ref_failed = reference.status is not ExecutionStatus.OK
    our_failed = ours.status is not ExecutionStatus.OK
    outcome = Outcome(sample, "", ref_text, our_raw, ref_failed, our_failed)
    outcome.reference_timed_out = reference.status is ExecutionStatus.TIMEOUT
    outcome.ours_timed_out = ours.status is ExecutionStatus.TIMEOUT
    if reference_output_block(ref_text) == our_block(our_raw):
        outcome.kind = "identical"
        outcome.only_past_cap = ref_text != our_raw
    elif wrapping_differs(sample.code):
        outcome.kind = "auto-print"
    elif ref_failed != our_failed:
        outcome.kind = "exit status"
    elif ref_text[:REFERENCE_TRUNCATION_LIMIT] == our_raw[:REFERENCE_TRUNCATION_LIMIT]:
        outcome.kind = "cap"
    elif ref_failed:
        outcome.kind = "traceback"
    else:
        outcome.kind = "other"
    return outcome


async def run_all(executor, samples: list[Sample], concurrency: int, progress=None) -> list[ExecutionResult]:
    results: list[ExecutionResult | None] = [None] * len(samples)
    queue = iter(range(len(samples)))

    async def worker() -> None:
        for index in queue:
            results[index] = await executor.execute(samples[index].code)
            if progress is not None:
                progress()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results  # type: ignore[return-value]


# ---------------------------------------------------------------------------
# Report


def _short(text: str, limit: int = 110) -> str:
    text = json.dumps(text, ensure_ascii=False)[1:-1]  # one line, escapes visible
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _code(text: str) -> str:
    """Inline markdown code that survives backticks inside."""
    text = text.replace("|", "\\|")
    return f"`` {text} ``" if text else "(empty)"


def _last_line(code: str) -> str:
    lines = [line for line in code.strip().split("\n") if line.strip()]
    return lines[-1] if lines else ""


def examples(outcomes: list[Outcome], kind: str, count: int = 4) -> list[Outcome]:
    """Up to `count` examples of `kind`, each with a different pair of last lines (variety over repeats)."""
    chosen, seen = [], set()
    for outcome in outcomes:
        if outcome.kind != kind:
            continue
        signature = (outcome.reference.strip().split("\n")[-1][:40], outcome.ours.strip().split("\n")[-1][:40])
        if signature in seen:
            continue
        seen.add(signature)
        chosen.append(outcome)
        if len(chosen) == count:
            break
    return chosen


def markdown(outcomes: list[Outcome], command: str, machine: str, timeout_s: float, seconds: float) -> str:
    """The section of BENCHMARKS.md: how the texts compare, by kind, with what both runs were."""
    total = len(outcomes)
    past_cap = sum(o.only_past_cap for o in outcomes)
    wrapped = sum("print(" not in _last_line(o.sample.code) for o in outcomes)
    ref_failed = sum(o.reference_failed for o in outcomes)
    our_failed = sum(o.ours_failed for o in outcomes)
    ref_timeouts = sum(o.reference_timed_out for o in outcomes)
    our_timeouts = sum(o.ours_timed_out for o in outcomes)
    lines = [
        SECTION_START,
        "## Feedback fidelity: our runner vs the reference notebook's REPL (bench/feedback_fidelity.py)",
        "",
        f"Command: `{command}`",
        "",
        "Every ```python block of the real ToRA-70B GSM8K traces and of the ToRA corpus examples, extracted as "
        "the notebook extracts the block it runs, through (a) bench/reference_executor.py, our reimplementation "
        "of the winning notebook's PythonREPL from its code (textual print-wrap of the last line, a fresh "
        f"`python tmp.py`, its traceback munging, a {REFERENCE_TIMEOUT_S} s timeout, its 200-character cap) and "
        "(b) sandbox.executors.LocalExecutor, the runner of the Docker sandbox, with the service's defaults "
        f"({timeout_s:g} s), as service.tir.output_block writes it. Same interpreter and packages for both. "
        f"Machine: {machine}; {seconds:.0f} s.",
        "",
        "A block is identical when the text in the output block is the same. Otherwise, the first that applies: "
        "**auto-print** (the programs differ: the reference wraps the last line in `print(...)` textually, "
        "ours only an expression statement, decided with `ast`; compared as ASTs), **exit status** (one failed, "
        "the other not), **cap** (the first 200 characters agree), **traceback** (both failed, the texts differ), "
        "**other** (both succeeded, the stdout differs).",
        "",
        *kind_table(outcomes),
        "",
        f"Blocks whose last line the reference wraps in print() (no `print(` on it): {wrapped} of {total}. "
        f"Failed (error, timeout or signal): reference {ref_failed} ({ref_timeouts} timeouts), ours {our_failed} "
        f"({our_timeouts} timeouts). {past_cap} of the identical blocks are identical only thanks to the cap "
        "(their full texts differ past 200 characters). The closing fence is part of the compared text: "
        f"the notebook's `` {json.dumps(reference_output_block(''))} ``, the service's "
        f"`` {json.dumps(our_block(''))} ``.",
        "",
        "Examples (texts before the cap, one line, escapes shown; code: the block's last line):",
        *example_lines(outcomes),
        SECTION_END,
    ]
    return "\n".join(lines)


def kind_table(outcomes: list[Outcome]) -> list[str]:
    """How many blocks of each kind, per data set and in all (the Markdown table's lines)."""
    datasets = list(dict.fromkeys(o.sample.dataset for o in outcomes))
    counts = {d: Counter(o.kind for o in outcomes if o.sample.dataset == d) for d in datasets}
    totals = {d: sum(counts[d].values()) for d in datasets}
    all_counts, total = Counter(o.kind for o in outcomes), len(outcomes)
    lines = [
        "| kind | " + " | ".join(f"{d} ({totals[d]} blocks)" for d in datasets) + f" | all ({total}) |",
        "|---|" + "---:|" * (len(datasets) + 1),
    ]
    for kind in KINDS:
        cells = [f"{counts[d][kind]} ({counts[d][kind] / totals[d]:.1%})" for d in datasets]
        cells.append(f"{all_counts[kind]} ({all_counts[kind] / total:.1%})")
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    return lines


def example_lines(outcomes: list[Outcome]) -> list[str]:
    """A few examples of each kind of difference, so that a reader sees what each kind means."""
    lines: list[str] = []
    for kind in KINDS[1:]:
        chosen = examples(outcomes, kind)
        if not chosen:
            continue
        lines += ["", f"**{kind}**", ""]
        for o in chosen:
            lines.append(
                f"- {o.sample.dataset} {o.sample.source}, code {_code(_short(_last_line(o.sample.code), 60))}: "
                f"reference {_code(_short(o.reference))}; ours {_code(_short(o.ours))}"
            )
    return lines


def service_defaults() -> tuple[float, int]:
    """The service's default execution timeout and output cap in bytes (what a deployment runs with)."""
    from service.settings import Settings

    fields = Settings.model_fields
    return fields["execution_timeout_s"].default, fields["execution_max_output_bytes"].default


async def main(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console()
    root = data_dir()
    missing = [name for name in DATASETS.values() if not (root / name).exists()]
    if missing:
        console.print(f"[yellow]no {', '.join(missing)} in {root} (set SCTIR_DATA_DIR): nothing to measure")
        return 0
    samples = load_samples(root)
    wrapping_differs("x")  # fail before the runs, not after them, if our preparation's name moved
    if args.limit:
        samples = samples[: args.limit]
    timeout_s, max_output_bytes = service_defaults()
    started = time.monotonic()
    outcomes = await measure(samples, args.concurrency, timeout_s, max_output_bytes, console)
    seconds = time.monotonic() - started
    print_summary(console, outcomes)

    machine = f"{os.cpu_count()} cores, {platform.system()} {platform.release()}, Python {platform.python_version()}"
    argv = " ".join(sys.argv[1:]).replace(f"--json {args.json}", "").split()  # --json changes nothing measured
    command = " ".join(["python -m bench.feedback_fidelity", *argv])
    text = markdown(outcomes, command, machine, timeout_s, seconds)
    if args.write:
        write_section(text)
        console.print("BENCHMARKS.md updated")
    else:
        console.print(text, highlight=False, markup=False)
    if args.json:
        write_jsonl(Path(args.json), outcomes)
    return 0


async def measure(
    samples: list[Sample], concurrency: int, timeout_s: float, max_output_bytes: int, console: Any
) -> list[Outcome]:
    """Every sample through the reference REPL, then through our LocalExecutor, classified side by side."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from sandbox.executors import LocalExecutor

    reference = ReferenceExecutor(timeout_s=REFERENCE_TIMEOUT_S, concurrency=concurrency)
    ours = LocalExecutor(timeout_s=timeout_s, concurrency=concurrency, max_output_bytes=max_output_bytes)
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as progress:
        task = progress.add_task("reference", total=len(samples))
        reference_results = await run_all(reference, samples, concurrency, lambda: progress.advance(task))
        await ours.start()
        try:
            task = progress.add_task("ours (LocalExecutor)", total=len(samples))
            our_results = await run_all(ours, samples, concurrency, lambda: progress.advance(task))
        finally:
            await ours.close()
    return [classify(s, r, o) for s, r, o in zip(samples, reference_results, our_results)]


def print_summary(console: Any, outcomes: list[Outcome]) -> None:
    """The kinds per dataset as a table, then three examples of each kind of difference."""
    from rich.table import Table

    datasets = list(dict.fromkeys(o.sample.dataset for o in outcomes))
    table = Table(title=f"feedback fidelity, {len(outcomes)} blocks")
    table.add_column("kind")
    for name in [*datasets, "all"]:
        table.add_column(name, justify="right")
    for kind in KINDS:
        cells = []
        for name in [*datasets, "all"]:
            group = [o for o in outcomes if name in ("all", o.sample.dataset)]
            n = sum(o.kind == kind for o in group)
            cells.append(f"{n} ({n / len(group):.1%})")
        table.add_row(kind, *cells)
    console.print(table)
    for kind in KINDS[1:]:
        for o in examples(outcomes, kind, 3):
            console.print(f"[bold]{kind}[/] {o.sample.dataset} {o.sample.source}", highlight=False)
            console.print(f"  code:      {_short(_last_line(o.sample.code), 80)}", highlight=False, markup=False)
            console.print(f"  reference: {_short(o.reference, 150)}", highlight=False, markup=False)
            console.print(f"  ours:      {_short(o.ours, 150)}", highlight=False, markup=False)


def write_jsonl(path: Path, outcomes: list[Outcome]) -> None:
    """Every block's outcome, one JSON object a line (--json)."""
    rows = [
        {
            "dataset": o.sample.dataset,
            "source": o.sample.source,
            "kind": o.kind,
            "code": o.sample.code,
            "reference_block": reference_output_block(o.reference),
            "reference": o.reference,
            "ours": o.ours,
        }
        for o in outcomes
    ]
    path.write_text("\n".join(json.dumps(row, ensure_ascii=False) for row in rows) + "\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=0, help="only the first N blocks (0: all)")
    parser.add_argument("--concurrency", type=int, default=2, help="blocks in flight per executor")
    parser.add_argument("--json", default="", help="also write every block's outcome to this JSONL file")
    parser.add_argument("--write", action="store_true", help="replace this benchmark's section of BENCHMARKS.md")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
