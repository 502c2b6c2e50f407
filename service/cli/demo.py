"""`sctir demo [--out DIR ...]`: build the offline demo model (training.demo, with its own flags)."""

from __future__ import annotations

from typing import Any


def add_parser(sub: Any) -> None:
    sub.add_parser("demo", help="build the offline demo model (flags: sctir demo --help)", add_help=False)


def run(argv: list[str]) -> None:
    """training.demo's main (imported only here: the server never loads training/ or its dependencies)."""
    from training.demo import main

    main(argv)
