"""Training data: hub datasets by name or local files, ToRA-style TIR text in the served prompt format.

Every stage formats text exactly as the service prompts the model at serving time:
``service.tir.format_prompt`` ("### Problem: {problem}\\n### Solution: ") followed by the
solution. TIR solutions are in the ToRA format the service speaks (``service.tir``): prose,
```python blocks, and ```output blocks whose contents are cut exactly as the service cuts
an execution's output, so that training and serving agree on what an output block looks like.

Sources (``DataSpec``):

- a hub dataset by name: ``AI-MO/NuminaMath-CoT`` (stage 1), ``AI-MO/NuminaMath-TIR``
  (stage 2, KTO, GPTQ calibration); loaded with ``datasets.load_dataset``;
- a local file (``.jsonl``, ``.json``, ``.parquet``) or a directory of them; ``$SCTIR_DATA_DIR``
  in a path is expanded (default: ``../shared/data`` next to the repository);
- ``synthetic-arithmetic``: the demo model's generated problems (``training.synthetic``).

Records are normalised to ``problem``, ``solution`` (the assistant's text) and ``answer`` (the
reference final answer, or None), whatever the source's columns: NuminaMath's
``problem``/``solution``/``messages``, ToRA corpus ``messages``/``gt``, ToRA traces
``question``/``code``/``gt``, MATH ``problem``/``solution``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.answers import extract_answer
from service.tir import OUTPUT_LIMIT_CHARS, OUTPUT_MARKER, format_prompt, output_block
from training.synthetic import heldout_problems, solution_text, training_problems

if TYPE_CHECKING:  # pragma: no cover
    from datasets import Dataset

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data"
SYNTHETIC = "synthetic-arithmetic"

_OUTPUT_BLOCK = re.compile(r"```output\n(.*?)\n?```", re.DOTALL)


def data_dir() -> Path:
    """The reference data folder: $SCTIR_DATA_DIR, else ../shared/data beside the repository."""
    return Path(os.environ.get("SCTIR_DATA_DIR") or DEFAULT_DATA_DIR)


def resolve_path(path: str | os.PathLike[str]) -> Path:
    """Expand $SCTIR_DATA_DIR (defaulted), other variables and ~ in a recipe's path."""
    text = str(path).replace("${SCTIR_DATA_DIR}", "$SCTIR_DATA_DIR")
    text = text.replace("$SCTIR_DATA_DIR", str(data_dir()))
    return Path(os.path.expanduser(os.path.expandvars(text)))


def format_example(problem: str, solution: str) -> str:
    """One training text: the served prompt, the solution, and the template's closing newline.

    Equals service.tir.NUMINA_CHAT_TEMPLATE applied to [user, assistant]; the trainer appends EOS.
    """
    return f"{format_prompt(problem)}{solution}\n"


def format_tir_solution(solution: str, output_limit: int = OUTPUT_LIMIT_CHARS) -> str:
    """A ToRA-format solution with every output block cut the way the service cuts it.

    The service writes "```output\\n" + feedback[:limit] + " ... (output truncated)" + "\\n```" (no
    newline after the fence, as the reference: the model writes what follows, and the training
    text's own newline after the fence is the model's to learn); a training text with longer (or
    differently closed) output blocks would teach the model outputs it never sees when served.
    """

    def cut(match: re.Match[str]) -> str:
        return OUTPUT_MARKER + output_block(match.group(1).strip(), output_limit).rstrip("\n")

    return _OUTPUT_BLOCK.sub(cut, solution.strip())


@dataclass(frozen=True)
class Record:
    problem: str
    solution: str
    answer: str | None


def synthetic_records(count: int, seed: int = 0) -> list[Record]:
    """The demo's task as Records (the `synthetic-arithmetic` source), never a held-out problem."""
    stream = training_problems(seed, exclude=heldout_problems())
    return [Record(p.problem, solution_text(p), str(p.answer)) for p in (next(stream) for _ in range(count))]


def normalize_record(row: dict[str, Any]) -> Record | None:
    """A Record from any of the supported column layouts; None when the row has no problem."""
    problem = solution = None
    messages = row.get("messages")
    if messages:
        problem = next((m["content"] for m in messages if m.get("role") == "user"), None)
        solution = next((m["content"] for m in reversed(messages) if m.get("role") == "assistant"), None)
    problem = row.get("problem") or row.get("question") or problem
    if solution is None:
        solution = row.get("solution")
    if solution is None and row.get("code"):
        code = row["code"]
        solution = code[0] if isinstance(code, list) else code
    if not problem:
        return None
    solution = solution or ""
    answer = row.get("answer") if row.get("answer") not in (None, "") else row.get("gt")
    if answer in (None, "") and solution:
        answer = extract_answer(solution)
    return Record(problem=str(problem).strip(), solution=str(solution).strip(), answer=_str_or_none(answer))


def _str_or_none(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


@dataclass(frozen=True)
class DataSpec:
    """Where a stage's data comes from (the `data:` section of a recipe)."""

    dataset: str  # hub id, local path, or "synthetic-arithmetic"
    split: str = "train"
    config: str | None = None  # hub dataset configuration name
    revision: str | None = None
    format: str = "tir"  # "cot": solutions as they are; "tir": ToRA text with the service's output cut
    test_split: str | None = None  # a split of the source to evaluate on; else `test_size` of `split`
    test_size: float | int = 0.0
    max_samples: int | None = None  # first rows only (after shuffling), e.g. for a tiny run
    seed: int = 42
    require_answer: bool = False  # drop rows without a reference answer (KTO labels by it)
    require_code: bool = False  # drop solutions without a ```python block (TIR data)
    synthetic_count: int = 1000
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DataSpec:
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        return cls(
            **{k: v for k, v in values.items() if k in known},
            extra={k: v for k, v in values.items() if k not in known},
        )

    @property
    def is_local(self) -> bool:
        return self.dataset != SYNTHETIC and (
            self.dataset.startswith(("/", ".", "~", "$")) or Path(self.dataset).suffix in _LOCAL_SUFFIXES
        )


_LOCAL_SUFFIXES = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


class DataUnavailable(RuntimeError):
    """A local data file that is not there (tests skip on it)."""


def load_raw(spec: DataSpec, split: str) -> Dataset:
    """The source's rows for one split, as a datasets.Dataset."""
    files: list[Path] = []
    if spec.is_local:
        path = resolve_path(spec.dataset)
        if not path.exists():
            raise DataUnavailable(f"data file {path} not found (set SCTIR_DATA_DIR, or use a hub dataset name)")
        files = sorted(p for p in path.iterdir() if p.suffix in _LOCAL_SUFFIXES) if path.is_dir() else [path]
        if not files:
            raise DataUnavailable(f"no .jsonl/.json/.parquet/.csv files in {path}")

    from datasets import Dataset, load_dataset

    if spec.dataset == SYNTHETIC:
        seed = spec.seed if split == spec.split else spec.seed + 1_000_003
        return Dataset.from_list([r.__dict__ for r in synthetic_records(spec.synthetic_count, seed=seed)])
    if spec.is_local:
        builder = _LOCAL_SUFFIXES[files[0].suffix]
        # Local files have a single split; `split` selects nothing (use test_size for a test split).
        return load_dataset(builder, data_files=[str(f) for f in files], split="train")
    return load_dataset(spec.dataset, spec.config, split=split, revision=spec.revision)


def load_records(spec: DataSpec, split: str | None = None) -> list[Record]:
    """Normalised records of one split, filtered as the spec asks."""
    raw = load_raw(spec, split or spec.split)
    records = []
    for row in raw:
        record = normalize_record(row)
        if record is None or (spec.require_answer and record.answer is None):
            continue
        if spec.require_code and "```python" not in record.solution:
            continue
        records.append(record)
    return records


def to_text_rows(records: Iterable[Record], spec: DataSpec) -> Iterator[dict[str, str]]:
    for record in records:
        solution = format_tir_solution(record.solution) if spec.format == "tir" else record.solution
        yield {"text": format_example(record.problem, solution)}


def load_splits(spec: DataSpec) -> tuple[Dataset, Dataset | None]:
    """(train, test) Datasets with a "text" column in the served format (EOS is the trainer's).

    The test split is `spec.test_split` of the source when given, else `spec.test_size` (a
    fraction or a count) held out of `spec.split` with `spec.seed`.
    """
    from datasets import Dataset

    records = load_records(spec)
    train = Dataset.from_list(list(to_text_rows(records, spec))).shuffle(seed=spec.seed)
    test = None
    if spec.test_split:
        test = Dataset.from_list(list(to_text_rows(load_records(spec, spec.test_split), spec)))
    elif spec.test_size:
        parts = train.train_test_split(test_size=spec.test_size, seed=spec.seed)
        train, test = parts["train"], parts["test"]
    if spec.max_samples is not None:
        train = train.select(range(min(spec.max_samples, len(train))))
        if test is not None:
            test = test.select(range(min(max(1, spec.max_samples // 10), len(test))))
    return train, test


def problems_with_answers(spec: DataSpec, limit: int | None = None) -> list[Record]:
    """Problems with reference answers (KTO's sampling set), shuffled with `spec.seed`."""
    import random

    records = [r for r in load_records(spec) if r.answer is not None]
    random.Random(spec.seed).shuffle(records)
    return records[:limit] if limit is not None else records


def calibration_texts(spec: DataSpec, count: int = 256) -> list[str]:
    """`count` training texts in the served format (GPTQ calibration), cycled if the source is smaller."""
    import random

    texts = [row["text"] for row in to_text_rows(load_records(spec), spec)]
    if not texts:
        raise ValueError(f"no calibration texts in {spec.dataset}")
    random.Random(spec.seed).shuffle(texts)
    return [texts[i % len(texts)] for i in range(count)]


def write_jsonl(rows: Iterable[dict[str, Any]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as file:
        for row in rows:
            file.write(json.dumps(row, ensure_ascii=False) + "\n")
