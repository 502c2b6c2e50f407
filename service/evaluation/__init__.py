"""Evaluation: validation sets, resumable multi-seed runs, the budgeted mode, and their reports.

datasets  the sets (hub, local JSONL, any file); MATH Level 4/5 integer-answer subsets
scoring   is an answer right; a problem's record from its responses
backends  in-process solver or a running service's /solve
store     the run directory: manifest and records, resumable
harness   a run: seeds x problems, concurrency, resume
budget    the budgeted mode: one time budget for a set, spread adaptively
metrics   maj@N, pass@N, pass@1, agreement, time and tokens, over seeds
report    report.json and report.md; plot: report.png
recorded  our extraction and vote replayed on another toolkit's recorded samples
command   `sctir eval`
"""
