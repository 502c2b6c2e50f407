"""A solve as a chat completion: the winning candidate's solution as the message, the vote beside it.

The message is what a reader of the chat wants: one worked solution (the model's text, its code blocks
and what they printed) ending in the answer the vote chose, as `\\boxed{answer}`. The winner is the
first candidate, in index order, that voted for that answer, so the same seed shows the same solution.
"""

from __future__ import annotations

import re
from collections import Counter

from service.answers import extract_boxed
from service.api.openai.schemas import (
    AssistantMessage,
    ChatCompletion,
    Choice,
    CompletionUsage,
    SctirSummary,
)
from service.schemas import CandidateSummary, SolveResponse

# What may follow a solution's final box and still leave it the last word: closing math delimiters
# ($, \], \)), a full stop, whitespace.
AFTER_THE_BOX = re.compile(r"[\s$.)\]\\]*\Z")


def winner(response: SolveResponse) -> CandidateSummary | None:
    """The first candidate whose vote is the answer; None without an answer."""
    if response.answer is None:
        return None
    return next((c for c in response.candidates if c.vote == response.answer), None)


def ends_in_box(text: str, answer: str) -> bool:
    """`text` ends with `\\boxed{answer}` (closing delimiters and a full stop aside)."""
    core = AFTER_THE_BOX.sub("", text)
    return extract_boxed(core) == answer and core.endswith(f"\\boxed{{{answer}}}")


def by_status(response: SolveResponse) -> dict[str, int]:
    return dict(Counter(str(c.status) for c in response.candidates))


def no_answer(response: SolveResponse) -> str:
    """Said plainly: no candidate gave a valid answer, and how the candidates ended."""
    ended = ", ".join(f"{count} {status}" for status, count in by_status(response).items())
    cut = " before the deadline" if response.deadline_hit else ""
    return f"No answer: none of the {len(response.candidates)} candidates reached a valid answer{cut} ({ended})."


def solution(response: SolveResponse) -> str:
    """The message: the winner's text (traces needed) ending in `\\boxed{answer}`; or why there is no answer."""
    best = winner(response)
    if best is None or response.answer is None:
        return no_answer(response)
    text = best.text or ""
    if ends_in_box(text, response.answer):
        return text
    return f"{text.rstrip()}\n\n\\boxed{{{response.answer}}}".lstrip()


def summary(response: SolveResponse) -> SctirSummary:
    best = winner(response)
    return SctirSummary(
        **response.model_dump(
            include={"request_id", "answer", "votes", "agreement", "answer_mode", "seed"}
            | {"stopped_early", "deadline_hit"}
        ),
        candidates=by_status(response),
        winner=best.index if best else None,
    )


def usage(response: SolveResponse) -> CompletionUsage:
    """Every token of every candidate's every step (not only the winner's)."""
    prompt, completion = response.usage.prompt_tokens, response.usage.completion_tokens
    return CompletionUsage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def completion_id(request_id: str) -> str:
    return f"chatcmpl-{request_id}"


def chat_completion(response: SolveResponse, model: str, created: int) -> ChatCompletion:
    return ChatCompletion(
        id=completion_id(response.request_id),
        created=created,
        model=model,
        choices=[Choice(message=AssistantMessage(content=solution(response)))],
        usage=usage(response),
        sctir=summary(response),
    )
