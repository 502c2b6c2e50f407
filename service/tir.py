"""The TIR text protocol of NuminaMath-7B-TIR (ToRA format): its prompt format and the reference's step rules.

The prompt is NuminaMath's chat format, defined here once for every engine, for training
(which must format its texts exactly as the service prompts) and for the tests.

A candidate's completion alternates prose, ```python blocks and ```output blocks. A
generation step stops when the model opens an output block (the
stop string is kept in the text); the service then runs the last Python
block and writes the output block itself, so the model never sees an output
it did not earn. As in the reference (the winners' notebook), the service
writes the output and the closing fence with no newline after it: the model
writes what follows.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any

# NuminaMath-7B-TIR's chat format (its tokenizer_config.json): a user turn is "### Problem: {content}\n",
# an assistant turn "### Solution: {content}\n", the generation prompt "### Solution: ".
PROBLEM_PREFIX = "### Problem: "
SOLUTION_PREFIX = "### Solution: "
# The prompt of one problem (SCTIR_PROMPT_TEMPLATE's default): the chat template applied to one user message.
NUMINA_PROMPT_TEMPLATE = PROBLEM_PREFIX + "{problem}\n" + SOLUTION_PREFIX
NUMINA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '### Problem: ' + message['content'] + '\\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ '### Solution: ' + message['content'] + '\\n' }}"
    "{% endif %}"
    "{% if loop.last and message['role'] == 'user' and add_generation_prompt %}{{ '### Solution: ' }}{% endif %}"
    "{% endfor %}"
)

OUTPUT_MARKER = "```output\n"
CODE_BLOCK = re.compile(r"```python(.*?)```", re.DOTALL)
TAIL_CHARS = 100
OUTPUT_LIMIT_CHARS = 200
TRUNCATION_SUFFIX = " ... (output truncated)"


def format_prompt(problem: str, tokenizer: Any = None, *, template: str = NUMINA_PROMPT_TEMPLATE) -> str:
    """The prompt of `problem`: the tokenizer's chat template applied to one user message when it has one.

    Without one (no tokenizer, e.g. a remote engine, or a tokenizer without a template) `template`
    with {problem} replaced by str.replace, so that braces in the problem are kept as they are.
    """
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": problem}], tokenize=False, add_generation_prompt=True
        )
    return template.replace("{problem}", problem)


class StepOutcome(StrEnum):
    """What the reference does with a candidate after one generation step."""

    EXECUTE = "execute"  # ends with the output marker: run the last block, continue
    ANSWER = "answer"  # the tail gives an answer after real tool use: read it from the tail
    HALLUCINATED = "hallucinated"  # an answer without any executed code: prune
    NO_CODE = "no_code"  # no complete Python block at all: restart or prune
    LAST_STEP = "last_step"  # out of steps, no answer in the tail: keep the answer it had, if any
    STALLED = "stalled"  # anything else (e.g. length cut mid-prose): restart or prune


def has_code(completion: str) -> bool:
    """Whether the text holds a complete ```python block (the reference's regex, not an opening fence)."""
    return CODE_BLOCK.search(completion) is not None


def last_code_block(completion: str) -> str | None:
    """The last complete ```python block, the one the reference executes."""
    blocks = CODE_BLOCK.findall(completion)
    return blocks[-1] if blocks else None


def answer_tail(completion: str) -> str:
    """The last TAIL_CHARS characters: where the reference looks for an answer, and reads it from."""
    return completion[-TAIL_CHARS:]


def tail_has_answer(completion: str) -> bool:
    tail = answer_tail(completion)
    return "\\boxed" in tail or "answer is" in tail


def classify_step(completion: str, *, executed_before: bool, last_step: bool) -> StepOutcome:
    """The reference's decision after a step, in the reference's order of checks.

    `completion` is everything the candidate generated so far (with the
    outputs the service inserted); `executed_before` says whether the
    service ever ran code for it since its last restart.
    """
    if not has_code(completion):
        return StepOutcome.NO_CODE
    if tail_has_answer(completion) and not completion.endswith(OUTPUT_MARKER):
        return StepOutcome.ANSWER if executed_before else StepOutcome.HALLUCINATED
    if last_step:
        return StepOutcome.LAST_STEP
    if completion.endswith(OUTPUT_MARKER):
        return StepOutcome.EXECUTE
    return StepOutcome.STALLED


def output_block(feedback: str, limit: int = OUTPUT_LIMIT_CHARS) -> str:
    """The rest of the output block after the marker: truncated feedback, then the closing fence.

    No newline after the fence, as the reference writes it (`f"{code_result}\\n```"`): the
    model's next step starts right after the fence, and every later prompt depends on this.
    """
    return shown_output(feedback, limit) + "\n```"


def shown_output(feedback: str, limit: int = OUTPUT_LIMIT_CHARS) -> str:
    """What the model is shown of an execution's output: at most `limit` characters, then a note that it was cut."""
    return feedback if len(feedback) <= limit else feedback[:limit] + TRUNCATION_SUFFIX
