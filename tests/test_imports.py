"""The import rules: one way between product code, test support, bench and tests
(tests/support/__init__.py), and no cycle between the files of product code, bench and test support."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = ("service", "sandbox", "training")


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, at any depth (imports inside functions count); a relative import is
    resolved against the package of `path` (the sandbox runner's modules import each other that way)."""
    package = module_name(path).split(".")[: None if path.name == "__init__.py" else -1]
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            modules.add(module)
            modules.update(f"{module}.{alias.name}" for alias in node.names)  # a name may be a module
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


def test_only_the_cluster_package_imports_ray() -> None:
    """Ray is the cluster's dependency alone: the single-box service, the sandbox and training never load it."""
    found = [line for folder in PRODUCT for line in violations(folder, (), ("ray",))]
    assert [line for line in found if not line.startswith("service/cluster/")] == []
    assert any(line.startswith("service/cluster/") for line in found)  # the rule sees the package's imports


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


def module_name(path: Path) -> str:
    name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    return name.removesuffix(".__init__")


def test_no_import_cycle_between_files() -> None:
    """Imports at any depth count: a cycle through a function-level import is still a cycle."""
    paths = {
        module_name(p): p for folder in (*PRODUCT, "bench", "tests/support") for p in (ROOT / folder).rglob("*.py")
    }

    def resolve(name: str) -> str | None:
        while name and name not in paths:
            name = name.rpartition(".")[0]
        return name or None

    graph = {
        module: {target for name in imported_modules(path) if (target := resolve(name)) not in (None, module)}
        for module, path in paths.items()
    }
    cycles = []
    state: dict[str, str] = {}  # "open" while on the current path, "done" once explored

    def visit(module: str, trail: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                cycles.append(" -> ".join([*trail[trail.index(target) :], target]))
            elif target not in state:
                visit(target, [*trail, target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_relative_imports_count_against_their_package() -> None:
    modules = imported_modules(ROOT / "sandbox" / "runner" / "zygote.py")
    assert any(m.startswith("sandbox.runner.") for m in modules), modules
