"""Code execution: the Docker sandbox pool vs the reference's executor (vs llm-sandbox), on real model code.

The blocks are the ```python blocks that ToRA-70B wrote for GSM8K
(../shared/data/tora70b_gsm8k_traces.jsonl, or $SCTIR_DATA_DIR), each run
the reference's way (`last_block`: the numpy/sympy preamble, auto-print). In one
run, on the same blocks and machine, for each executor:

- concurrency 1: the blocks one after another (a closed loop), latency of each;
- concurrency 16: 16 blocks in flight at a time, latency of each and executions/s;
- output fidelity: the share of blocks whose output matches the output block the
  trace recorded (whitespace-normalised; see `outcome_matches`).

Executors: `pool` (sandbox.executors.DockerExecutor: warm hardened containers with the
forking runner), `reference` (bench.reference_executor: the winning notebook's REPL, a fresh
`python3 tmp.py` per block), and `llm-sandbox` (the peer Docker sandbox library
on PyPI, on the same image, when it is installed). Prints a table and, with
--write, replaces this benchmark's section of BENCHMARKS.md.

    python -m bench.sandbox --blocks 200 --write
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from sandbox.execution import ExecutionResult, ExecutionStatus

ROOT = Path(__file__).resolve().parents[1]
TRACES = "tora70b_gsm8k_traces.jsonl"
BLOCK = re.compile(r"```python\n(.*?)```\n```output\n(.*?)```", re.S)
SECTION_START = "<!-- bench/sandbox.py: start -->"
SECTION_END = "<!-- bench/sandbox.py: end -->"
POOL_NAME = "sctir-bench"  # the benchmark's sandbox containers carry it (sandbox.backends.owners.LABEL_POOL)


def data_dir() -> Path:
    return Path(os.environ.get("SCTIR_DATA_DIR") or ROOT.parent / "shared" / "data")


@dataclass(frozen=True)
class Block:
    trace: int  # the trace's idx
    code: str
    recorded: str  # the ```output block ToRA's executor produced


def load_tora_blocks(path: Path | None = None) -> list[Block]:
    """Every (python block, recorded output) pair of the ToRA GSM8K traces, in file order."""
    path = path or data_dir() / TRACES
    blocks = []
    with open(path, encoding="utf-8") as file:
        for line in file:
            row = json.loads(line)
            for generation in row["code"]:
                for code, output in BLOCK.findall(generation):
                    blocks.append(Block(row["idx"], code, output))
    return blocks


def _normalise(text: str) -> str:
    return " ".join(text.split())


def outcome_matches(result: ExecutionResult, recorded: str) -> bool:
    """Whether an execution reproduces the output block ToRA recorded.

    ToRA's executor printed stdout, or only the last line of a traceback
    ("SyntaxError: invalid syntax"), or a timeout error; compared after
    whitespace normalisation.
    """
    if "TimeoutError" in recorded or "Timed Out" in recorded:
        return result.status is ExecutionStatus.TIMEOUT
    if result.status is ExecutionStatus.OK:
        return _normalise(result.stdout) == _normalise(recorded)
    last_line = result.error.strip().split("\n")[-1] if result.error.strip() else ""
    return _normalise(last_line) == _normalise(recorded)


@dataclass
class Run:
    latencies_s: list[float]
    wall_s: float
    results: list[ExecutionResult]

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_s)
        return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]

    @property
    def throughput(self) -> float:
        return len(self.latencies_s) / self.wall_s


async def run_blocks(
    execute: Callable[[str], Awaitable[ExecutionResult]],
    blocks: list[Block],
    concurrency: int,
    progress=None,
    pause_s: float = 0.0,
    before: Callable[[int], Awaitable[None]] | None = None,
) -> Run:
    """Run `blocks` with at most `concurrency` in flight (each worker pausing `pause_s` between two).

    `before(index)`, if given, is awaited before block `index` starts, outside its latency.
    """
    latencies = [0.0] * len(blocks)
    results: list[ExecutionResult | None] = [None] * len(blocks)
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < len(blocks):
            index = next_index
            next_index += 1
            if pause_s and index >= concurrency:
                await asyncio.sleep(pause_s)
            if before is not None:
                await before(index)
            started = time.perf_counter()
            results[index] = await execute(blocks[index].code)
            latencies[index] = time.perf_counter() - started
            if progress is not None:
                progress()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Run(latencies, time.perf_counter() - started, results)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# Executors under test


class LlmSandboxExecutor:
    """llm-sandbox (PyPI) sessions on the sandbox image, one per concurrent worker, reused.

    llm-sandbox runs each block with `docker exec python <file>` in a long-lived
    container, i.e. a fresh interpreter (and numpy/sympy import) per block.
    """

    def __init__(self, image: str, sessions: int, timeout_s: float) -> None:
        from llm_sandbox import SandboxSession

        self.timeout_s = timeout_s
        self.free: asyncio.Queue = asyncio.Queue()
        self.sessions = []
        for _ in range(sessions):
            session = SandboxSession(
                lang="python",
                image=image,
                skip_environment_setup=True,
                verbose=False,
                runtime_configs={"entrypoint": ["sleep", "infinity"], "user": "root", "network_mode": "none"},
            )
            session.open()
            self.sessions.append(session)
            self.free.put_nowait(session)

    async def execute(self, code: str) -> ExecutionResult:
        from sandbox.runner.program import block_program

        session = await self.free.get()
        started = time.monotonic()
        try:
            output = await asyncio.to_thread(session.run, block_program(code), timeout=self.timeout_s)
            status = ExecutionStatus.OK if output.exit_code == 0 else ExecutionStatus.ERROR
            return ExecutionResult(status, output.stdout or "", output.stderr or "", time.monotonic() - started)
        except Exception as error:  # llm-sandbox raises on timeouts
            status = ExecutionStatus.TIMEOUT if "timeout" in str(error).lower() else ExecutionStatus.KILLED
            return ExecutionResult(status, "", str(error), time.monotonic() - started)
        finally:
            self.free.put_nowait(session)

    async def close(self) -> None:
        for session in self.sessions:
            await asyncio.to_thread(session.close)


Execute = Callable[[str], Awaitable[ExecutionResult]]
# the row's name, concurrency, pause between blocks, how a block runs, what to await before one (untimed)
Mode = tuple[str, int, float, Execute, Callable[[int], Awaitable[None]] | None]


def make_pool(args: argparse.Namespace, confine: bool = True):
    from sandbox.backends import DockerLimits
    from sandbox.executors import DockerExecutor

    return DockerExecutor(
        image=args.image,
        size=args.pool_size,
        concurrency=args.container_concurrency,
        timeout_s=args.timeout,
        limits=DockerLimits(cpus=args.cpus),
        pool_name=POOL_NAME,
        confine=confine,
    )


class RequestAfterRequest:
    """Blocks as requests bring them (one at a time): a new tenant every `every` blocks, the last one released.

    Between two requests (untimed, in `before`) the pool is let warm up again, as it does while a
    real request generates for seconds between its blocks: a request's first block runs on the
    container it has just leased.
    """

    def __init__(self, executor, every: int) -> None:
        self.executor, self.every, self.request = executor, every, 0

    async def before(self, index: int) -> None:
        if index and index % self.every == 0:
            await self.executor.release(f"bench-{self.request}")  # the solver does this as a request ends
            self.request += 1
            await self.executor.warmed()

    async def execute(self, code: str) -> ExecutionResult:
        return await self.executor.execute(code, tenant=f"bench-{self.request}")


Close = Callable[[], Awaitable[None]]


async def make_executor(name: str, args: argparse.Namespace) -> tuple[list[Mode], Close, object]:
    """The modes to run `name` in, how to close it, and the pool (None for the other executors)."""
    if name in ("pool", "pool-unconfined"):
        executor = make_pool(args, confine=name == "pool")
        await executor.start()
        if name == "pool-unconfined":  # the baseline of what the per-execution confinement costs
            return [(name, 1, 0.0, executor.execute, None)], executor.close, executor
        modes: list[Mode] = [(name, 1, 0.0, executor.execute, None)]
        if args.pace_ms:  # blocks as they come from a generating model
            modes.append((f"{name} ({args.pace_ms:g} ms apart)", 1, args.pace_ms / 1e3, executor.execute, None))
        modes.append((name, args.concurrency, 0.0, executor.execute, None))
        every = args.request_blocks
        requests = RequestAfterRequest(executor, every)
        modes.append((f"{name} (a request per {every} blocks)", 1, 0.0, requests.execute, requests.before))
        return modes, executor.close, executor
    if name == "reference":
        from bench.reference_executor import ReferenceExecutor

        executor = ReferenceExecutor(timeout_s=args.timeout, concurrency=args.concurrency)
    elif name == "llm-sandbox":
        executor = await asyncio.to_thread(LlmSandboxExecutor, args.image, args.concurrency, args.timeout)
    else:
        raise ValueError(name)
    modes = [(name, 1, 0.0, executor.execute, None), (name, args.concurrency, 0.0, executor.execute, None)]
    return modes, executor.close, None


async def container_start_s(args: argparse.Namespace, times: int = 3) -> float:
    """Median seconds from creating a sandbox container to its runner's hello (what a request's lease sets off)."""
    samples = []
    for _ in range(times):
        executor = make_pool(args)
        executor.size = 1
        started = time.perf_counter()
        await executor.start()
        samples.append(time.perf_counter() - started)
        await executor.close()
    return sorted(samples)[len(samples) // 2]


@dataclass(frozen=True)
class RunnerCosts:
    """What an execution costs the container that runs it, and the size of the zygote it forks."""

    blocks: int  # trivial blocks measured
    cpu_ms: float  # the container's CPU time per block
    zygote_mb: float | None  # the zygote's resident memory (None where its /proc is out of sight)
    huge_share: float | None  # the share of its private memory on 2 MiB pages


def _container_cpu_ns(container) -> int:
    return container.stats(stream=False, one_shot=True)["cpu_stats"]["cpu_usage"]["total_usage"]


def _zygote_memory(container) -> tuple[float, float] | None:
    """(resident MB, share of private memory on huge pages) of the runner's zygote in `container`, from
    /proc/PID/smaps_rollup on this host (None where the container's processes are not visible here)."""
    processes = container.top()["Processes"] or []  # UID PID PPID C STIME TTY TIME CMD
    hubs = {pid for _, pid, _, *_, command in processes if "--zygote" not in command}
    zygotes = [pid for _, pid, parent, *_, command in processes if "--zygote" in command and parent in hubs]
    if len(zygotes) != 1:
        return None
    try:
        fields = {
            name.rstrip(":"): int(value)
            for name, value, *_ in (line.split() for line in Path(f"/proc/{zygotes[0]}/smaps_rollup").open())
            if value.isdigit()
        }
    except OSError:
        return None
    if not fields.get("Anonymous"):
        return None
    return fields["Rss"] / 1024, fields.get("AnonHugePages", 0) / fields["Anonymous"]


async def runner_costs(args: argparse.Namespace, blocks: int = 200) -> RunnerCosts:
    """CPU per execution in a warm container, over `blocks` trivial blocks one after another.

    The blocks run in the container leased to the (default) tenant; the pool's other, idle
    container is told apart by its CPU time, which does not grow.
    """
    import docker

    from sandbox.backends.owners import LABEL_POOL

    executor = make_pool(args)
    executor.size = 1
    try:
        await executor.start()
        for _ in range(20):  # the lease, then a few blocks past the first spares
            await executor.execute("1")
        await executor.warmed()
        await asyncio.sleep(0.5)
        client = docker.from_env()
        ours = {"label": f"{LABEL_POOL}={POOL_NAME}"}
        containers = await asyncio.to_thread(client.containers.list, filters=ours)
        before = {c.id: await asyncio.to_thread(_container_cpu_ns, c) for c in containers}
        for _ in range(blocks):
            await executor.execute("1")
        await asyncio.sleep(0.5)  # the last block's exit and the spares made after it
        spent = {c.id: await asyncio.to_thread(_container_cpu_ns, c) - before[c.id] for c in containers}
        busiest = max(containers, key=lambda c: spent[c.id])
        memory = await asyncio.to_thread(_zygote_memory, busiest)
    finally:
        await executor.close()
    return RunnerCosts(
        blocks, spent[busiest.id] / blocks / 1e6, memory[0] if memory else None, memory[1] if memory else None
    )


# ---------------------------------------------------------------------------


def pool_prose(args: argparse.Namespace, start_s: float, costs: RunnerCosts) -> str:
    """What the pool's rows measured and how: every figure comes from this run or its arguments."""
    waiting = args.concurrency - args.container_concurrency
    in_flight = f" ({args.concurrency} in flight: {waiting} wait)" if waiting > 0 else ""
    if costs.zygote_mb is not None:
        huge = f"{costs.huge_share:.0%} of whose private memory is on 2 MiB pages"
        zygote = f"the {costs.zygote_mb:.0f} MB zygote, {huge}"
    else:
        zygote = "the zygote"
    return (
        f"Pool: {args.container_concurrency} blocks at once in a request's own container ({args.pool_size} kept "
        f"warm), {args.cpus:g} CPU each, network none, read-only root, all capabilities dropped, non-root, each "
        f"execution in a Landlock domain of its own; a container starts (create to ready) in {start_s:.2f} s. "
        "A request's blocks run in its own container (leased from the warm ones, destroyed when the request "
        f"ends), so a single request has its container's {args.container_concurrency} blocks at once{in_flight}: "
        "'a request per N blocks' starts a new request every N blocks on a container it has just leased, the last "
        "one released and the pool let warm up again between two (untimed: a real request generates for seconds "
        "between its blocks)"
        + (
            "; 'pool-unconfined' runs the runner without its per-execution Landlock file rules, the baseline of "
            "what they cost per block"
            if "pool-unconfined" in args.executors
            else ""
        )
        + f". Every execution costs {costs.cpu_ms:.1f} ms of CPU in its "
        f"container (measured over {costs.blocks} trivial blocks in one warm container: the fork of {zygote}, the "
        "new process's set-up and confinement, ahead of demand, and its exit), so on "
        f"{os.cpu_count()} cores the closed loop is CPU-bound: its p50 and p95 include waiting behind that work "
        "(and behind whatever else runs on the machine); blocks that arrive with pauses see the paced row's latency."
    )


def _ratio(value: float) -> str:
    return f"{value:.0f}x" if value >= 10 else f"{value:.1f}x"


def markdown_table(rows: list[dict], command: str, blocks: int, machine: str, pool_note: str | None) -> str:
    """The section of BENCHMARKS.md; `pool_note`: what the pool's rows measured (pool_prose)."""
    lines = [
        SECTION_START,
        "## Code execution: sandbox pool vs the reference's executor (bench/sandbox.py)",
        "",
        f"Command: `{command}`",
        "",
        f"{blocks} real ```python blocks written by ToRA-70B for GSM8K, run the reference's way (preamble, "
        f"auto-print), each executor on the same blocks in one run. Machine: {machine}. Latency: per execution, as "
        "the caller sees it (closed loop); ratios are the reference's value over this row's (higher is better). "
        "Fidelity: share of blocks whose output matches the output block recorded in the trace.",
        "",
        "| executor | concurrency | p50 latency | p95 latency | executions/s | p50 vs reference "
        "| throughput vs reference | fidelity |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    notes = []
    if any("apart" in row["executor"] for row in rows):
        notes.append(
            '"ms apart": one block at a time with a pause between them, as blocks arrive from a model that '
            "generates between executions (the executions/s of that row include the pauses)."
        )
    if pool_note:
        notes.append(pool_note)
    reference = {row["concurrency"]: row for row in rows if row["executor"] == "reference"}
    for row in rows:
        base = reference.get(row["concurrency"])
        paced = "apart" in row["executor"] or "request per" in row["executor"]  # waits in its wall time
        p50_ratio = _ratio(base["p50_ms"] / row["p50_ms"]) if base else "-"
        tput_ratio = _ratio(row["throughput"] / base["throughput"]) if base and not paced else "-"
        lines.append(
            f"| {row['executor']} | {row['concurrency']} | {row['p50_ms']:.1f} ms | {row['p95_ms']:.1f} ms "
            f"| {row['throughput']:.1f} | {p50_ratio} | {tput_ratio} | {row['fidelity']:.1%} |"
        )
    if notes:
        lines += ["", " ".join(notes)]
    lines.append(SECTION_END)
    return "\n".join(lines)


def write_section(text: str, path: Path = ROOT / "BENCHMARKS.md") -> None:
    """Replace a benchmark's section of BENCHMARKS.md (its first and last lines are its markers), or append it."""
    start, end = text.split("\n", 1)[0], text.rsplit("\n", 1)[-1]
    current = path.read_text() if path.exists() else "# Benchmarks\n\nEach table says the command that produced it.\n"
    if start in current and end in current:
        head, rest = current.split(start, 1)
        _, tail = rest.split(end, 1)
        current = head + text + tail
    else:
        current = current.rstrip("\n") + "\n\n" + text + "\n"
    path.write_text(current)


async def main(args: argparse.Namespace) -> int:
    """Run each executor over the ToRA blocks, show the results, and write (or print) BENCHMARKS.md's section."""
    from rich.console import Console

    console = Console()
    path = data_dir() / TRACES
    if not path.exists():
        console.print(f"[yellow]no ToRA traces at {path} (set SCTIR_DATA_DIR): nothing to benchmark")
        return 0
    blocks = load_tora_blocks(path)[: args.blocks]
    rows, pool_note = await measure(args, available(args.executors, console), blocks, console)
    console.print(rich_table(rows, len(blocks)))
    machine = f"{os.cpu_count()} cores, {platform.system()} {platform.release()}, Python {platform.python_version()}"
    command = "python -m bench.sandbox " + " ".join(sys.argv[1:])
    text = markdown_table(rows, command.strip(), len(blocks), machine, pool_note)
    if args.write:
        write_section(text)
        console.print("BENCHMARKS.md updated")
    else:
        console.print(text)
    return 0


def available(executors: list[str], console) -> list[str]:
    """The executors asked for, less llm-sandbox when it is not installed (an optional comparison)."""
    executors = list(executors)
    if "llm-sandbox" in executors:
        try:
            import llm_sandbox  # noqa: F401
        except ImportError:
            console.print("[yellow]llm-sandbox is not installed (pip install 'llm-sandbox[docker]'): skipped")
            executors.remove("llm-sandbox")
    return executors


async def measure(
    args: argparse.Namespace, executors: list[str], blocks: list[Block], console
) -> tuple[list[dict], str | None]:
    """One row per executor mode (latency, throughput, fidelity), and the pool's prose (pool_prose) if it ran."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    rows = []
    pool_note = None
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as progress:
        for name in executors:
            modes, close, pool = await make_executor(name, args)
            try:
                await modes[0][3]("1 + 1")  # warm: first connections, caches
                if name.startswith("pool"):
                    await pool.warmed()  # that lease started a container: measure once it is up
                for label, concurrency, pause, execute, before in modes:
                    task = progress.add_task(f"{label} @ {concurrency}", total=len(blocks))
                    advance = lambda t=task: progress.advance(t)  # noqa: E731
                    run = await run_blocks(execute, blocks, concurrency, advance, pause, before)
                    matches = sum(outcome_matches(r, b.recorded) for r, b in zip(run.results, blocks))
                    rows.append(
                        {
                            "executor": label,
                            "concurrency": concurrency,
                            "p50_ms": run.percentile(0.5) * 1e3,
                            "p95_ms": run.percentile(0.95) * 1e3,
                            "throughput": run.throughput,
                            "fidelity": matches / len(blocks),
                        }
                    )
            finally:
                await close()
            if name == "pool":  # measured right after its rows, on the machine as they found it
                pool_note = pool_prose(args, await container_start_s(args), await runner_costs(args))
    return rows, pool_note


def rich_table(rows: list[dict], blocks: int):
    """The rows for the terminal."""
    from rich.table import Table

    table = Table(title=f"{blocks} ToRA blocks")
    for column in ("executor", "concurrency", "p50 ms", "p95 ms", "exec/s", "fidelity"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            row["executor"],
            str(row["concurrency"]),
            f"{row['p50_ms']:.1f}",
            f"{row['p95_ms']:.1f}",
            f"{row['throughput']:.1f}",
            f"{row['fidelity']:.1%}",
        )
    return table


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blocks", type=int, default=200, help="how many ToRA blocks (from the start of the file)")
    parser.add_argument("--concurrency", type=int, default=16, help="the second concurrency level")
    parser.add_argument(
        "--executors",
        nargs="+",
        default=["pool", "pool-unconfined", "reference", "llm-sandbox"],
        choices=["pool", "pool-unconfined", "reference", "llm-sandbox"],
    )
    parser.add_argument("--image", default=os.environ.get("SCTIR_DOCKER_IMAGE", "sctir-sandbox:latest"))
    parser.add_argument("--pool-size", type=int, default=2, help="warm containers kept ready")
    parser.add_argument("--request-blocks", type=int, default=8, help="pool: blocks per request in the lease row")
    parser.add_argument("--container-concurrency", type=int, default=8, help="executions per container")
    parser.add_argument("--cpus", type=float, default=1.0, help="CPU limit of each pool container")
    parser.add_argument("--timeout", type=float, default=10.0, help="per-execution timeout, seconds")
    parser.add_argument("--pace-ms", type=float, default=20.0, help="pool: also run blocks this far apart (0: not)")
    parser.add_argument("--write", action="store_true", help="replace this benchmark's section of BENCHMARKS.md")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
