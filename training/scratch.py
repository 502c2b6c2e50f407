"""Models from scratch: a byte-level BPE tokenizer trained on the stage's own texts and a random Qwen2.

The demo model (training.demo), the tiny CPU recipes (`model.from_scratch`, training.models) and
the tests' random model (tests/support/tiny_model.py) start this way, with no hub access. The
model is a Qwen2 because vLLM serves it and its CPU attention takes it: `random_qwen2` refuses a
head size under 32, the smallest vLLM's CPU attention runs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.tir import NUMINA_CHAT_TEMPLATE, PROBLEM_PREFIX, SOLUTION_PREFIX

if TYPE_CHECKING:  # pragma: no cover
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

EOS, PAD = "<|endoftext|>", "<|pad|>"  # Qwen2's names (Qwen2Tokenizer's defaults)
MIN_HEAD_SIZE = 32  # vLLM's CPU attention


@dataclass(frozen=True)
class ModelShape:
    """The size of a random Qwen2 (defaults: the demo model's, 1.1M parameters with its tokenizer)."""

    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 512
    max_positions: int = 4096


def train_bpe(tokenizer: Tokenizer, texts: Sequence[str], *, vocab_size: int, special_tokens: Sequence[str]) -> None:
    """Train `tokenizer`'s BPE model on `texts`, every byte in the alphabet so that any text encodes."""
    from tokenizers import pre_tokenizers, trainers

    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)


def build_tokenizer(texts: Sequence[str], vocab_size: int = 384) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on `texts`: digits one per token, the prompt markers as added tokens.

    The pipeline is Qwen2's own (NFC, Qwen2's pre-tokenizer regex, which isolates every digit,
    byte-level), and the tokenizer is a Qwen2Tokenizer: transformers maps a qwen2 checkpoint to
    that class whatever its tokenizer_config says and rebuilds that pipeline on load, so any
    other pipeline would tokenize differently when served than when trained. `save_tokenizer`
    checks the round trip.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX, Qwen2Tokenizer

    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    train_bpe(tokenizer, texts, vocab_size=vocab_size, special_tokens=[EOS, PAD])
    state = json.loads(tokenizer.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in state["merges"]]
    fast = Qwen2Tokenizer(
        vocab=state["vocab"],
        merges=merges,
        unk_token=EOS,
        eos_token=EOS,
        pad_token=PAD,
        model_max_length=4096,
        clean_up_tokenization_spaces=False,
    )
    add_prompt_format(fast)
    return fast


def add_prompt_format(tokenizer: PreTrainedTokenizerBase) -> None:
    """The prompt's markers as added tokens and the served chat template, as NuminaMath's tokenizer has them.

    Ordinary added tokens, not special ones: they stay in decoded text, as NuminaMath's markers do,
    and the prompt's trailing space tokenizes the same in training and serving.
    """
    tokenizer.add_tokens([PROBLEM_PREFIX, SOLUTION_PREFIX])
    tokenizer.chat_template = NUMINA_CHAT_TEMPLATE


def save_tokenizer(tokenizer: PreTrainedTokenizerBase, out: Path, probes: Sequence[str]) -> PreTrainedTokenizerBase:
    """Save `tokenizer` and return it as transformers (and so vLLM) loads it back.

    Raises if the reloaded tokenizer encodes any probe text differently, or has a different
    vocabulary size: training on one tokenization and serving another makes a model emit garbage.
    """
    from transformers import AutoTokenizer

    tokenizer.save_pretrained(out)
    loaded = AutoTokenizer.from_pretrained(out)
    if len(loaded) != len(tokenizer):
        raise RuntimeError(f"the saved tokenizer has {len(loaded)} tokens, the trained one {len(tokenizer)}")
    for text in probes:
        if (
            loaded(text, add_special_tokens=False)["input_ids"]
            != tokenizer(text, add_special_tokens=False)["input_ids"]
        ):
            raise RuntimeError(f"the saved tokenizer encodes {text!r} differently")
    return loaded


def random_qwen2(tokenizer: PreTrainedTokenizerBase, shape: ModelShape, seed: int) -> Any:
    """A float32 Qwen2ForCausalLM of `shape` for `tokenizer`'s vocabulary, initialised from `seed`.

    The default init (std 0.02) gives near-uniform next-token distributions: untrained, every
    seed samples a visibly different text and EOS rarely ends a step early.
    """
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    if shape.hidden_size // shape.num_heads < MIN_HEAD_SIZE:
        raise ValueError(f"vLLM's CPU attention needs hidden_size / num_heads >= {MIN_HEAD_SIZE}")
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_heads,
        max_position_embeddings=shape.max_positions,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
    )
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(config)
