"""`sctir solve PROBLEM`: one problem, in this process (the engine and executor the settings name) or
through a running service's /solve (--url); the answer, the votes and the timings, or the JSON response."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import uuid
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from service.cli.errors import CliError
from service.cli.options import add_common, configure_logs, load_settings, quiet_level
from service.cli.output import print_response, reserve_stdout, write_json
from service.cli.progress import SolveProgress
from service.exitcodes import ExitCode
from service.schemas import SolveRequest, SolveResponse
from service.settings import Settings

if TYPE_CHECKING:  # pragma: no cover
    from service.components import Components

# HTTP status of /solve -> exit code and what to do
HTTP_ERRORS: dict[int, tuple[ExitCode, str]] = {
    400: (ExitCode.USAGE, "fix the request"),
    401: (ExitCode.USAGE, "pass one of the service's SCTIR_API_KEYS with --api-key"),
    404: (ExitCode.USAGE, "check --url: the service's base URL, e.g. http://127.0.0.1:8080"),
    413: (ExitCode.USAGE, "shorten the problem"),
    422: (ExitCode.USAGE, "fix the request"),
    429: (ExitCode.UNAVAILABLE, "the service is busy: retry later"),
    503: (ExitCode.UNAVAILABLE, "check the service's /readyz and its log"),
}


def add_parser(sub: Any) -> None:
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
    parser.add_argument("--json", action="store_true", help="print the JSON response, and nothing else, on stdout")
    add_common(parser)
    parser.set_defaults(parser=parser)


def run(args: argparse.Namespace, rest: list[str]) -> int:
    request = _request(args)
    out = reserve_stdout() if args.json else sys.stdout
    settings = load_settings()
    configure_logs(settings, args.log_level or quiet_level(settings))
    with SolveProgress(f"waiting for {args.url}" if args.url else "starting the engine") as progress:
        if args.url:
            response = asyncio.run(solve_remote(request, args.url, args.api_key, progress))
        else:
            response = asyncio.run(solve_in_process(request, settings, progress))
    if args.json:
        write_json(response, out)
    else:
        print_response(response, traces=args.traces)
    if response.answer is None:
        print(
            f"sctir: no answer: none of {len(response.candidates)} candidates gave a valid one; "
            "more --num-samples or --max-steps may find one",
            file=sys.stderr,
        )
        return ExitCode.NO_ANSWER
    return ExitCode.OK


def _request(args: argparse.Namespace) -> SolveRequest:
    """The request the flags describe; an invalid one is a usage error (argparse's, naming the field)."""
    fields = {k: v for k, v in vars(args).items() if k in SolveRequest.model_fields and v is not None}
    try:
        return SolveRequest.model_validate({**fields, "return_traces": args.traces})
    except ValidationError as exc:
        args.parser.error("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()))


async def solve_in_process(request: SolveRequest, settings: Settings, progress: SolveProgress) -> SolveResponse:
    """One solve with the engine and executor the settings name (or the machine suits, see service.machine);
    SIGTERM ends it as Ctrl-C does."""
    from sandbox.execution import ExecutorError
    from service.engines.base import EngineError
    from service.solver import Solver
    from service.solving import AllCandidatesFailed, solve_once

    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, asyncio.current_task().cancel)
    settings, engine, executor = build_components(settings)
    config = request.to_config(settings)
    try:
        try:
            await engine.start()
        except EngineError as error:
            raise CliError(ExitCode.UNAVAILABLE, f"the engine did not start: {error}", _engine_hint(engine)) from error
        progress.phase(f"starting the executor ({settings.executor})")
        try:
            await executor.start()
        except ExecutorError as error:  # its messages name the way out
            raise CliError(ExitCode.UNAVAILABLE, f"the executor did not start: {error}") from error
        progress.solving(config.num_samples)
        request_id = uuid.uuid4().hex
        solver = Solver(engine, executor)
        try:
            listener = progress.hear if progress.enabled else None  # no events built for nobody
            result = await solve_once(solver, request.problem, config, request_id, listener)
        except AllCandidatesFailed as failure:
            raise CliError(
                ExitCode.UNAVAILABLE,
                str(failure),
                "check the engine and the executor (--log-level info shows what they log)",
            ) from failure
        return SolveResponse.from_result(result, config, request_id, 0.0, request.return_traces)
    finally:
        progress.phase("stopping the engine and the executor")
        await engine.close()
        await executor.close()


def _engine_hint(engine: object) -> str:
    from service.engines.remote import RemoteEngine

    if isinstance(engine, RemoteEngine):
        return "start the model server, or point SCTIR_REMOTE_URL (and SCTIR_MODEL) at one that serves the model"
    return "check SCTIR_MODEL and the vLLM settings (--debug shows vLLM's traceback)"


def build_components(settings: Settings) -> Components:
    """The engine and executor the settings name (the engine and model chosen where unset, as `sctir serve`
    does), with the settings they run with; nothing to serve is a usage error (its message says which setting)."""
    from service.components import build
    from service.machine import NoModel

    try:
        return build(settings)
    except NoModel as error:
        raise CliError(ExitCode.USAGE, str(error)) from error


async def solve_remote(request: SolveRequest, url: str, api_key: str | None, progress: SolveProgress) -> SolveResponse:
    """The response of the service at `url` (streamed, to show its progress on a terminal); its errors as the
    CLI reports them (HTTP_ERRORS)."""
    from service.client import InvalidServiceUrl, ServiceError, ServiceUnreachable, SolveClient

    async with SolveClient(url, api_key) as client:
        try:
            return await client.solve(request, progress.told if progress.enabled else None)
        except InvalidServiceUrl as error:
            raise CliError(ExitCode.USAGE, f"bad --url {url!r}: {error}", "give the service's base URL") from error
        except ServiceUnreachable as error:
            raise CliError(
                ExitCode.UNAVAILABLE, str(error), "start the service (sctir serve) or check --url"
            ) from error
        except ServiceError as error:
            code, todo = HTTP_ERRORS.get(error.status, (ExitCode.INTERNAL, "see the service's log"))
            raise CliError(code, f"the service answered {error.status}: {error.message}", todo) from error
