"""Loading (or creating) the model and tokenizer a recipe names, with the served chat template."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from service.tir import NUMINA_CHAT_TEMPLATE
from training.recipe import ModelSection
from training.scratch import build_tokenizer, random_qwen2

log = logging.getLogger(__name__)

CHAT_TEMPLATES = {"numina": NUMINA_CHAT_TEMPLATE}


def chat_template(model: ModelSection) -> str | None:
    """The recipe's chat template: a name in CHAT_TEMPLATES, a Jinja string, or None (keep the tokenizer's)."""
    if model.chat_template is None:
        return None
    return CHAT_TEMPLATES.get(model.chat_template, model.chat_template)


def torch_dtype(name: str | None):
    import torch

    if name in (None, "auto"):
        return "auto"
    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[name]


def prepare_tokenizer(tokenizer, model: ModelSection):
    """Set the served chat template and a pad token (DeepSeek's base tokenizer has none)."""
    template = chat_template(model)
    if template is not None:
        tokenizer.chat_template = template
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model_and_tokenizer(model: ModelSection, scratch_texts: Sequence[str] | None = None):
    """(model, tokenizer) from `model.name_or_path` (hub id or path), or built from scratch.

    `model.from_scratch` with no name_or_path makes a random Qwen2 and trains a byte-level BPE
    tokenizer on `scratch_texts` (the stage's own training texts): the tiny CPU recipes start this way.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not model.name_or_path:
        if model.from_scratch is None:
            raise ValueError("the recipe's model section needs name_or_path or from_scratch")
        if not scratch_texts:
            raise ValueError("a model from scratch needs training texts for its tokenizer")
        scratch = model.from_scratch
        tokenizer = build_tokenizer(list(scratch_texts), vocab_size=scratch.vocab_size)
        return random_qwen2(tokenizer, scratch, scratch.seed), prepare_tokenizer(tokenizer, model)
    tokenizer = AutoTokenizer.from_pretrained(model.name_or_path, revision=model.revision)
    kwargs: dict[str, Any] = {"dtype": torch_dtype(model.dtype)}
    if model.revision:
        kwargs["revision"] = model.revision
    if model.attn_implementation:
        kwargs["attn_implementation"] = _available_attention(model.attn_implementation)
    weights = AutoModelForCausalLM.from_pretrained(model.name_or_path, **kwargs)
    return weights, prepare_tokenizer(tokenizer, model)


def _available_attention(requested: str) -> str:
    """flash_attention_2 where installed (the GPU recipes), else PyTorch's SDPA."""
    if requested.startswith("flash_attention"):
        from transformers.utils import is_flash_attn_2_available

        if not is_flash_attn_2_available():
            log.warning("%s is not available here: using sdpa", requested)
            return "sdpa"
    return requested


def train_and_save(trainer: Any, tokenizer: Any, output_dir: str) -> float:
    """Run a TRL trainer, save the model and (once, on the main process) the tokenizer; the seconds trained."""
    started = time.monotonic()
    trainer.train()
    seconds = time.monotonic() - started
    trainer.save_model(output_dir)
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(output_dir)
    return seconds


def write_summary(trainer: Any, path: Path, summary: Any) -> None:
    """`summary` (a dataclass) as JSON at `path`, written by the main process only."""
    if trainer.is_world_process_zero():
        path.write_text(json.dumps(dataclasses.asdict(summary), indent=2))
