"""`sctir serve | solve | eval | demo | train`: run the HTTP service, solve one problem, evaluate on a set,
build the offline demo model, or run a training stage."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import signal
import sys
import traceback
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

import httpx
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from service import exitcodes
from service.answers import AnswerMode, Ballot
from service.engines.lifetime import adopt_children, die_with_parent_if_spawned
from service.evaluation import command as eval_command
from service.exitcodes import ExitCode
from service.logs import configure_logging, configure_spawned_child
from service.schemas import SolveRequest, SolveResponse
from service.settings import Settings

if TYPE_CHECKING:  # pragma: no cover
    from service.solver import Candidate

die_with_parent_if_spawned()  # in vLLM's engine core and its worker: not one second longer (service.engines.lifetime)
configure_spawned_child()  # in vLLM's engine core, which re-runs this module first (see service.logs)
console = Console()
log = logging.getLogger(__name__)

EPILOG = f"""\
exit codes:
{exitcodes.table()}

Errors are one line on stderr (sctir: error: what happened; what to do); --debug adds the traceback.
Logs go to stderr: solve and eval show warnings and errors (SCTIR_LOG_LEVEL or --log-level for more),
serve its own records and the warnings of other libraries that matter (--log-level debug: everything).
solve shows its progress on stderr when stderr is a terminal; with --json, stdout is the response alone.
"""


class CliError(Exception):
    """A failure the user can act on: reported as `sctir: error: <what happened>; <what to do>`
    (no `todo` where `what` is a message that already names the way out)."""

    def __init__(self, code: ExitCode, what: str, todo: str | None = None) -> None:
        super().__init__(f"{what}; {todo}" if todo else what)
        self.code = code


def load_settings(cli_args: list[str] | None = None) -> Settings:
    """The settings from SCTIR_* (and `sctir serve`'s flags); a bad value is a usage error."""
    try:
        return Settings() if cli_args is None else Settings(_cli_parse_args=cli_args)
    except ValidationError as exc:
        bad = "; ".join(
            f"SCTIR_{str(e['loc'][0]).upper()} (--{str(e['loc'][0]).replace('_', '-')}): {e['msg']}"
            for e in exc.errors()
        )
        raise CliError(ExitCode.USAGE, f"invalid setting: {bad}", "fix it (sctir serve --help lists them)") from exc


def configure_logs(settings: Settings, level: str | None = None) -> None:
    configure_logging(level or settings.log_level, settings.log_format)


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the port on this machine (a name other than localhost is not trusted to)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(settings: Settings) -> None:
    """Refuse to serve /solve beyond loopback with no API keys unless told to: it runs code on request.

    Checked before anything starts (the engine takes minutes), so the refusal is the first thing said.
    """
    if settings.api_keys or is_loopback(settings.host):
        return
    if not settings.allow_unauthenticated_public:
        raise CliError(
            ExitCode.USAGE,
            f"refusing to serve on {settings.host} without API keys (whoever reaches it could make it run code)",
            "set SCTIR_API_KEYS (--api-keys), or SCTIR_ALLOW_UNAUTHENTICATED_PUBLIC=true "
            "(--allow-unauthenticated-public) to serve it open on purpose",
        )
    log.warning(
        "serving on %s:%d without API keys (SCTIR_ALLOW_UNAUTHENTICATED_PUBLIC=true): whoever reaches this port "
        "can make it run code",
        settings.host,
        settings.port,
    )


def serve(args: argparse.Namespace, rest: list[str]) -> int:
    import uvicorn

    from service.api import create_app

    settings = load_settings(rest)
    configure_logs(settings)
    check_exposure(settings)
    try:
        uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_config=None)
    except SystemExit as stopped:  # uvicorn's, once it logged why: the port, the engine or the executor
        if stopped.code:
            return ExitCode.UNAVAILABLE
        raise
    return ExitCode.OK


class SolveProgress:
    """What a solve is doing, on stderr, while stderr is a terminal: a spinner and the elapsed time;
    in-process also candidates finished / total and the leading answer with its votes.

    Transient (it leaves no trace), and log records print above it (service.logs writes to the
    sys.stderr that rich redirects).
    """

    def __init__(self, description: str) -> None:
        stderr = Console(stderr=True)
        self.enabled = stderr.is_terminal
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(bar_width=24),
            TimeElapsedColumn(),
            console=stderr,
            transient=True,
            disable=not self.enabled,
        )
        self.task = self.progress.add_task(description, total=None)
        self.done = 0
        self.total = 0
        self.ballot: Ballot | None = None

    def __enter__(self) -> SolveProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.progress.stop()

    def phase(self, description: str) -> None:
        self.progress.update(self.task, description=description)

    def solving(self, total: int, answer_mode: AnswerMode) -> None:
        self.done, self.total, self.ballot = 0, total, Ballot(answer_mode)
        self.progress.update(self.task, description=f"0/{total} candidates", total=total, completed=0)

    def candidate_done(self, candidate: Candidate) -> None:
        """The Solver's on_candidate: count it and its vote (the live leader, as the solver's early stop sees it)."""
        if not self.enabled or self.ballot is None:
            return
        self.done += 1
        if candidate.answer is not None:
            self.ballot.add(candidate.index, candidate.answer)
        leader = self.ballot.classes[0] if self.ballot.classes else None
        lead = f"leader {leader.answer} ({leader.votes} vote{'s' * (leader.votes > 1)})" if leader else "no answer yet"
        description = f"{self.done}/{self.total} candidates, {lead}"
        self.progress.update(self.task, description=description, completed=self.done, refresh=True)


async def solve_in_process(request: SolveRequest, settings: Settings, progress: SolveProgress) -> SolveResponse:
    """One solve with the engine and executor the settings name (or the machine suits, see service.machine);
    SIGTERM ends it as Ctrl-C does."""
    from sandbox.executor import ExecutorError
    from service.components import make_engine, make_executor
    from service.engines.base import EngineError
    from service.solver import Solver

    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, asyncio.current_task().cancel)
    settings = choose_engine(settings)
    engine, executor = make_engine(settings), make_executor(settings)
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
        progress.solving(config.num_samples, config.answer_mode)
        request_id = uuid.uuid4().hex
        result = await Solver(engine, executor, on_candidate=progress.candidate_done).solve(
            request.problem, config, request_id
        )
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


def choose_engine(settings: Settings) -> Settings:
    """The settings with the engine and model chosen where unset, as `sctir serve` does; nothing to serve is
    a usage error (its message says which setting to give)."""
    from service.machine import NoModel, choose

    try:
        return choose(settings)
    except NoModel as error:
        raise CliError(ExitCode.USAGE, str(error)) from error


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


def solve_remote(request: SolveRequest, url: str, api_key: str | None) -> SolveResponse:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    payload = request.model_dump(exclude_none=True)
    try:
        with httpx.Client(timeout=httpx.Timeout(10.0, read=None)) as client:
            response = client.post(url.rstrip("/") + "/solve", json=payload, headers=headers)
    except httpx.InvalidURL as exc:
        raise CliError(ExitCode.USAGE, f"bad --url {url!r}: {exc}", "give the service's base URL") from exc
    except httpx.TransportError as exc:
        raise CliError(
            ExitCode.UNAVAILABLE, f"cannot reach {url}: {exc}", "start the service (sctir serve) or check --url"
        ) from exc
    if response.status_code == 200:
        return SolveResponse.model_validate(response.json())
    code, todo = HTTP_ERRORS.get(response.status_code, (ExitCode.INTERNAL, "see the service's log"))
    raise CliError(code, f"the service answered {response.status_code}: {_message(response)}", todo)


def _message(response: httpx.Response) -> str:
    try:
        return str(response.json().get("message", response.text))
    except ValueError:  # not JSON: some proxy's page
        return response.text[:200]


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


def reserve_stdout() -> TextIO:
    """stdout for the JSON alone: from here on fd 1 is stderr's, so whatever a library, a C extension or a
    child process (vLLM's engine core) prints lands on stderr; the JSON goes to the stream returned."""
    sys.stdout.flush()
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    return out


def solve(args: argparse.Namespace, rest: list[str]) -> int:
    fields = {k: v for k, v in vars(args).items() if k in SolveRequest.model_fields and v is not None}
    try:
        request = SolveRequest.model_validate({**fields, "return_traces": args.traces})
    except ValidationError as exc:
        args.parser.error("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()))
    out = reserve_stdout() if args.json else sys.stdout
    settings = load_settings()
    configure_logs(settings, args.log_level or _quiet_level(settings))
    with SolveProgress(f"waiting for {args.url}" if args.url else "starting the engine") as progress:
        if args.url:
            response = solve_remote(request, args.url, args.api_key)
        else:
            response = asyncio.run(solve_in_process(request, settings, progress))
    failed = [c for c in response.candidates if c.status == "failed"]
    if failed and len(failed) == len(response.candidates):
        raise CliError(
            ExitCode.UNAVAILABLE,
            f"every candidate failed; the first: {failed[0].error}",
            "check the engine and the executor (--log-level info shows what they log)",
        )
    if args.json:
        out.write(response.model_dump_json(indent=2) + "\n")
        out.flush()
    else:
        if args.traces:
            for candidate in response.candidates:
                console.rule(f"candidate {candidate.index}: {candidate.status}")
                console.print(candidate.text, markup=False, highlight=False)
        print_response(response)
    if response.answer is None:
        print(
            f"sctir: no answer: none of {len(response.candidates)} candidates gave a valid one; "
            "more --num-samples or --max-steps may find one",
            file=sys.stderr,
        )
        return ExitCode.NO_ANSWER
    return ExitCode.OK


def evaluate(args: argparse.Namespace, rest: list[str]) -> int:
    from service.machine import NoModel

    settings = load_settings()
    configure_logs(settings, args.log_level or _quiet_level(settings))
    try:
        return eval_command.run(args)
    except NoModel as error:  # in-process, nothing to serve: its message says which setting to give
        raise CliError(ExitCode.USAGE, str(error)) from error


def _quiet_level(settings: Settings) -> str:
    """solve and eval print their own results: log warnings and errors, unless SCTIR_LOG_LEVEL says otherwise."""
    return settings.log_level if "log_level" in settings.model_fields_set else "warning"


COMMANDS: dict[str, Callable[[argparse.Namespace, list[str]], int]] = {
    "serve": serve,
    "solve": solve,
    "eval": evaluate,
}
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


def _add_common(parser: argparse.ArgumentParser, *, log_level: bool = True) -> None:
    """--debug on every command (its default is the top-level parser's), --log-level on solve and eval."""
    parser.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of an error"
    )
    if log_level:
        parser.add_argument(
            "--log-level",
            type=str.lower,
            choices=["debug", "info", "warning", "error"],
            help="log level (default: warning, or SCTIR_LOG_LEVEL); debug: every library's records",
        )


def _solve_parser(sub: Any) -> argparse.ArgumentParser:
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
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sctir", description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_common(
        sub.add_parser("serve", help="run the HTTP service (flags: sctir serve --help)", add_help=False),
        log_level=False,
    )
    sub.add_parser("demo", help="build the offline demo model (flags: sctir demo --help)", add_help=False)
    sub.add_parser("train", help="run a training stage: sctir train {sft,kto,quantize} RECIPE", add_help=False)
    solve_parser = _solve_parser(sub)
    _add_common(solve_parser)
    solve_parser.set_defaults(parser=solve_parser)
    _add_common(eval_command.add_parser(sub))
    return parser


def main(argv: list[str] | None = None) -> None:
    adopt_children()  # the engine's processes die with this one, even killed by SIGKILL
    parser = build_parser()
    args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    if args.command == "demo":
        from training.demo import main as build_demo

        build_demo(rest)
        return
    if args.command == "train":
        train(rest)
        return
    if rest and args.command != "serve":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    raise SystemExit(run(args, rest))


def run(args: argparse.Namespace, rest: list[str]) -> int:
    """The command's exit code; its failures reported in one line (with the traceback under --debug)."""
    try:
        return COMMANDS[args.command](args, rest)
    except CliError as error:
        return _fail(error.code, str(error), error, args.debug)
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("sctir: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except Exception as error:
        what = f"unexpected {type(error).__name__}: {error}; this is a bug: --debug shows the traceback to report"
        return _fail(ExitCode.INTERNAL, what, error, args.debug)


def _fail(code: ExitCode, message: str, error: BaseException, debug: bool) -> int:
    if debug:
        traceback.print_exception(error)
    print(f"sctir: error: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    main()
