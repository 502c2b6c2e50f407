"""The import rule between product code, test support, bench and tests (tests/support/__init__.py)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = ("service", "sandbox", "training")


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, at any depth (imports inside functions count)."""
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            modules.add(node.module)
    return modules


def violations(folder: str, allowed: tuple[str, ...], forbidden: tuple[str, ...]) -> list[str]:
    """`module imports name` for every import of a `forbidden` package not under an `allowed` prefix."""
    found = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for module in sorted(imported_modules(path)):
            top = module.split(".")[0]
            if top in forbidden and not module.startswith(allowed):
                found.append(f"{path.relative_to(ROOT)} imports {module}")
    return found


@pytest.mark.parametrize("folder", PRODUCT)
def test_product_code_imports_neither_tests_nor_bench(folder: str) -> None:
    assert violations(folder, (), ("tests", "bench")) == []


def test_test_support_imports_only_product_code_and_itself() -> None:
    assert violations("tests/support", ("tests.support",), ("tests", "bench")) == []


def test_bench_imports_only_test_support_from_tests() -> None:
    assert violations("bench", ("tests.support",), ("tests",)) == []


# The server never loads training/ (nor its dependencies): the CLI's train and demo subcommands are the
# one place that knows both.
KNOWS_TRAINING = ("service/cli/train.py", "service/cli/demo.py")


def test_service_imports_training_only_in_the_cli_train_and_demo_commands() -> None:
    found = violations("service", (), ("training",))
    assert [line for line in found if line.split(" imports ")[0] not in KNOWS_TRAINING] == []


def test_no_module_imports_a_test_module() -> None:
    """What tests share lives in tests/support, so no test module is imported for its helpers."""
    found = [
        f"{path.relative_to(ROOT)} imports {module}"
        for folder in ("tests", "bench")
        for path in sorted((ROOT / folder).rglob("*.py"))
        for module in sorted(imported_modules(path))
        if module.split(".")[-1].startswith("test_") and module.startswith("tests.")
    ]
    assert found == []
