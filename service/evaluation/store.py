"""A run directory: what was asked (manifest.json) and what finished (records.jsonl, one line each).

Records are appended and flushed one at a time, so a run killed at any moment loses at most the
problems in flight (a torn last line is dropped on reopening). Reopening with the same manifest
resumes: finished (seed, problem) pairs are not solved again; errored ones are retried (the later
record replaces the earlier). A different manifest (another set, other settings) is refused.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
RECORDS = "records.jsonl"


class RunMismatch(RuntimeError):
    """The directory holds a run with other settings or another set."""


class RunStore:
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.records: dict[tuple[int, str], dict[str, Any]] = {}

    @property
    def records_path(self) -> Path:
        return self.directory / RECORDS

    def open(self, manifest: dict[str, Any], fresh: bool = False) -> int:
        """Create or reopen the run; the number of records kept from before."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / MANIFEST
        if path.exists() and not fresh:
            old = json.loads(path.read_text())
            if old != manifest:
                changed = sorted(k for k in manifest.keys() | old.keys() if old.get(k) != manifest.get(k))
                raise RunMismatch(
                    f"{self.directory} holds a run with different {', '.join(changed)}: "
                    "use another --out, or --fresh to start it over"
                )
        else:
            self.records_path.unlink(missing_ok=True)
            path.write_text(json.dumps(manifest, indent=2) + "\n")
        self.records = self.load()
        return len(self.records)

    def manifest(self) -> dict[str, Any]:
        return json.loads((self.directory / MANIFEST).read_text())

    def load(self) -> dict[tuple[int, str], dict[str, Any]]:
        """Finished records by (seed, problem id), the last one winning; a torn tail is cut off."""
        records: dict[tuple[int, str], dict[str, Any]] = {}
        if not self.records_path.exists():
            return records
        data = self.records_path.read_bytes()
        good = 0
        for line in data.splitlines(keepends=True):
            try:
                record = json.loads(line)
            except ValueError:
                break  # a line cut by a kill: it and anything after it are dropped
            if not line.endswith(b"\n"):
                break
            records[(record["seed"], record["problem_id"])] = record
            good += len(line)
        if good != len(data):
            with open(self.records_path, "r+b") as file:
                file.truncate(good)
        return records

    def done(self, seed: int, problem_id: str) -> bool:
        record = self.records.get((seed, problem_id))
        return record is not None and record.get("error") is None

    def append(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with open(self.records_path, "a", encoding="utf-8") as file:
            file.write(line)
            file.flush()
            os.fsync(file.fileno())
        self.records[(record["seed"], record["problem_id"])] = record
