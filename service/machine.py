"""What to serve when nothing is configured: the engine and model that suit this machine.

A newcomer's first `make serve` must solve problems with whatever the machine has, so the
engine and the model have no fixed defaults. Unset, they are chosen here, and the service
logs what it chose and why:

- engine: `remote` when SCTIR_REMOTE_URL is set (a vLLM server already runs somewhere), else
  `vllm` in this process;
- model: NuminaMath-7B-TIR where the engine has a CUDA GPU (or is remote: the name is what the
  server is asked for); on a CPU-only host the offline demo model shipped in models/demo, the
  one model that answers there in seconds.

A model directory holding the demo's build record (demo_build.json) also gets the settings a
CPU needs for it (float32, a 1024-token context, no compilation, integer answers, a KV cache
sized for the candidates in flight), each only where the user set nothing.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from service.answers import AnswerMode
from service.settings import EngineKind, Settings

log = logging.getLogger(__name__)

NUMINA_MODEL = "AI-MO/NuminaMath-7B-TIR"
DEMO_MODEL_DIR = Path(__file__).resolve().parents[1] / "models" / "demo"
DEMO_BUILD_RECORD = "demo_build.json"
DEMO_CONTEXT_TOKENS = 1024  # prompt + 4 steps of a demo solution with room to spare
KV_CACHE_MIN_BYTES = 64 * 2**20
KV_CACHE_SHARE_OF_MEMORY = 0.25  # of the memory available at start: the rest is the sandbox's and the OS's


class NoModel(RuntimeError):
    """Nothing servable was configured and nothing suits this machine."""


def choose(settings: Settings) -> Settings:
    """`settings` with the engine, the model and the demo's settings filled in where unset."""
    chosen: dict[str, Any] = {}
    if settings.engine is None:
        chosen["engine"] = EngineKind.REMOTE if "remote_url" in settings.model_fields_set else EngineKind.VLLM
        log.info(
            "engine: %s (%s)",
            chosen["engine"],
            "SCTIR_REMOTE_URL is set" if chosen["engine"] is EngineKind.REMOTE else "vLLM in this process",
        )
    engine = chosen.get("engine", settings.engine)
    if settings.model is None:
        chosen["model"], why = _default_model(engine)
        log.info("model: %s (%s; set SCTIR_MODEL to serve another)", chosen["model"], why)
    model = chosen.get("model", settings.model)
    if engine is EngineKind.VLLM and is_demo_model(model):
        chosen |= _demo_settings(settings, Path(model))
    return settings.model_copy(update=chosen) if chosen else settings


def is_demo_model(model: str) -> bool:
    return (Path(model) / DEMO_BUILD_RECORD).is_file()


def _default_model(engine: EngineKind) -> tuple[str, str]:
    if engine is EngineKind.REMOTE:
        return NUMINA_MODEL, "the model the remote server is asked for"
    gpus = cuda_devices()
    if gpus:
        return NUMINA_MODEL, f"{gpus} CUDA GPU(s) found"
    if not is_demo_model(str(DEMO_MODEL_DIR)):
        raise NoModel(
            f"no CUDA GPU is visible and the offline demo model is not at {DEMO_MODEL_DIR}: "
            "set SCTIR_MODEL to a model id or directory (or SCTIR_REMOTE_URL to a running vLLM server)"
        )
    return str(DEMO_MODEL_DIR), "the offline demo model: no CUDA GPU is visible to torch"


def cuda_devices() -> int:
    """CUDA GPUs this process's torch can use (none when torch is absent or is the CPU build)."""
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _demo_settings(settings: Settings, model: Path) -> dict[str, Any]:
    """The demo model's CPU settings, for the fields the user left unset."""
    context = settings.max_model_len if "max_model_len" in settings.model_fields_set else DEMO_CONTEXT_TOKENS
    preset: dict[str, Any] = {
        "dtype": "float32",
        "max_model_len": context,
        "enforce_eager": True,
        "answer_mode": AnswerMode.INTEGER,
        "kv_cache_memory_bytes": kv_cache_bytes(model, context or DEMO_CONTEXT_TOKENS, settings),
    }
    unset = {name: value for name, value in preset.items() if name not in settings.model_fields_set}
    if unset:
        log.info("demo model settings: %s", ", ".join(f"{name}={value}" for name, value in unset.items()))
    return unset


def kv_cache_bytes(model: Path, context_tokens: int, settings: Settings) -> int:
    """KV cache for every candidate of every problem in flight at full context, within a share of memory.

    Per token a decoder layer keeps a key and a value per KV head (float32 on CPU).
    """
    config = json.loads((model / "config.json").read_text())
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    per_token = 2 * config["num_hidden_layers"] * kv_heads * head_dim * 4
    wanted = per_token * context_tokens * settings.num_samples * settings.max_in_flight
    ceiling = max(KV_CACHE_MIN_BYTES, int(_available_memory() * KV_CACHE_SHARE_OF_MEMORY))
    return min(max(wanted, KV_CACHE_MIN_BYTES), ceiling)


def _available_memory() -> int:
    """MemAvailable of /proc/meminfo, in bytes (a generous guess where there is none)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 * 2**30
