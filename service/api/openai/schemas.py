"""The OpenAI chat API's request and response models, as far as SC-TIR can honour them.

A parameter SC-TIR cannot honour (tools, logprobs, n > 1, images, ...) is refused with an error naming
it, never silently ignored: a client that asked for it would otherwise take the answer for what it asked.
Unknown parameters are refused as OpenAI's own API refuses them. SC-TIR's own knobs ride in `sctir`, the
field the `openai` client sends with `extra_body={"sctir": {...}}`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from service.answers import AnswerMode
from service.schemas import MAX_PROBLEM_BYTES
from service.settings import Settings
from service.solver import (
    DeadlineSeconds,
    ExecutionMode,
    MaxNewTokens,
    MaxSteps,
    NumSamples,
    Profile,
    Seed,
    SolveConfig,
    Temperature,
    TopP,
)

MODEL_ID = "sctir"  # the model id clients ask for; the served model's own name is an alias


def unsupported(kind: Literal["parameter", "value"], why: str) -> PydanticCustomError:
    """A validation error OpenAI would call `unsupported_parameter` or `unsupported_value` (its `code`)."""
    return PydanticCustomError(f"unsupported_{kind}", why)


def json_number(value: object) -> object:
    """JSON numbers only: "5" or true are type errors, not values to guess at (as POST /solve)."""
    if isinstance(value, str | bool):
        raise ValueError("must be a JSON number")
    return value


class ContentPart(BaseModel):
    """One part of a message's content; only text parts: SC-TIR reads problems as text."""

    model_config = ConfigDict(extra="allow")  # an image_url or input_audio part carries its payload

    type: str
    text: str | None = None

    @model_validator(mode="after")
    def _text_only(self) -> ContentPart:
        if self.type != "text":
            raise unsupported("value", f"{self.type} content is not supported: SC-TIR solves problems given as text")
        if self.text is None:
            raise PydanticCustomError("missing", "a text part needs `text`")
        return self


class Message(BaseModel):
    """A chat message; only the last user message is read (the problem), the others are accepted and ignored."""

    model_config = ConfigDict(extra="ignore")  # name, tool_call_id, refusal, ...: nothing SC-TIR reads

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: list[ContentPart] | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _string_is_one_text_part(cls, content: object) -> object:
        return [{"type": "text", "text": content}] if isinstance(content, str) else content

    @property
    def text(self) -> str:
        return "\n".join(part.text or "" for part in self.content or [])


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = Field(False, description="Send a last chunk with the usage over all candidates.")


class SctirOptions(BaseModel):
    """SC-TIR's own knobs, as POST /solve takes them (the `openai` client: `extra_body={"sctir": {...}}`)."""

    model_config = ConfigDict(extra="forbid")

    num_samples: NumSamples | None = Field(None, description="Candidates (N).")
    max_steps: MaxSteps | None = Field(None, description="Generation steps per candidate (M).")
    answer_mode: AnswerMode | None = Field(None, description="aimo, integer or expression.")
    execution_mode: ExecutionMode | None = Field(None, description="last_block or session.")
    deadline_s: DeadlineSeconds | None = Field(None, description="Seconds of solving; then the finished are voted.")
    profile: Profile | None = Field(None, description="service or reference (the winners' notebook's rules).")

    _numbers = field_validator("num_samples", "max_steps", "deadline_s", mode="before")(json_number)


# Why each parameter that must stay empty (or at its default) cannot be honoured.
NOT_HONOURED = {
    "tools": "SC-TIR runs the model's own Python; it calls no client tools",
    "functions": "SC-TIR runs the model's own Python; it calls no client functions",
    "tool_choice": "SC-TIR calls no client tools",
    "function_call": "SC-TIR calls no client functions",
    "logprobs": "the answer is a vote over candidates, which has no log probabilities",
    "top_logprobs": "the answer is a vote over candidates, which has no log probabilities",
    "stop": "every step stops at the model's output marker; other stop strings would break SC-TIR",
    "logit_bias": "the candidates sample from the model as trained",
    "presence_penalty": "the candidates sample from the model as trained",
    "frequency_penalty": "the candidates sample from the model as trained",
    "n": "SC-TIR returns one answer, the vote of its candidates (set their number with sctir.num_samples)",
    "response_format": "the answer is the winning solution as text",
    "modalities": "the answer is text",
    "audio": "the answer is text",
    "prediction": "the answer is generated, not predicted",
}


def asks_for_nothing(value: object) -> bool:
    """None, false, zero, empty, "none" or "auto" (of tools there are none), text as the format: SC-TIR's own way."""
    if isinstance(value, bool | int | float):
        return not value
    return value in (None, "", [], {}, "none", "auto", {"type": "text"}, ["text"])


class ChatCompletionRequest(BaseModel):
    """POST /v1/chat/completions: the last user message is the problem."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description=f"{MODEL_ID!r} (or the served model's own name).")
    messages: list[Message] = Field(min_length=1, description="The last user message is the problem.")
    temperature: Temperature | None = Field(None, description="Sampling temperature of every candidate.")
    top_p: TopP | None = Field(None, description="Nucleus sampling mass of every candidate.")
    max_tokens: MaxNewTokens | None = Field(None, description="Token budget of ONE step of a candidate.")
    max_completion_tokens: MaxNewTokens | None = Field(None, description="As max_tokens, which it overrides.")
    seed: Seed | None = Field(None, description="Fixes every candidate's sampling seed.")
    stream: bool = Field(False, description="Server-sent chat.completion.chunk events, with progress comments.")
    stream_options: StreamOptions | None = None
    sctir: SctirOptions = Field(default_factory=SctirOptions, description="SC-TIR's own knobs.")
    user: str | None = Field(None, description="Accepted and ignored.")
    metadata: dict[str, str] | None = Field(None, description="Accepted and ignored.")
    store: bool | None = Field(None, description="Accepted and ignored: nothing is stored.")
    parallel_tool_calls: bool | None = Field(None, description="Accepted and ignored: there are no tool calls.")
    # Refused unless harmless (see NOT_HONOURED)
    n: int = Field(1, ge=1, description="Must be 1.")
    tools: list[Any] | None = None
    functions: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    function_call: str | dict[str, Any] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    stop: str | list[str] | None = None
    logit_bias: dict[str, Any] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    response_format: dict[str, Any] | None = None
    modalities: list[str] | None = None
    audio: dict[str, Any] | None = None
    prediction: dict[str, Any] | None = None

    _numbers = field_validator(
        "temperature", "top_p", "max_tokens", "max_completion_tokens", "seed", "n", mode="before"
    )(json_number)

    @field_validator(*(name for name in NOT_HONOURED if name != "n"), mode="after")
    @classmethod
    def _refused(cls, value: object, info: ValidationInfo) -> object:
        if not asks_for_nothing(value):
            raise unsupported("parameter", f"not supported: {NOT_HONOURED[str(info.field_name)]}")
        return value

    @field_validator("n", mode="after")
    @classmethod
    def _one_answer(cls, n: int) -> int:
        if n != 1:
            raise unsupported("value", f"must be 1: {NOT_HONOURED['n']}")
        return n

    @field_validator("messages", mode="after")
    @classmethod
    def _a_user_message_states_the_problem(cls, messages: list[Message]) -> list[Message]:
        users = [index for index, message in enumerate(messages) if message.role == "user"]
        if not users:
            raise ValueError("no user message: the last user message is the problem")
        problem = messages[users[-1]].text
        if not problem.strip():
            raise ValueError(f"the last user message ([{users[-1]}]) has no text: it is the problem")
        if len(problem.encode()) > MAX_PROBLEM_BYTES:
            raise ValueError(f"the last user message ([{users[-1]}]) is over {MAX_PROBLEM_BYTES} bytes of UTF-8")
        return messages

    @property
    def problem(self) -> str:
        return next(message.text for message in reversed(self.messages) if message.role == "user")

    def to_config(self, settings: Settings) -> SolveConfig:
        """The server's defaults under this request's parameters; the step budget from max_completion_tokens."""
        overrides = {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_new_tokens": self.max_completion_tokens or self.max_tokens,
            "seed": self.seed,
            **self.sctir.model_dump(),
        }
        return settings.solve_config(**{name: value for name, value in overrides.items() if value is not None})


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(description="When this server started (Unix seconds).")
    owned_by: str = "sctir"
    root: str | None = Field(None, description="The model the engine serves (accepted as an alias of `id`).")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class CompletionUsage(BaseModel):
    """Tokens over ALL candidates, every step: what the solve cost, not the length of the message shown."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class SctirSummary(BaseModel):
    """The vote behind the message: an extra top-level field, which OpenAI clients ignore."""

    request_id: str
    answer: str | None = Field(description="The majority answer; null when no candidate gave a valid one.")
    votes: dict[str, int] = Field(description="Answer -> votes, winner first.")
    agreement: float = Field(description="Winning votes / valid votes.")
    answer_mode: AnswerMode
    seed: int = Field(description="Send it back as `seed` to reproduce this answer.")
    stopped_early: bool
    deadline_hit: bool
    candidates: dict[str, int] = Field(description="Candidates by how they ended (answered, pruned, ...).")
    winner: int | None = Field(description="The candidate whose solution is the message (the first of the winners).")


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: None = None


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop"] = "stop"
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: CompletionUsage
    system_fingerprint: None = None
    sctir: SctirSummary


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: Literal["stop"] | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: CompletionUsage | None = None
    sctir: SctirSummary | None = Field(None, description="In the chunk that finishes the message.")


class ErrorDetail(BaseModel):
    message: str = Field(description="What went wrong, naming the parameter.")
    type: str = Field(description="invalid_request_error, rate_limit_error or server_error.")
    param: str | None = Field(None, description="The parameter at fault, e.g. messages[0].content[1].")
    code: str | None = Field(None, description="e.g. unsupported_parameter, model_not_found, invalid_api_key.")


class ErrorBody(BaseModel):
    """OpenAI's error shape, on every /v1 route (POST /solve keeps the service's own)."""

    error: ErrorDetail
