"""A random model that writes TIR text: VllmEngine steps constrained by vLLM's structured outputs.

A random tiny model (tests/support/tiny_model.py) writes noise, which never holds a code block. A regex per
request (vLLM's structured outputs) gives its text the shape of a NuminaMath TIR solution while the
tokens are still sampled from the model with the request's seed: texts differ between seeds, and
everything vLLM does with them (batching, stop strings, seeds, aborts) is real. The tests and the
benchmarks both use it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from service.engines.base import StepRequest
from service.engines.vllm_local import VllmEngine, VllmOptions
from service.tir import NUMINA_PROMPT_TEMPLATE, OUTPUT_MARKER

if TYPE_CHECKING:  # pragma: no cover
    from vllm import SamplingParams as VllmSamplingParams

RegexFor = Callable[[str], str | None]

PROSE = r"[a-z][a-z ]{0,23}"
# After the output marker (the stop string) the model "hallucinates" an output of its own, which the
# stop string cuts off; in the service's text an output block is always the executor's.
_OWN_OUTPUT = r"```output\n[0-9]{1,4}\n```\n"
# A block of a variable number of assignments: at each line the random model either writes another
# one (many tokens fit a short name) or the print (few do), so block lengths are roughly geometric
# and differ between candidates and steps.
_ASSIGNMENTS = r"([a-z] = [1-9][0-9]{0,2}\n)*"
# With `loops`, the block also runs a brute-force loop of 10**k iterations, the model picking k from 1
# to 6 (microseconds to about 0.3 s in the sandbox): blocks then differ in how long they run too, as
# competition code does (searches, sympy solves), and a step barrier waits for the slowest of them.
_LOOP = r"for i in range\(10 \*\* [1-6]\):\n    x = \(x \* 31 \+ i\) % 1000003\n"
VARYING_ANSWER_STEP_REGEX = PROSE + r"\nThe answer is \$\\boxed\{[0-9]{1,3}\}\$\."


def varying_code_step_regex(*, loops: bool = False) -> str:
    """Prose, a Python block ending in print(x), and an output of the model's own (cut off by the stop)."""
    body = r"x = [1-9][0-9]{0,2}\n" + (_LOOP if loops else "") + _ASSIGNMENTS + r"print\(x\)\n"
    return PROSE + r"\n```python\n" + body + r"```\n" + _OWN_OUTPUT


def varying_tir_regex(prompt: str, *, loops: bool = False) -> str:
    """Code first; after an executed block, more code or the answer: candidates need 2 to M steps.

    An executed block's closing fence is the service's last character (service.tir.output_block):
    the model's step begins with the newline after it.
    """
    code = varying_code_step_regex(loops=loops)
    if OUTPUT_MARKER not in prompt:
        return code
    return f"\n(({code})|({VARYING_ANSWER_STEP_REGEX}))"


class ConstrainedVllmEngine(VllmEngine):
    """VllmEngine whose steps follow `regex_for(prompt)` (None: unconstrained); needs vLLM."""

    def __init__(
        self, options: VllmOptions, *, regex_for: RegexFor, prompt_template: str = NUMINA_PROMPT_TEMPLATE
    ) -> None:
        super().__init__(options, prompt_template=prompt_template)
        self.regex_for = regex_for  # public: a test may swap it between requests

    def sampling_params(self, request: StepRequest) -> VllmSamplingParams:
        from vllm.sampling_params import StructuredOutputsParams

        params = super().sampling_params(request)
        regex = self.regex_for(request.prompt)
        if regex is not None:
            params.structured_outputs = StructuredOutputsParams(regex=regex)
        return params
