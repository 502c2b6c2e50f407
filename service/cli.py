"""`sctir serve | solve | eval`: run the HTTP service, solve one problem, or evaluate on a set."""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from typing import Any

import httpx
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from service.evaluation import command as eval_command
from service.schemas import SolveRequest, SolveResponse
from service.settings import Settings

console = Console()


def serve(settings: Settings) -> None:
    import uvicorn

    from service.api import create_app
    from service.logs import configure_logging

    configure_logging(settings.log_level)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_config=None)


async def solve_in_process(request: SolveRequest) -> SolveResponse:
    """One solve with the engine and executor the environment's settings name."""
    from service.components import make_engine, make_executor
    from service.solver import Solver

    settings = Settings()
    engine, executor = make_engine(settings), make_executor(settings)
    config = request.to_config(settings)
    await engine.start()
    try:
        await executor.start()
        request_id = uuid.uuid4().hex
        result = await Solver(engine, executor).solve(request.problem, config, request_id)
        return SolveResponse.from_result(result, config, request_id, 0.0, request.return_traces)
    finally:
        await engine.close()
        await executor.close()


def solve_remote(request: SolveRequest, url: str, api_key: str | None) -> SolveResponse:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    payload = request.model_dump(exclude_none=True)
    try:
        with httpx.Client(timeout=httpx.Timeout(10.0, read=None)) as client:
            response = client.post(url.rstrip("/") + "/solve", json=payload, headers=headers)
    except httpx.TransportError as exc:
        raise SystemExit(f"cannot reach {url}: {exc}") from None
    if response.status_code != 200:
        raise SystemExit(f"error {response.status_code}: {response.json().get('message', response.text)}")
    return SolveResponse.model_validate(response.json())


def print_response(response: SolveResponse) -> None:
    console.print(f"[bold]answer:[/bold] {response.answer}   agreement {response.agreement:.0%}")
    table = Table("answer", "votes", "share")
    total = sum(response.votes.values())
    for answer, votes in response.votes.items():
        table.add_row(answer, str(votes), f"{votes / total:.0%}")
    console.print(table)
    statuses: dict[str, int] = {}
    for candidate in response.candidates:
        statuses[candidate.status] = statuses.get(candidate.status, 0) + 1
    console.print("candidates: " + ", ".join(f"{n} {s}" for s, n in sorted(statuses.items())))
    t = response.timings
    console.print(
        f"time: {t.total_s:.2f} s total, {t.generation_s:.2f} s generation, {t.execution_s:.2f} s execution "
        f"(summed over candidates); tokens: {response.usage.completion_tokens} generated"
        + ("; stopped early" if response.stopped_early else "")
        + ("; DEADLINE HIT" if response.deadline_hit else "")
    )


TRAIN_STAGES = {"sft": "training.sft", "kto": "training.kto", "quantize": "training.quantize"}


def train(argv: list[str]) -> None:
    """`sctir train STAGE RECIPE [KEY=VALUE ...] [--output-dir DIR]`: one stage of training/."""
    import importlib

    if not argv or argv[0] not in TRAIN_STAGES:
        raise SystemExit(
            f"usage: sctir train {{{','.join(TRAIN_STAGES)}}} RECIPE [KEY=VALUE ...] [--output-dir DIR]\n"
            "  e.g. sctir train sft training/recipes/tiny/stage1_cot.yaml (python -m training.sft --help)"
        )
    importlib.import_module(TRAIN_STAGES[argv[0]]).main(argv[1:])


def _solve_parser(sub: Any) -> None:
    parser = sub.add_parser("solve", help="solve one problem and print the answer, the votes and timings")
    parser.add_argument("problem", help="the problem statement")
    parser.add_argument("--url", help="a running server (e.g. http://127.0.0.1:8080); default: in-process")
    parser.add_argument("--api-key", help="bearer token for --url")
    parser.add_argument("--num-samples", type=int)
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--temperature", type=float)
    parser.add_argument("--max-new-tokens", type=int)
    parser.add_argument("--answer-mode", choices=["aimo", "integer", "expression"])
    parser.add_argument("--execution-mode", choices=["last_block", "session"])
    parser.add_argument("--deadline-s", type=float)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--traces", action="store_true", help="print every candidate's text")
    parser.add_argument("--json", action="store_true", help="print the raw JSON response")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="sctir", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the HTTP service (flags: sctir serve --help)", add_help=False)
    sub.add_parser("demo", help="build the offline demo model (flags: sctir demo --help)", add_help=False)
    sub.add_parser("train", help="run a training stage: sctir train {sft,kto,quantize} RECIPE", add_help=False)
    _solve_parser(sub)
    eval_command.add_parser(sub)
    args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    if args.command == "serve":
        serve(Settings(_cli_parse_args=rest))
        return
    if args.command == "demo":
        from training.demo import main as build_demo

        build_demo(rest)
        return
    if args.command == "train":
        train(rest)
        return
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "eval":
        raise SystemExit(eval_command.run(args))
    fields = {k: v for k, v in vars(args).items() if k in SolveRequest.model_fields and v is not None}
    try:
        request = SolveRequest.model_validate({**fields, "return_traces": args.traces})
    except ValidationError as exc:
        parser.error("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()))
    if args.url:
        response = solve_remote(request, args.url, args.api_key)
    else:
        response = asyncio.run(solve_in_process(request))
    if args.json:
        console.print_json(response.model_dump_json())
        return
    if args.traces:
        for candidate in response.candidates:
            console.rule(f"candidate {candidate.index}: {candidate.status}")
            console.print(candidate.text, markup=False, highlight=False)
    print_response(response)


if __name__ == "__main__":
    main()
