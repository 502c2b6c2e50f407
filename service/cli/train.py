"""`sctir train STAGE RECIPE [KEY=VALUE ...] [--output-dir DIR]`: one stage of training/, with its own flags."""

from __future__ import annotations

import importlib
from typing import Any

STAGES = {"sft": "training.sft", "kto": "training.kto", "quantize": "training.quantize"}


def add_parser(sub: Any) -> None:
    sub.add_parser("train", help=f"run a training stage: sctir train {{{','.join(STAGES)}}} RECIPE", add_help=False)


def run(argv: list[str]) -> None:
    """The stage's own main (imported only here: the server never loads training/ or its dependencies)."""
    if not argv or argv[0] not in STAGES:
        raise SystemExit(
            f"usage: sctir train {{{','.join(STAGES)}}} RECIPE [KEY=VALUE ...] [--output-dir DIR]\n"
            "  e.g. sctir train sft training/recipes/tiny/stage1_cot.yaml (python -m training.sft --help)"
        )
    importlib.import_module(STAGES[argv[0]]).main(argv[1:])
