"""Builds the engine and the executor that the settings name."""

from __future__ import annotations

import logging

from sandbox.executor import Executor
from sandbox.local import LocalExecutor
from service.engines.base import Engine
from service.engines.remote import RemoteEngine
from service.settings import EngineKind, ExecutorKind, Settings

log = logging.getLogger(__name__)


def make_engine(settings: Settings) -> Engine:
    match settings.engine:
        case EngineKind.REMOTE:
            return RemoteEngine(
                base_url=settings.remote_url,
                model=settings.model,
                api_key=settings.remote_api_key.get_secret_value() if settings.remote_api_key else None,
                prompt_template=settings.prompt_template,
                timeout_s=settings.remote_timeout_s,
            )
        case EngineKind.VLLM:
            # Imported here: vLLM is an optional dependency (the module itself imports it in start()).
            from service.engines.vllm_local import VllmEngine, VllmOptions

            options = VllmOptions(
                model=settings.model,
                revision=settings.revision,
                quantization=settings.quantization,
                dtype=settings.dtype,
                tensor_parallel_size=settings.tensor_parallel_size,
                gpu_memory_utilization=settings.gpu_memory_utilization,
                max_model_len=settings.max_model_len,
                enable_prefix_caching=settings.enable_prefix_caching,
                enforce_eager=settings.enforce_eager,
                seed=settings.engine_seed,
                kv_cache_memory_bytes=settings.kv_cache_memory_bytes,
                max_num_seqs=settings.max_num_seqs,
            )
            return VllmEngine(options, prompt_template=settings.prompt_template)


def make_executor(settings: Settings) -> Executor:
    match settings.executor:
        case ExecutorKind.LOCAL:
            log.warning(
                "code execution is NOT isolated: model-written code runs as this user on this host "
                "(executor=local); use it only where no Docker engine is available"
            )
            return LocalExecutor(
                python=settings.python,
                timeout_s=settings.execution_timeout_s,
                concurrency=settings.execution_concurrency,
            )
