"""Streamed vs one-body /solve: what streaming costs a problem, and how soon a client sees something.

    python -m bench.streaming                 # prints the table
    python -m bench.streaming --write         # BENCHMARKS.md's "Streaming" section

Starts `sctir serve` on the shipped demo model (vLLM on CPU; code in the Docker sandbox where Docker
runs, else the local executor) and solves held-out synthetic problems with the same seeds both ways,
alternating which goes first so that drift of the machine falls on both alike, with early stopping off
so that both do the same work. Per problem: the wall
time as the client sees it (request sent to the whole answer: the JSON body, or the `result` event),
and for the stream the time to its first event (`start`) and to the first generated text (`step`).
Both answers of a seed must be the same result (timings and request id aside): the run fails if not.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from rich.console import Console

from bench.sandbox import write_section
from tests.support.docker import docker_problem
from tests.support.servers import free_port, wait_until_up
from tests.support.sse import Stream, events_of
from tests.support.tiny_model import VLLM_CPU_ENV
from training.synthetic import heldout_problems

console = Console(stderr=True)
DEMO_MODEL = Path(__file__).resolve().parent.parent / "models" / "demo"


@dataclass
class Pair:
    """One problem and seed, solved both ways."""

    plain_s: float
    streamed_s: float
    first_event_s: float
    first_text_s: float
    events: int
    same: bool


@contextmanager
def serving(executor: str, log: Path) -> Iterator[str]:
    """`sctir serve` on the demo model, its URL once ready; stopped (SIGTERM) afterwards."""
    port = free_port()
    # Early stopping off: which candidates a stop cancels depends on finish order, and the two ways of
    # one seed must do the same work (and give the same response) to be compared.
    env = os.environ | VLLM_CPU_ENV
    env |= {"SCTIR_MODEL": str(DEMO_MODEL), "SCTIR_EXECUTOR": executor, "SCTIR_EARLY_STOP": "false"}
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--port", str(port)], env=env, stdout=out, stderr=out
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{url}/healthz", timeout_s=180)
        deadline = time.monotonic() + 300
        while httpx.get(f"{url}/readyz", timeout=5).status_code != 200:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the service never became ready:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=120)


def solve_plain(url: str, body: dict) -> tuple[float, dict]:
    started = time.perf_counter()
    response = httpx.post(f"{url}/solve", json=body, timeout=600)
    response.raise_for_status()
    return time.perf_counter() - started, response.json()


def solve_streamed(url: str, body: dict) -> tuple[float, float, float, Stream]:
    """(whole, first event, first text) seconds, and what came."""
    stream, first_event, first_text = Stream(), 0.0, 0.0
    started = time.perf_counter()
    with httpx.stream("POST", f"{url}/solve", json=body | {"stream": True}, timeout=600) as response:
        response.raise_for_status()
        for event, _ in events_of(response.iter_lines(), stream):
            first_event = first_event or time.perf_counter() - started
            if event == "step" and not first_text:
                first_text = time.perf_counter() - started
    return time.perf_counter() - started, first_event, first_text, stream


def comparable(body: dict) -> dict:
    return {key: value for key, value in body.items() if key not in ("request_id", "timings")}


def measure(url: str, problems: int, seeds: int, num_samples: int) -> list[Pair]:
    warm = {"problem": heldout_problems(1)[0].problem, "num_samples": num_samples, "seed": 999}
    solve_plain(url, warm), solve_streamed(url, warm)  # engine, prefix cache and sandbox warm for both
    pairs = []
    for index, problem in enumerate(heldout_problems(problems)):
        for seed in range(seeds):
            body = {"problem": problem.problem, "num_samples": num_samples, "seed": seed}
            if (index + seed) % 2:
                streamed_s, first_event_s, first_text_s, stream = solve_streamed(url, body)
                plain_s, plain = solve_plain(url, body)
            else:
                plain_s, plain = solve_plain(url, body)
                streamed_s, first_event_s, first_text_s, stream = solve_streamed(url, body)
            result = stream.named("result")[0]
            same = comparable(result) == comparable(plain)
            pairs.append(Pair(plain_s, streamed_s, first_event_s, first_text_s, len(stream.events), same))
            console.print(f"{problem.problem[:50]!r} seed {seed}: {plain_s:.2f} s plain, {streamed_s:.2f} s streamed")
    return pairs


def markdown(pairs: list[Pair], command: str, executor: str, num_samples: int) -> str:
    median = statistics.median
    plain = [p.plain_s for p in pairs]
    streamed = [p.streamed_s for p in pairs]
    ratios = [p.streamed_s / p.plain_s for p in pairs]
    first_event_ms = median(p.first_event_s for p in pairs) * 1000
    first_text_ms = median(p.first_text_s for p in pairs) * 1000
    return "\n".join(
        [
            "<!-- bench/streaming.py: start -->",
            "## Streaming: streamed vs one-body /solve (bench/streaming.py)",
            "",
            f"Command: `{command}`",
            "",
            f"`sctir serve` on the demo model (vLLM on CPU), code in the {executor} executor; {len(pairs)} held-out "
            f"synthetic problems x seeds, N={num_samples}, M=4, early stopping off, each solved with the same seed "
            "as one JSON body and as server-sent events, alternating which goes first. Times are the client's, from "
            "sending the request: to the whole JSON body, or to the `result` event. Machine: "
            f"{os.cpu_count()} cores, no GPU, shared with other work (load average {os.getloadavg()[0]:.1f} at the "
            "end).",
            "",
            "| measure | one JSON body | streamed |",
            "| --- | ---: | ---: |",
            f"| wall time per problem, median | {median(plain):.3f} s | {median(streamed):.3f} s |",
            f"| wall time per problem, mean | {statistics.mean(plain):.3f} s | {statistics.mean(streamed):.3f} s |",
            f"| time to the first event (`start`), median | - | {first_event_ms:.0f} ms |",
            f"| time to the first generated text (`step`), median | - | {first_text_ms:.0f} ms |",
            f"| events per problem, median | - | {median(p.events for p in pairs):.0f} |",
            "",
            f"Streamed / one body, wall time: median of the per-problem ratios **{median(ratios):.3f}**, "
            f"total {sum(streamed) / sum(plain):.3f}. Same result both ways (timings and request id aside): "
            f"{sum(p.same for p in pairs)} of {len(pairs)}.",
            "<!-- bench/streaming.py: end -->",
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", type=int, default=12)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--num-samples", type=int, default=16)
    parser.add_argument("--write", action="store_true", help="replace this benchmark's section of BENCHMARKS.md")
    args = parser.parse_args()
    executor = "local" if docker_problem() else "docker"
    with tempfile.TemporaryDirectory() as scratch, serving(executor, Path(scratch) / "serve.log") as url:
        pairs = measure(url, args.problems, args.seeds, args.num_samples)
    command = " ".join(["python -m bench.streaming", *sys.argv[1:]])
    text = markdown(pairs, command, executor, args.num_samples)
    print(text)
    if args.write:
        write_section(text)
    return 0 if all(p.same for p in pairs) else 1


if __name__ == "__main__":
    sys.exit(main())
