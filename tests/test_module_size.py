"""Short modules: a newcomer finds behaviour by module name only while no product module grows past a
screenful of concerns (issue 17); the import rules and the no-cycle check are in tests/test_imports.py."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_MODULE_LINES = 500
PRODUCT_MODULES = sorted(p for package in ("service", "sandbox", "training") for p in (ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("path", PRODUCT_MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_product_module_is_over_500_lines(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{path.relative_to(ROOT)} has {lines} lines: split it by concern"
