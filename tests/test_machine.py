"""What `make serve` serves with no configuration: the engine and model chosen for this machine."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from service import machine
from service.answers import AnswerMode
from service.machine import DEMO_MODEL_DIR, NUMINA_MODEL, NoModel, choose, kv_cache_bytes
from service.settings import EngineKind, Settings


@pytest.fixture(autouse=True)
def no_sctir_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The choice is about an unconfigured service: no SCTIR_* variable of the test runner leaks in."""
    import os

    for name in [n for n in os.environ if n.startswith("SCTIR_")]:
        monkeypatch.delenv(name)


def test_a_cpu_host_serves_the_shipped_demo_model_in_process(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(machine, "cuda_devices", lambda: 0)
    with caplog.at_level(logging.INFO, logger="service.machine"):
        settings = choose(Settings())
    assert settings.engine is EngineKind.VLLM and settings.model == str(DEMO_MODEL_DIR)
    assert (DEMO_MODEL_DIR / "demo_build.json").is_file(), "the demo model ships in the repository"
    assert (settings.dtype, settings.max_model_len, settings.enforce_eager) == ("float32", 1024, True)
    assert settings.answer_mode is AnswerMode.INTEGER
    assert "no CUDA GPU" in caplog.text and "SCTIR_MODEL" in caplog.text  # says what it chose and why


def test_a_cuda_host_serves_numinamath_with_the_t4_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(machine, "cuda_devices", lambda: 1)
    settings = choose(Settings())
    assert settings.engine is EngineKind.VLLM and settings.model == NUMINA_MODEL
    assert settings.dtype == "float16" and settings.answer_mode is AnswerMode.EXPRESSION


def test_a_remote_url_means_the_remote_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCTIR_REMOTE_URL", "http://10.0.0.5:8000/v1")
    settings = choose(Settings())
    assert settings.engine is EngineKind.REMOTE and settings.model == NUMINA_MODEL


def test_the_demo_settings_fill_only_what_the_user_left_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCTIR_DTYPE", "bfloat16")
    monkeypatch.setenv("SCTIR_ANSWER_MODE", "expression")
    settings = choose(Settings(model=str(DEMO_MODEL_DIR), max_model_len=768))
    assert (settings.dtype, settings.answer_mode, settings.max_model_len) == ("bfloat16", "expression", 768)
    assert settings.enforce_eager is True  # still the demo's


def test_another_model_gets_no_demo_settings(tmp_path: Path) -> None:
    settings = choose(Settings(engine=EngineKind.VLLM, model=str(tmp_path)))
    assert settings.dtype == "float16" and settings.kv_cache_memory_bytes is None


def test_no_gpu_and_no_demo_model_says_what_to_set(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(machine, "cuda_devices", lambda: 0)
    monkeypatch.setattr(machine, "DEMO_MODEL_DIR", tmp_path / "missing")
    with pytest.raises(NoModel, match="SCTIR_MODEL"):
        choose(Settings())


def test_the_kv_cache_holds_every_candidate_in_flight_within_a_share_of_memory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = {"num_attention_heads": 4, "num_key_value_heads": 2, "hidden_size": 128, "num_hidden_layers": 3}
    (tmp_path / "config.json").write_text(json.dumps(config))
    per_token = 2 * 3 * 2 * 32 * 4  # key and value, 3 layers, 2 KV heads of 32, float32
    monkeypatch.setattr(machine, "_available_memory", lambda: 64 * 2**30)
    settings = Settings(num_samples=48, max_in_flight=2)
    assert kv_cache_bytes(tmp_path, 1024, settings) == per_token * 1024 * 48 * 2
    monkeypatch.setattr(machine, "_available_memory", lambda: 2**30)  # a small machine: a quarter of it
    assert kv_cache_bytes(tmp_path, 1024, Settings(num_samples=256, max_in_flight=8)) == 2**30 // 4
