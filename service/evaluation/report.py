"""The artifacts of a run: report.json (everything), report.md (the summary), report.png (the plot)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from service.evaluation.metrics import summarize
from service.evaluation.store import RunStore

Record = dict[str, Any]
log = logging.getLogger(__name__)


def write_report(store: RunStore, order: list[str] | None = None) -> dict[str, Path]:
    """Write the three artifacts of the run in `store` (finished or not); their paths.

    `order`: problem ids in set order (default: as stored)."""
    manifest = store.manifest()
    position = {pid: i for i, pid in enumerate(order or [])}
    records = sorted(store.load().values(), key=lambda r: (r["seed"], position.get(r["problem_id"], 0)))
    summary = summarize(records, manifest)
    paths = {"json": store.directory / "report.json", "markdown": store.directory / "report.md"}
    report = {"manifest": manifest, "summary": summary, "records": records}
    paths["json"].write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    paths["markdown"].write_text(markdown(manifest, summary, records), encoding="utf-8")
    try:
        from service.evaluation.plot import write_png  # matplotlib is imported only here

        write_png(store.directory / "report.png", manifest, summary, records)
        paths["png"] = store.directory / "report.png"
    except ImportError as error:  # the JSON and Markdown stand without it
        log.warning("report.png not written: %s", error)
    return paths


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def _num(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown(manifest: dict[str, Any], summary: dict[str, Any], records: list[Record]) -> str:
    n = summary["num_samples"] or "N"
    k = len(summary["per_seed"])
    lines = [
        f"# Evaluation: {manifest['set']}",
        "",
        f"- source: `{manifest['source']}` ({manifest['problems']} problems, fingerprint `{manifest['fingerprint']}`)",
        f"- answer mode: `{manifest['answer_mode']}`; seeds: {manifest['seeds']}; "
        f"settings: {', '.join(f'{k}={v}' for k, v in manifest['overrides'].items()) or 'the server defaults'}",
        f"- finished: {summary['finished']} of {summary['expected']} problem runs"
        + ("" if summary["complete"] else " (**incomplete**: rerun the same command to resume)"),
        "",
        "| metric | mean | std | min | max |",
        "| --- | --- | --- | --- | --- |",
    ]
    labels = (("maj", f"maj@{n} (accuracy)"), ("pass_any", f"pass@{n}"), ("pass_1", "pass@1 (finished candidates)"))
    for key, label in labels:
        s = summary[key]
        lines.append(f"| {label} | {_pct(s['mean'])} | {_pct(s['std'])} | {_pct(s['min'])} | {_pct(s['max'])} |")
    pooled = summary["pooled_maj"]
    lines += [
        "",
        f"Pooled maj@{n}x{k} (one vote over every seed's candidates): {_pct(pooled['accuracy'])} "
        f"({pooled['correct']}/{pooled['problems']}).",
        "",
        f"Mean agreement: {_pct(summary['agreement_right'])} on right answers ({summary['right_answers']}), "
        f"{_pct(summary['agreement_wrong'])} on wrong ones ({summary['wrong_answers']}); "
        f"no answer: {summary['no_answer']}; errors: {summary['errors']}.",
        "",
        f"Time per problem: mean {_num(summary['time_s']['mean'])} s, median {_num(summary['time_s']['median'])} s, "
        f"p90 {_num(summary['time_s']['p90'])} s, total {_num(summary['time_s']['total'], 1)} s. "
        f"Tokens per problem: {_num(summary['tokens']['completion_mean'], 0)} generated, "
        f"{_num(summary['tokens']['prompt_mean'], 0)} prompt.",
        "",
        "## Per seed",
        "",
        f"| seed | problems | maj@{n} | pass@{n} | pass@1 | answered | agreement right / wrong | time/problem (s) "
        "| tokens/problem | deadline hits | errors |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for seed, m in summary["per_seed"].items():
        lines.append(
            f"| {seed} | {m['problems']} | {_pct(m['maj'])} | {_pct(m['pass_any'])} | {_pct(m['pass_1'])} "
            f"| {_pct(m['answered'])} | {_pct(m['agreement_right'])} / {_pct(m['agreement_wrong'])} "
            f"| {_num(m['time_s_mean'])} | {_num(m['completion_tokens_mean'], 0)} | {m['deadline_hits']} "
            f"| {m['errors']} |"
        )
    if "budget" in summary:
        lines += _budget_section(summary["budget"], manifest["budget"], records)
    lines += _problem_section(records)
    return "\n".join(lines) + "\n"


def _budget_section(budgets: dict[int, dict[str, Any]], policy: dict[str, Any], records: list[Record]) -> list[str]:
    lines = [
        "",
        "## Budget",
        "",
        f"Budget {policy['total_s']:.1f} s per seed; consensus at {policy['consensus']:.0%} agreement; up to "
        f"{policy['max_rounds']} rounds and {policy['stretch']:g} fair shares per problem.",
        "",
        "| seed | spent (s) | unused (s) | consensus: problems, time (s), candidates/problem "
        "| no consensus: problems, time (s), candidates/problem | unreached | rounds: problems |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for seed, b in budgets.items():
        rounds = ", ".join(f"{r}: {c}" for r, c in b["rounds"].items())
        lines.append(
            f"| {seed} | {b['spent_s']:.1f} | {b['unused_s']:.1f} | {b['consensus_problems']}, "
            f"{b['consensus_time_s']:.1f}, {_num(b['consensus_candidates_mean'], 1)} | {b['no_consensus_problems']}, "
            f"{b['no_consensus_time_s']:.1f}, {_num(b['no_consensus_candidates_mean'], 1)} "
            f"| {b['unreached_problems']} | {rounds} |"
        )
    lines += [
        "",
        "| seed | problem | fair share (s) | cap (s) | spent (s) | rounds | candidates | stopped by |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in records:
        b = r["budget"]
        lines.append(
            f"| {r['seed']} | {r['problem_id']} | {b['fair_s']:.2f} | {b['cap_s']:.2f} | {b['spent_s']:.2f} "
            f"| {b['rounds']} | {r['candidates']} | {b['stopped']} |"
        )
    return lines


def _problem_section(records: list[Record], limit: int = 30) -> list[str]:
    """Problems whose outcome depends on the seed, and those never solved (the first `limit`)."""
    outcomes: dict[str, list[bool]] = {}
    for record in records:
        outcomes.setdefault(record["problem_id"], []).append(record["correct"])
    unstable = [pid for pid, o in outcomes.items() if any(o) and not all(o)]
    never = [pid for pid, o in outcomes.items() if not any(o)]
    lines = ["", "## Problems", ""]
    for label, ids in (("right in some seeds only", unstable), ("never right", never)):
        shown = ", ".join(f"`{pid}`" for pid in ids[:limit]) + (" ..." if len(ids) > limit else "")
        lines.append(f"- {label}: {len(ids)}" + (f" ({shown})" if ids else ""))
    return lines
