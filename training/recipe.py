"""Recipes: YAML files that fix every hyperparameter of a stage.

A recipe may `extends:` another (a path relative to itself); the two are merged key by key,
the extending one winning, so a tiny CPU variant states only what it changes. Command-line
overrides use dotted keys with YAML values: ``training.max_steps=5 data.max_samples=16``.

Sections, each read through its dataclass (`section`), which holds its defaults and refuses a key
it does not know (a misspelt key fails instead of silently keeping the default): ``model``
(ModelSection: where the weights come from), ``data`` (training.data.DataSpec), ``batch``
(BatchSection: ``total`` examples per optimizer step, ``per_device``), ``sampling``
(SamplingSection, KTO) and ``quantization`` (QuantizationSection, GPTQ). ``training`` is passed
to TRL's SFTConfig/KTOConfig unchanged: TRL's dataclasses type and check it.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from service.answers import AnswerMode
from training.scratch import ModelShape

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"
Section = TypeVar("Section")


@dataclass(frozen=True)
class FromScratch(ModelShape):
    """A random Qwen2 of this shape and a BPE tokenizer of at most `vocab_size` tokens (training.scratch)."""

    vocab_size: int = 1024
    seed: int = 0


@dataclass(frozen=True)
class ModelSection:
    """Where the weights come from: a hub id or path, or `from_scratch` (the tiny CPU recipes)."""

    name_or_path: str | None = None
    revision: str | None = None
    dtype: str | None = None  # bfloat16, float16, float32; None or "auto": the checkpoint's
    attn_implementation: str | None = None  # flash_attention_2 falls back to sdpa where not installed
    chat_template: str | None = "numina"  # a name in training.models.CHAT_TEMPLATES, a Jinja string, or None
    from_scratch: FromScratch | None = None

    def __post_init__(self) -> None:
        if isinstance(self.from_scratch, Mapping):
            object.__setattr__(
                self, "from_scratch", parse_section(FromScratch, self.from_scratch, "model.from_scratch")
            )


@dataclass(frozen=True)
class BatchSection:
    """`total` examples per optimizer step, whatever the number of processes (batch_arguments)."""

    per_device: int = 1
    total: int | None = None  # None: per_device

    @property
    def total_examples(self) -> int:
        return self.total if self.total is not None else self.per_device


@dataclass(frozen=True)
class SamplingSection:
    """KTO's self-sampling through the service's solver (training.kto)."""

    engine: str = "auto"  # vllm, transformers, or auto (vllm if installed)
    problems: int | None = None  # problems sampled (None: all)
    samples_per_problem: int = 4
    temperature: float = 0.8
    max_steps: int = 4  # SC-TIR steps per candidate
    max_new_tokens: int = 1024
    answer_mode: AnswerMode = AnswerMode.EXPRESSION  # how a candidate's answer is compared with the reference
    seed: int = 0
    # A restart would drop the failed attempt's text: keep it, it is an undesirable example.
    restart_on_fail: bool = False
    deadline_s: float = 3600.0
    concurrency: int = 16  # problems solved at once
    dtype: str = "float32"
    max_model_len: int = 4096
    kv_cache_memory_bytes: int | None = None  # None: 256 MiB on a CPU, vLLM's own sizing on a GPU
    enforce_eager: bool | None = None  # None: on a CPU only (CUDA graphs need a GPU)
    execution_timeout_s: float = 5.0
    execution_concurrency: int | None = None  # None: the local executor's default

    def __post_init__(self) -> None:
        object.__setattr__(self, "answer_mode", AnswerMode(self.answer_mode))


@dataclass(frozen=True)
class QuantizationSection:
    """GPTQ settings (training.quantize): the defaults are the served checkpoint's."""

    bits: int = 8
    group_size: int = 128
    desc_act: bool = True  # quantize the columns in activation order
    static_groups: bool = True  # ... with the groups fixed beforehand: a checkpoint vLLM loads
    sym: bool = True
    damp_percent: float = 0.01
    calibration_samples: int = 256
    calibration_max_length: int = 2048
    dtype: str = "float16"
    batch_size: int = 1
    cpu_workers: int | None = None  # GPTQModel's CPU thread pool; None: from the cores this process may use

    @property
    def static_activation_order(self) -> bool:
        return self.desc_act and self.static_groups


def parse_section(cls: type[Section], values: Mapping[str, Any] | None, name: str) -> Section:
    """`cls` filled from a recipe section; raises ValueError on a key `cls` does not have."""
    values = dict(values or {})
    unknown = sorted(set(values) - {field.name for field in dataclasses.fields(cls)})  # type: ignore[arg-type]
    if unknown:
        raise ValueError(f"unknown key(s) in the recipe's {name} section: {', '.join(unknown)}")
    return cls(**values)


def section(recipe: Mapping[str, Any], name: str, cls: type[Section]) -> Section:
    """The recipe's section `name` as a `cls` (an absent section: all defaults)."""
    return parse_section(cls, recipe.get(name), name)


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def load_recipe(path: str | os.PathLike[str], overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """The recipe at `path` with its `extends` chain resolved and `overrides` applied."""
    path = Path(path)
    if not path.exists() and (RECIPES_DIR / path).exists():
        path = RECIPES_DIR / path
    recipe = yaml.safe_load(path.read_text()) or {}
    parent = recipe.pop("extends", None)
    if parent:
        recipe = _merge(load_recipe(path.parent / parent), recipe)
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep:
            raise ValueError(f"override {override!r} is not KEY=VALUE")
        set_dotted(recipe, key.strip(), yaml.safe_load(raw))
    recipe["_path"] = str(path)
    return recipe


def set_dotted(recipe: dict[str, Any], key: str, value: Any) -> None:
    node = recipe
    *parents, last = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"{key}: {part} is not a section")
    node[last] = value


def world_size() -> int:
    """Processes of the launch (accelerate/torchrun set WORLD_SIZE); 1 when run plainly."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def batch_arguments(recipe: dict[str, Any], processes: int | None = None) -> dict[str, int]:
    """per_device_train_batch_size and gradient_accumulation_steps that make `batch.total`.

    The total batch is the recipe's; accumulation absorbs the number of processes, so the same
    recipe gives the same optimisation on 8 GPUs, on 1 GPU, or on a CPU.
    """
    batch = section(recipe, "batch", BatchSection)
    per_device, total = batch.per_device, batch.total_examples
    processes = processes or world_size()
    if total % (per_device * processes):
        raise ValueError(
            f"batch.total={total} is not a multiple of batch.per_device={per_device} x {processes} process(es)"
        )
    return {
        "per_device_train_batch_size": per_device,
        "per_device_eval_batch_size": per_device,
        "gradient_accumulation_steps": total // (per_device * processes),
    }


def total_batch(recipe: dict[str, Any], processes: int) -> int:
    args = batch_arguments(recipe, processes)
    return args["per_device_train_batch_size"] * args["gradient_accumulation_steps"] * processes
