"""Recipes: YAML files that fix every hyperparameter of a stage.

A recipe may `extends:` another (a path relative to itself); the two are merged key by key,
the extending one winning, so a tiny CPU variant states only what it changes. Command-line
overrides use dotted keys with YAML values: ``training.max_steps=5 data.max_samples=16``.

Sections: ``model`` (where the weights come from), ``data`` (training.data.DataSpec),
``batch`` (``total`` examples per optimizer step, ``per_device``), ``training`` (passed to
TRL's SFTConfig/KTOConfig unchanged), plus ``sampling`` (KTO) and ``quantization`` (GPTQ).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"


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
    batch = recipe.get("batch") or {}
    per_device = int(batch.get("per_device", 1))
    total = int(batch.get("total", per_device))
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
