"""The fault tier's report: one JSON line per scenario, written where $SCTIR_FAULT_REPORT points.

The scenarios (tests/faults/) call `record`; bench/faults.py sets the variable, runs the tier
and turns the lines into BENCHMARKS.md's reliability table. Without the variable nothing is
written, so a plain test run leaves no file behind.
"""

from __future__ import annotations

import json
import os

REPORT_ENV = "SCTIR_FAULT_REPORT"


def record(scenario: str, *, client_gets: str, left_behind: str, recovery_s: float | None) -> None:
    """One row of the reliability table (written only when $SCTIR_FAULT_REPORT names a file)."""
    path = os.environ.get(REPORT_ENV)
    if not path:
        return
    row = {"scenario": scenario, "client_gets": client_gets, "left_behind": left_behind, "recovery_s": recovery_s}
    with open(path, "a") as report:
        report.write(json.dumps(row) + "\n")
