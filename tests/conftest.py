"""Session-wide fixtures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.tiny_model import VLLM_CPU_ENV, VLLM_MISSING, require_vllm


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen2 and its tokenizer (see tests/support/tiny_model.py), built once per session."""
    pytest.importorskip("torch", reason=VLLM_MISSING, exc_type=ImportError)
    pytest.importorskip("transformers", reason=VLLM_MISSING, exc_type=ImportError)
    from tests.support.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def vllm_installed() -> None:
    """Skips (naming vllm-cpu) where `import vllm` fails; request it before tiny_model_dir."""
    require_vllm()


@pytest.fixture(scope="module")
def vllm_cpu_env() -> Iterator[None]:
    """vLLM's single-process CPU settings (tests/support/tiny_model.py VLLM_CPU_ENV) while a module's engine runs."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in VLLM_CPU_ENV.items():
            patch.setenv(name, value)
        yield


@pytest.fixture(scope="session")
def demo_model() -> Path:
    """The offline demo model shipped in models/demo (tests/test_demo_model.py checks it is current)."""
    from service.machine import DEMO_MODEL_DIR

    assert (DEMO_MODEL_DIR / "model.safetensors").is_file(), f"{DEMO_MODEL_DIR} is missing: run `make demo-model`"
    return DEMO_MODEL_DIR
