"""`python3 -I <path>/runner [options]`: the runner's one program (see __init__.py): the hub, or its zygote.

Run as a directory, this file is the module __main__ with sys.path[0] = that directory, and the
other modules are no package yet: `_package` imports the directory as the package `runner` and
takes it off sys.path (no module of the runner is importable by its bare name, by a block either),
so that the modules import each other relatively, in the container (/opt/sctir/runner) as on the
host (sandbox/runner, the package sandbox.runner). Only the process's own part is imported: the
zygote (--zygote) never loads the hub's modules, nor the hub the zygote's.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Modules the zygote imports when they are installed; numpy and sympy are required (the preamble).
# Every preloaded module makes each fork and exit dearer (page tables: ~1 ms per 35 MB), so the default is
# what the preamble imports plus the small stdlib modules competition code uses; scipy or networkx load
# on use (--preload adds them).
DEFAULT_PRELOAD = "numpy,sympy,mpmath,fractions,itertools,functools,collections,decimal,statistics,cmath,random,re"
HUB_MODULES = ("hub", "runs", "supervisor", "loop", "health", "records")  # never in the zygote or a spare


def _package() -> str:
    """The package's name: `runner`, made from this directory, unless Python made it already (-m)."""
    if __package__:
        return __package__
    import importlib.util
    import os

    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [path for path in sys.path if os.path.abspath(path or ".") != here]
    spec = importlib.util.spec_from_file_location(
        "runner", os.path.join(here, "__init__.py"), submodule_search_locations=[here]
    )
    package = importlib.util.module_from_spec(spec)
    sys.modules["runner"] = package
    spec.loader.exec_module(package)
    return "runner"


def _self_test(package: str, opts: argparse.Namespace) -> int:
    """What the image build runs: the zygote's imports and warm-up, then the hub's modules."""
    zygote = importlib.import_module(f"{package}.zygote")
    loaded = [name for name in HUB_MODULES if f"{package}.{name}" in sys.modules]
    if loaded:
        print(f"the zygote imports the hub's modules: {loaded}", file=sys.stderr)
        return 1
    for name in ("numpy", "sympy", *filter(None, opts.preload.split(","))):
        importlib.import_module(name)
    program = importlib.import_module(f"{package}.program")
    exec(compile(program.PREAMBLE + zygote.WARMUP, "<self-test>", "exec", dont_inherit=True), {})
    for name in HUB_MODULES:
        importlib.import_module(f"{package}.{name}")
    print("ok")
    return 0


def main(argv: list[str] | None = None) -> int:
    package = _package()
    parser = argparse.ArgumentParser(description=sys.modules[package].__doc__.split("\n", 1)[0])
    parser.add_argument("--spares", type=int, default=2, help="executions prepared ahead of demand")
    parser.add_argument("--workroot", default=None, help="where per-execution working directories go")
    parser.add_argument("--preload", default=DEFAULT_PRELOAD, help="modules imported once, when installed")
    parser.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=True, help="exercise sympy once")
    parser.add_argument(
        "--purge-tmp", action="store_true", help="container: purge the scratch file systems when half full"
    )
    parser.add_argument(
        "--confine", action="store_true", help="Landlock file rules: a block writes only its own directory"
    )
    parser.add_argument(
        "--linger", type=float, default=0.005, help="seconds between a result and the housekeeping it causes"
    )
    parser.add_argument("--zygote", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--hub-pid", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--self-test", action="store_true", help="import what the zygote imports, then exit")
    opts = parser.parse_args(argv)
    opts.spares = max(1, opts.spares)
    if opts.zygote:
        importlib.import_module(f"{package}.zygote").zygote_main(opts)
        return 0
    if opts.self_test:
        return _self_test(package, opts)
    hub = importlib.import_module(f"{package}.hub")
    try:
        return hub.Hub(opts).serve()
    except Exception as error:  # a bug: say so on stderr; the host sees EOF
        import traceback

        traceback.print_exc()
        hub.log(f"hub failed: {error!r}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
