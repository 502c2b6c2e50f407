"""Reading chat completions of the OpenAI-compatible API: the final boxed answer, a stream's content."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

FINAL_BOX = re.compile(r"\\boxed\{([^{}]*)\}[\s$.]*\Z")


def final_box(content: str) -> str | None:
    """What the content's last \\boxed{} holds, if nothing but closing delimiters and a full stop follow it."""
    match = FINAL_BOX.search(content)
    return match.group(1) if match else None


def streamed_content(chunks: Iterable[Any]) -> str:
    """The message a stream of chat.completion.chunk objects (the `openai` client's) carried, joined."""
    return "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
