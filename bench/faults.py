"""Reliability: the fault-injection tier (tests/faults/) run once, its measurements as a table.

    python -m bench.faults --write      # BENCHMARKS.md's "Reliability" section

Each scenario of the tier injects one fault into a real service (vLLM on CPU with the demo model,
the Docker sandbox, real HTTP) and records what the client got, what was left running or held
afterwards, and how long the service took to recover (tests/support/fault_report.py `record`). The
tests assert the behaviour; this script only runs them with the report switched on.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.sandbox import write_section
from tests.support.fault_report import REPORT_ENV

ROOT = Path(__file__).resolve().parents[1]


def run_tier(pytest_args: list[str]) -> tuple[list[dict], int]:
    """The rows the tier recorded, and pytest's exit code."""
    with tempfile.TemporaryDirectory(prefix="sctir-faults-") as workdir:
        report = Path(workdir) / "faults.jsonl"
        env = os.environ | {REPORT_ENV: str(report)}
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/faults", *pytest_args]
        returncode = subprocess.run(command, cwd=ROOT, env=env).returncode
        rows = [json.loads(line) for line in report.read_text().splitlines()] if report.exists() else []
    return rows, returncode


def markdown(rows: list[dict], returncode: int) -> str:
    lines = [
        "## Reliability: fault injection (bench/faults.py)",
        "",
        "Command: `python -m bench.faults --write` (runs tests/faults/: the real service as a process, vLLM",
        f"on CPU with the demo model, the Docker sandbox, real HTTP; {os.cpu_count()} cores). Recovery: from the",
        "fault to the service answering correctly again with nothing left over"
        + ("." if returncode == 0 else f" (**pytest exited {returncode}: some scenarios failed**)."),
        "",
        "| scenario | the client gets | left running or held afterwards | recovery (s) |",
        "| --- | --- | --- | ---: |",
    ]
    for row in rows:
        recovery = "" if row["recovery_s"] is None else f"{row['recovery_s']:.2f}"
        lines.append(f"| {row['scenario']} | {row['client_gets']} | {row['left_behind']} | {recovery} |")
    return "\n".join([*lines, "<!-- bench/faults.py: end -->"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="write the section into BENCHMARKS.md")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments, e.g. -k paused")
    args = parser.parse_args()
    rows, returncode = run_tier(args.pytest_args)
    text = markdown(rows, returncode)
    print(text)
    if args.write:
        write_section(text)
    return returncode


if __name__ == "__main__":
    raise SystemExit(main())
