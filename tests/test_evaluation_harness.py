"""Evaluation runs end to end: scripted LLM text, the real solver, the real LocalExecutor.

In process (the harness API, interrupted by a task cancel) and as a `python -m service.evaluation`
process against a real HTTP server (interrupted by SIGTERM); both resume without redoing finished
problems and write the three artifacts. The arithmetic script below makes the model write
`print(<expression>)`, which really runs, and box the printed value; "[wrong k]" in a problem makes
candidates 0..k-1 box a wrong value (value + 1 + index), so votes, ties and pass@N are exercised.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sandbox.executors import LocalExecutor
from service.api.app import create_app
from service.evaluation.backends import InProcessBackend
from service.evaluation.command import add_arguments, run
from service.evaluation.datasets import load_file
from service.evaluation.harness import EvalConfig, manifest, run_eval
from service.evaluation.report import write_report
from service.evaluation.scoring import request_seed
from service.evaluation.store import RunMismatch, RunStore
from service.exitcodes import ExitCode
from service.settings import Settings
from service.solver import derive_seed
from tests.support.doubles import ScriptedEngine
from tests.support.servers import serve_in_thread
from tests.support.solving import arithmetic, write_set

PROBLEMS = [
    {"id": "p1", "problem": "Compute 6*7.", "answer": "42"},
    {"id": "p2", "problem": "Compute 5+5. [wrong 1]", "answer": "10"},  # a 1-1 tie: the wrong one wins
    {"id": "p3", "problem": "Compute 2**5. [wrong 2]", "answer": "32"},  # nobody right
]


def step_seeds(seed: int, problem_id: str, num_samples: int) -> set[int]:
    """The first-step sampling seeds the solver sends for (seed, problem): shows what was solved."""
    return {derive_seed(derive_seed(request_seed(seed, problem_id), i), 0) for i in range(num_samples)}


def check_artifacts(directory: Path, seeds: int, problems: int, n: int = 2) -> dict:
    report = json.loads((directory / "report.json").read_text())
    records = report["records"]
    assert len(records) == seeds * problems and report["summary"]["complete"]
    for record in records:
        assert record["votes"] and record["time_s"] > 0 and record["responses"]
        response = record["responses"][0]
        assert response["timings"]["total_s"] > 0 and len(response["candidates"]) == record["candidates"]
    markdown = (directory / "report.md").read_text()
    assert f"maj@{n} (accuracy)" in markdown and f"pass@{n}" in markdown and "agreement" in markdown
    png = (directory / "report.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    return report


async def test_in_process_run_interrupted_and_resumed(tmp_path: Path) -> None:
    problem_set = load_file(write_set(tmp_path / "arith.jsonl", PROBLEMS))
    config = EvalConfig(seeds=2, overrides={"num_samples": 2, "max_steps": 3}, concurrency=2)
    store = RunStore(tmp_path / "run")
    assert store.open(manifest(problem_set, config)) == 0

    first = InProcessBackend(Settings(early_stop=False), ScriptedEngine(arithmetic(0.05)), LocalExecutor(concurrency=2))
    await first.start()
    two_done = asyncio.Event()
    run = asyncio.create_task(
        run_eval(problem_set, first, store, config, lambda record: len(store.records) >= 2 and two_done.set())
    )
    await asyncio.wait_for(two_done.wait(), 60)
    await asyncio.sleep(0.1)  # more problems are in flight
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    await first.close()
    saved = store.records_path.read_bytes()
    finished = [json.loads(line) for line in saved.splitlines()]
    assert 2 <= len(finished) < 6
    assert len(first.engine.requests) > len(finished) * 2 * 2  # it had started on more problems

    again = RunStore(tmp_path / "run")
    assert again.open(manifest(problem_set, config)) == len(finished)
    second = InProcessBackend(Settings(early_stop=False), ScriptedEngine(arithmetic()), LocalExecutor(concurrency=2))
    await second.start()
    try:
        assert await run_eval(problem_set, second, again, config) == 6 - len(finished)
    finally:
        await second.close()
    assert again.records_path.read_bytes().startswith(saved)  # finished records kept as they were
    sent = {r.params.seed for r in second.engine.requests}
    for record in finished:
        assert not sent & step_seeds(record["seed"], record["problem_id"], 2)  # not solved again

    paths = write_report(again, [p.id for p in problem_set.problems])
    report = check_artifacts(tmp_path / "run", seeds=2, problems=3)
    assert set(paths) == {"json", "markdown", "png"}
    by_key = {(r["seed"], r["problem_id"]): r for r in report["records"]}
    for seed in (0, 1):
        assert by_key[(seed, "p1")]["correct"] and by_key[(seed, "p1")]["agreement"] == 1.0
        tie = by_key[(seed, "p2")]
        assert tie["answer"] == "11" and not tie["correct"] and tie["pass"] and tie["votes"] == {"11": 1, "10": 1}
        assert not by_key[(seed, "p3")]["pass"] and by_key[(seed, "p3")]["answer"] == "33"
    summary = report["summary"]
    assert summary["maj"]["mean"] == pytest.approx(1 / 3) and summary["maj"]["std"] == 0.0
    assert summary["pass_any"]["mean"] == pytest.approx(2 / 3)
    assert summary["pass_1"]["mean"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert summary["agreement_right"] == 1.0 and summary["agreement_wrong"] == 0.5
    assert summary["tokens"]["completion_mean"] > 0 and summary["time_s"]["mean"] > 0


def test_a_run_with_other_settings_is_refused_and_fresh_starts_over(tmp_path: Path) -> None:
    problem_set = load_file(write_set(tmp_path / "arith.jsonl", PROBLEMS))
    store = RunStore(tmp_path / "run")
    store.open(manifest(problem_set, EvalConfig(seeds=2, overrides={"num_samples": 2})))
    store.append({"seed": 0, "problem_id": "p1", "error": None, "correct": True})
    with pytest.raises(RunMismatch, match="overrides"):
        RunStore(tmp_path / "run").open(manifest(problem_set, EvalConfig(seeds=2, overrides={"num_samples": 4})))
    fresh = RunStore(tmp_path / "run")
    assert fresh.open(manifest(problem_set, EvalConfig(seeds=2, overrides={"num_samples": 4})), fresh=True) == 0


def test_a_line_torn_by_a_kill_is_dropped_and_errors_are_retried(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    store.open({"set": "x"})
    store.append({"seed": 0, "problem_id": "a", "error": None})
    store.append({"seed": 0, "problem_id": "b", "error": "HTTP 503: every candidate failed"})
    with open(store.records_path, "a") as file:
        file.write('{"seed": 0, "problem_id": "c", "err')  # the process died mid-write
    reopened = RunStore(tmp_path)
    assert reopened.open({"set": "x"}) == 2
    assert reopened.done(0, "a") and not reopened.done(0, "b") and not reopened.done(0, "c")
    assert reopened.records_path.read_text().endswith("}\n")  # the torn tail is cut off
    reopened.append({"seed": 0, "problem_id": "c", "error": None})
    assert RunStore(tmp_path).load().keys() == {(0, "a"), (0, "b"), (0, "c")}


def eval_process(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "service.evaluation", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_command_over_http_killed_and_resumed(tmp_path: Path) -> None:
    """`--url` against the real service; SIGTERM mid-run; the rerun solves only what is missing."""
    rows = PROBLEMS[:2] + [{"id": "q0", "problem": "Compute 0*3.", "answer": "0"}]
    data = write_set(tmp_path / "arith.jsonl", rows)
    engine = ScriptedEngine(arithmetic(0.05))
    settings = Settings(num_samples=8, max_steps=4, early_stop=False)
    out = tmp_path / "run"
    flags = ["--set", str(data), "--seeds", "2", "--num-samples", "1", "--max-steps", "3", "--out", str(out)]
    flags += ["--concurrency", "2"]
    with serve_in_thread(create_app(settings, engine=engine, executor=LocalExecutor(concurrency=2)), "/healthz") as url:
        first = eval_process(*flags, "--url", url)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and first.poll() is None:
            records = out / "records.jsonl"
            if records.exists() and len(records.read_text().splitlines()) >= 2:
                break
            time.sleep(0.05)
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=60)
        assert first.returncode == 130, err
        assert "rerun the same command to resume" in err
        kept = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
        assert 2 <= len(kept) < 6
        assert json.loads((out / "report.json").read_text())["summary"]["complete"] is False

        before = len(engine.requests)
        second = eval_process(*flags, "--url", url)
        _, err = second.communicate(timeout=120)
        assert second.returncode == 0, err
        assert f"resuming, {len(kept)} already done" in err
    sent = {r.params.seed for r in engine.requests[before:]}
    for record in kept:
        assert not sent & step_seeds(record["seed"], record["problem_id"], 1)
    report = check_artifacts(out, seeds=2, problems=3, n=1)
    assert report["manifest"]["overrides"] == {"max_steps": 3, "num_samples": 1}
    assert all(r["backend"] == f"HTTP {url}" for r in report["records"])
    assert report["summary"]["maj"]["mean"] == pytest.approx(2 / 3)
    (out / "report.md").unlink()
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert run(parser.parse_args([*flags, "--report-only"])) == 0  # rewrites it from the records
    assert "maj@1 (accuracy) | 66.7%" in (out / "report.md").read_text()


def test_command_reports_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert run(parser.parse_args(["--set", str(tmp_path / "nope.jsonl")])) == ExitCode.USAGE
    assert "file not found" in capsys.readouterr().err
    data = write_set(tmp_path / "arith.jsonl", PROBLEMS)
    assert run(parser.parse_args(["--set", str(data), "--num-samples", "0"])) == ExitCode.USAGE
    assert "num_samples" in capsys.readouterr().err
    assert run(parser.parse_args(["--set", str(data), "--budget-s", "-1"])) == ExitCode.USAGE
    assert "budget" in capsys.readouterr().err
    report_only = ["--set", str(data), "--report-only", "--out", str(tmp_path / "none")]
    assert run(parser.parse_args(report_only)) == ExitCode.USAGE
    assert "no run in" in capsys.readouterr().err
    assert run(parser.parse_args(["--list-sets"])) == 0
    listing = capsys.readouterr().err
    for name in ("amc", "aime", "math-l4", "math-l5"):
        assert f"{name}:" in listing


def test_sctir_eval_is_wired_into_the_cli() -> None:
    """`sctir eval` is the evaluation's command (see the README's evaluation section)."""
    run = subprocess.run([sys.executable, "-m", "service.cli", "eval", "--help"], capture_output=True, text=True)
    assert run.returncode == 0 and "--budget-s" in run.stdout and "--seeds" in run.stdout
