"""Loading (or creating) the model and tokenizer a recipe names, with the served chat template."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

from service.tir import NUMINA_CHAT_TEMPLATE
from training.scratch import ModelShape, build_tokenizer, random_qwen2

log = logging.getLogger(__name__)

CHAT_TEMPLATES = {"numina": NUMINA_CHAT_TEMPLATE}


def chat_template(section: dict[str, Any]) -> str | None:
    """The recipe's chat template: a name in CHAT_TEMPLATES, a Jinja string, or None (keep the tokenizer's)."""
    name = section.get("chat_template", "numina")
    if name is None:
        return None
    return CHAT_TEMPLATES.get(name, name)


def torch_dtype(name: str | None):
    import torch

    if name in (None, "auto"):
        return "auto"
    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[name]


def prepare_tokenizer(tokenizer, section: dict[str, Any]):
    """Set the served chat template and a pad token (DeepSeek's base tokenizer has none)."""
    template = chat_template(section)
    if template is not None:
        tokenizer.chat_template = template
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model_and_tokenizer(section: dict[str, Any], scratch_texts: Sequence[str] | None = None):
    """(model, tokenizer) from `model.name_or_path` (hub id or path), or built from scratch.

    `model.from_scratch` (hidden_size, num_layers, num_heads, intermediate_size, vocab_size)
    with no name_or_path makes a random Qwen2 and trains a byte-level BPE tokenizer on
    `scratch_texts` (the stage's own training texts): the tiny CPU recipes start this way.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = section.get("name_or_path")
    if not name:
        scratch = section.get("from_scratch")
        if not scratch:
            raise ValueError("the recipe's model section needs name_or_path or from_scratch")
        if not scratch_texts:
            raise ValueError("a model from scratch needs training texts for its tokenizer")
        return _from_scratch(scratch, scratch_texts, section)
    tokenizer = AutoTokenizer.from_pretrained(name, revision=section.get("revision"))
    kwargs: dict[str, Any] = {"dtype": torch_dtype(section.get("dtype"))}
    if section.get("revision"):
        kwargs["revision"] = section["revision"]
    if section.get("attn_implementation"):
        kwargs["attn_implementation"] = _available_attention(section["attn_implementation"])
    model = AutoModelForCausalLM.from_pretrained(name, **kwargs)
    return model, prepare_tokenizer(tokenizer, section)


def _available_attention(requested: str) -> str:
    """flash_attention_2 where installed (the GPU recipes), else PyTorch's SDPA."""
    if requested.startswith("flash_attention"):
        from transformers.utils import is_flash_attn_2_available

        if not is_flash_attn_2_available():
            log.warning("%s is not available here: using sdpa", requested)
            return "sdpa"
    return requested


def _from_scratch(scratch: dict[str, Any], texts: Sequence[str], section: dict[str, Any]):
    shape = ModelShape(**{f.name: int(scratch[f.name]) for f in dataclasses.fields(ModelShape) if f.name in scratch})
    tokenizer = build_tokenizer(list(texts), vocab_size=int(scratch.get("vocab_size", 1024)))
    model = random_qwen2(tokenizer, shape, seed=int(scratch.get("seed", 0)))
    return model, prepare_tokenizer(tokenizer, section)
