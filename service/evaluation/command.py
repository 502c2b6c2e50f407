"""`sctir eval`: run a validation set through the solver, K seeds, resumable, and write the report.

    sctir eval --set math-l4 --seeds 5 --num-samples 48 --max-steps 4            # in-process
    sctir eval --set aime --seeds 5 --url http://127.0.0.1:8080                  # a running service
    sctir eval --set aime --budget-s 32400                                       # the AIMO budget

Also `python -m service.evaluation ...` (same flags). Heavy imports happen in run(), so
registering the subcommand costs `sctir serve` nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import signal
import sys
from pathlib import Path
from typing import Any

from service.exitcodes import ExitCode

REQUEST_FLAGS = ("num_samples", "max_steps", "temperature", "max_new_tokens", "execution_mode", "deadline_s")


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Register `eval` on the `sctir` subcommands."""
    parser = sub.add_parser(
        "eval",
        help="evaluate on a validation set (K seeds, resumable, JSON/Markdown/PNG report)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("problem set")
    data.add_argument(
        "--set",
        dest="set_name",
        metavar="NAME|FILE",
        help="a named set (--list-sets), hub:OWNER/NAME[:SPLIT], or a .jsonl/.json file",
    )
    data.add_argument("--list-sets", action="store_true", help="list the named sets and exit")
    data.add_argument(
        "--source",
        choices=["auto", "local", "hub"],
        default="auto",
        help="named sets: the local file in SCTIR_DATA_DIR, the Hugging Face hub, or local if present",
    )
    data.add_argument("--hub-id", help="load a named set from this hub dataset instead of its default")
    data.add_argument("--revision", help="hub revision (branch, tag or commit) to pin")
    data.add_argument(
        "--integer-rule",
        choices=["strict", "python-int"],
        default="strict",
        help="MATH Level 4/5 integer-answer filter (python-int: the winners' 754/721)",
    )
    data.add_argument("--limit", type=int, help="only the first N problems")

    run = parser.add_argument_group("run")
    run.add_argument("--seeds", type=int, default=1, metavar="K", help="runs of the whole set (seeds 0..K-1)")
    run.add_argument("--url", help="a running service (default: solve in this process, settings from SCTIR_*)")
    run.add_argument("--api-key", help="bearer token for --url")
    run.add_argument("--concurrency", type=int, default=1, help="problems in flight at once")
    run.add_argument("--out", type=Path, help="run directory (default: eval-runs/<set>-<settings hash>)")
    run.add_argument("--fresh", action="store_true", help="discard what the run directory holds and start over")
    run.add_argument("--report-only", action="store_true", help="rewrite the report of --out without solving")

    sc = parser.add_argument_group("SC-TIR (per request; default: the service's settings)")
    sc.add_argument("--num-samples", type=int, help="candidates per problem (N)")
    sc.add_argument("--max-steps", type=int, help="generation steps per candidate (M)")
    sc.add_argument("--temperature", type=float)
    sc.add_argument("--max-new-tokens", type=int)
    sc.add_argument("--answer-mode", choices=["aimo", "integer", "expression"], help="default: the set's own")
    sc.add_argument("--execution-mode", choices=["last_block", "session"])
    sc.add_argument("--deadline-s", type=float, help="time limit of one problem")

    budget = parser.add_argument_group("budgeted mode (a total time budget per seed, spread adaptively)")
    budget.add_argument("--budget-s", type=float, help="total seconds for the whole set (per seed)")
    budget.add_argument("--consensus", type=float, default=0.6, help="agreement that settles a problem")
    budget.add_argument("--max-rounds", type=int, default=4, help="rounds of N candidates per problem at most")
    budget.add_argument("--stretch", type=float, default=2.0, help="a problem may take this many fair shares")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="sctir eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    raise SystemExit(run(parser.parse_args(argv)))


def run(args: argparse.Namespace) -> int:
    """The command; its exit code (service.exitcodes: rerun after 3 or 130 to resume)."""
    from rich.console import Console

    from service.evaluation.datasets import SETS, DatasetError, load_set

    console = Console(stderr=True, soft_wrap=True)  # messages hold paths: never wrap them
    if args.list_sets:
        for name, spec in SETS.items():
            where = " | ".join(
                filter(None, [spec.local_file and f"local {spec.local_file}", spec.hub_id and f"hub {spec.hub_id}"])
            )
            console.print(f"[bold]{name}[/bold]: {spec.description} ({where}; {spec.answer_mode.value})")
        return ExitCode.OK
    if not args.set_name:
        console.print("error: --set is required (or --list-sets)")
        return ExitCode.USAGE
    try:
        problem_set = load_set(
            args.set_name,
            source=args.source,
            integer_rule=args.integer_rule,
            hub_id=args.hub_id,
            revision=args.revision,
        ).head(args.limit)
    except DatasetError as error:
        console.print(f"error: {error}")
        return ExitCode.USAGE  # the set cannot be loaded: its message says why
    try:
        config = _config(args)
    except ValueError as error:
        console.print(f"error: {error}")
        return ExitCode.USAGE
    return _run(args, problem_set, config, console)


def _config(args: argparse.Namespace):
    from pydantic import ValidationError

    from service.answers import AnswerMode
    from service.evaluation.budget import BudgetPolicy
    from service.evaluation.harness import EvalConfig
    from service.schemas import SolveRequest

    overrides = {k: getattr(args, k) for k in REQUEST_FLAGS if getattr(args, k) is not None}
    try:
        SolveRequest(problem="check", **overrides)
    except ValidationError as exc:
        raise ValueError("; ".join(f"{e['loc'][0]}: {e['msg']}" for e in exc.errors())) from None
    if args.seeds < 1 or args.concurrency < 1:
        raise ValueError("--seeds and --concurrency must be at least 1")
    budget = None
    if args.budget_s is not None:
        budget = BudgetPolicy(args.budget_s, args.consensus, args.max_rounds, args.stretch)
    mode = AnswerMode(args.answer_mode) if args.answer_mode else None
    return EvalConfig(args.seeds, overrides, mode, args.concurrency, budget)


def _default_out(manifest: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:8]
    slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in manifest["set"])[:40]
    return Path("eval-runs") / f"{slug}-{digest}"


def _run(args, problem_set, config, console) -> int:
    from service.evaluation.harness import manifest
    from service.evaluation.report import write_report
    from service.evaluation.store import RunMismatch, RunStore

    wanted = manifest(problem_set, config)
    store = RunStore(args.out or _default_out(wanted))
    order = [p.id for p in problem_set.problems]
    if args.report_only:
        if not (store.directory / "manifest.json").exists():
            console.print(f"error: no run in {store.directory} (give its --out, or the flags it was run with)")
            return ExitCode.USAGE
        _print_paths(console, write_report(store, order))
        return ExitCode.OK
    try:
        kept = store.open(wanted, fresh=args.fresh)
    except RunMismatch as error:
        console.print(f"error: {error}")
        return ExitCode.USAGE  # another run's directory
    console.print(
        f"{problem_set.name}: {len(problem_set.problems)} problems x {config.seeds} seeds "
        f"({problem_set.source}); run directory {store.directory}"
        + (f"; resuming, {kept} already done" if kept else "")
    )
    try:
        code = asyncio.run(_solve_all(args, problem_set, config, store, console))
    except KeyboardInterrupt:
        code = ExitCode.INTERRUPTED
    saved = len(store.load())
    if code == ExitCode.INTERRUPTED:
        console.print(f"interrupted: {saved} problem runs are saved; rerun the same command to resume")
    if not saved:
        return code
    paths = write_report(store, order)
    _print_summary(console, paths["json"])
    _print_paths(console, paths)
    return code


async def _solve_all(args, problem_set, config, store, console) -> int:
    from service.evaluation.backends import HttpBackend, InProcessBackend, Unreachable
    from service.evaluation.harness import run_eval
    from service.evaluation.progress import EvalProgress

    main_task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, main_task.cancel)
    if args.url:
        backend = HttpBackend(args.url, args.api_key)
    else:
        from service.settings import Settings

        backend = InProcessBackend(Settings())
    try:
        try:
            await backend.start()
        except Exception as error:  # the engine, the executor or the service is not there
            console.print(f"error: cannot start {backend.description}: {error}")
            return ExitCode.UNAVAILABLE
        with EvalProgress(console, problem_set.name, store, config.seeds, len(problem_set.problems)) as progress:
            await run_eval(problem_set, backend, store, config, on_record=progress.advance)
        return ExitCode.OK
    except asyncio.CancelledError:
        return ExitCode.INTERRUPTED
    except Unreachable as error:
        console.print(f"error: {error}")
        return ExitCode.UNAVAILABLE
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
        await backend.close()


def _print_summary(console, report_path: Path) -> None:
    summary = json.loads(report_path.read_text())["summary"]
    n = summary["num_samples"] or "N"
    maj, any_, one = summary["maj"], summary["pass_any"], summary["pass_1"]
    console.print(
        f"maj@{n} {100 * maj['mean']:.1f}% ± {100 * maj['std']:.1f} | pass@{n} {100 * any_['mean']:.1f}% "
        f"| pass@1 {100 * one['mean']:.1f}% | agreement right {_pct(summary['agreement_right'])} "
        f"vs wrong {_pct(summary['agreement_wrong'])} | {summary['finished']}/{summary['expected']} runs"
    )


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.0f}%"


def _print_paths(console, paths: dict[str, Path]) -> None:
    console.print("report: " + ", ".join(str(p) for p in paths.values()))


if __name__ == "__main__":
    main(sys.argv[1:])
