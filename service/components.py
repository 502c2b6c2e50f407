"""Builds the engine and the executor that the settings name."""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from sandbox.execution import Executor
from sandbox.executors import LocalExecutor
from service.engines.base import Engine
from service.engines.remote import RemoteEngine
from service.machine import choose
from service.settings import EngineKind, ExecutorKind, Settings

if TYPE_CHECKING:  # pragma: no cover
    from sandbox.backends import DockerLimits
    from service.engines.vllm_local import VllmOptions

log = logging.getLogger(__name__)

Options = TypeVar("Options")


def from_settings(settings: Settings, options: type[Options], prefix: str = "", **renamed: str) -> Options:
    """The dataclass `options` with each field the setting named `prefix` + its name (or as `renamed` says).

    Fields that no setting names keep their defaults, so a new option is configurable by adding the setting.
    """
    values: dict[str, Any] = {}
    for field in dataclasses.fields(options):
        setting = renamed.get(field.name, prefix + field.name)
        if setting in Settings.model_fields:
            values[field.name] = getattr(settings, setting)
    return options(**values)


def vllm_options(settings: Settings) -> VllmOptions:
    """The in-process engine's options: the settings of the same names, and engine_seed as its seed."""
    from service.engines.vllm_local import VllmOptions

    return from_settings(settings, VllmOptions, seed="engine_seed")


def docker_limits(settings: Settings) -> DockerLimits:
    """The sandbox containers' limits: the sandbox_ settings (sandbox_memory, sandbox_pids_limit, ...)."""
    from sandbox.backends import DockerLimits

    return from_settings(settings, DockerLimits, "sandbox_", pids="sandbox_pids_limit")


class Components(NamedTuple):
    """What a solve needs, and the settings it runs with (the chosen engine's request defaults included)."""

    settings: Settings
    engine: Engine
    executor: Executor


def build(settings: Settings, engine: Engine | None = None, executor: Executor | None = None) -> Components:
    """The engine and executor given, or those the settings (and this machine, see service.machine) call for.

    The API, `sctir solve` in process and the evaluation's in-process backend all start this way; when the engine
    is built here the settings returned carry its defaults (e.g. the demo model's answer mode and context).
    """
    if engine is None:
        settings = choose(settings)
    return Components(settings, engine or make_engine(settings), executor or make_executor(settings))


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
            from service.engines.vllm_local import VllmEngine

            return VllmEngine(
                vllm_options(settings), prompt_template=settings.prompt_template, stall_s=settings.engine_stall_s
            )


def make_executor(settings: Settings) -> Executor:
    match settings.executor:
        case ExecutorKind.DOCKER:
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
                limits=docker_limits(settings),
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
