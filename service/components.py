"""Builds the engine and the executor that the settings name."""

from __future__ import annotations

import logging
import os

from sandbox.executor import Executor
from sandbox.executors import LocalExecutor
from service.engines.base import Engine
from service.engines.remote import RemoteEngine
from service.machine import choose
from service.settings import EngineKind, ExecutorKind, Settings

log = logging.getLogger(__name__)


def make_engine(settings: Settings) -> Engine:
    """The engine of `settings`, after choosing the engine and model if unset (see service.machine)."""
    settings = choose(settings)
    assert settings.model is not None  # chosen
    match settings.engine:
        case EngineKind.REMOTE:
            return RemoteEngine(
                base_url=settings.remote_url,
                model=settings.model,
                api_key=settings.remote_api_key.get_secret_value() if settings.remote_api_key else None,
                prompt_template=settings.prompt_template,
                timeout_s=settings.remote_timeout_s,
                stall_s=settings.engine_stall_s,
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
                enable_chunked_prefill=settings.enable_chunked_prefill,
                attention_backend=settings.attention_backend,
            )
            return VllmEngine(options, prompt_template=settings.prompt_template, stall_s=settings.engine_stall_s)


def make_executor(settings: Settings) -> Executor:
    match settings.executor:
        case ExecutorKind.DOCKER:
            from sandbox.backends import DockerLimits
            from sandbox.executors import DockerExecutor

            log.info(
                "code execution: %d sandbox container(s) of %s, %d blocks each at once (runtime %s)",
                settings.sandbox_pool_size,
                settings.sandbox_image,
                settings.sandbox_container_concurrency,
                settings.sandbox_runtime or "default",
            )
            return DockerExecutor(
                image=settings.sandbox_image,
                size=settings.sandbox_pool_size,
                concurrency=settings.sandbox_container_concurrency,
                timeout_s=settings.execution_timeout_s,
                max_output_bytes=settings.execution_max_output_bytes,
                limits=DockerLimits(
                    memory=settings.sandbox_memory,
                    pids=settings.sandbox_pids_limit,
                    cpus=settings.sandbox_cpus,
                    tmpfs_size=settings.sandbox_tmpfs_size,
                    runtime=settings.sandbox_runtime,
                ),
                pool_name=settings.sandbox_pool_name,
                environment={k: os.environ[k] for k in settings.sandbox_env_passthrough if k in os.environ},
                start_timeout_s=settings.sandbox_start_timeout_s,
                max_containers=settings.sandbox_max_containers,
            )
        case ExecutorKind.LOCAL:
            log.warning(
                "code execution is NOT isolated: model-written code runs as this user on this host "
                "(executor=local); use it only where no Docker engine is available"
            )
            return LocalExecutor(
                python=settings.python,
                timeout_s=settings.execution_timeout_s,
                concurrency=settings.execution_concurrency,
                max_output_bytes=settings.execution_max_output_bytes,
            )
