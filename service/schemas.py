"""Request and response models of the HTTP API (the OpenAPI schema at /docs)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidatorFunctionWrapHandler, field_validator

from service.answers import AnswerMode
from service.settings import Settings
from service.solver import (
    Candidate,
    CandidateStatus,
    DeadlineSeconds,
    MaxNewTokens,
    MaxSteps,
    NumSamples,
    Seed,
    SolveConfig,
    SolveResult,
    Temperature,
)

MAX_PROBLEM_BYTES = 32 * 1024
# some non-whitespace character, by both ECMA's \s (the schema's clients) and str.isspace (Python's)
NON_BLANK = r"[^\s\x1c-\x1f\x85]"


class SolveRequest(BaseModel):
    """A problem and optional overrides of the server's SC-TIR defaults."""

    model_config = ConfigDict(extra="forbid")

    problem: str = Field(
        min_length=1,
        max_length=MAX_PROBLEM_BYTES,
        pattern=NON_BLANK,
        description="The problem statement (LaTeX welcome), at most 32 KiB of UTF-8.",
    )
    num_samples: NumSamples | None = Field(None, description="Candidates (N).")
    max_steps: MaxSteps | None = Field(None, description="Generation steps per candidate (M).")
    temperature: Temperature | None = Field(None, description="Sampling temperature.")
    max_new_tokens: MaxNewTokens | None = Field(None, description="Token budget of one step.")
    answer_mode: Literal["aimo", "integer", "expression"] | None = Field(
        None, description="aimo: integer mod 1000 (the competition rule); integer; expression: symbolic."
    )
    execution_mode: Literal["last_block", "session"] | None = Field(
        None, description="last_block: each block alone (the reference's); session: blocks share state."
    )
    deadline_s: DeadlineSeconds | None = Field(
        None,
        description="Seconds of solving (queueing excluded); at the deadline the finished candidates are voted.",
    )
    seed: Seed | None = Field(None, description="Fixes every candidate's sampling seed.")
    return_traces: bool = Field(False, description="Include every candidate's full text.")
    stream: bool = Field(
        False,
        description="Answer with server-sent events as the solve goes (start, step, execution, candidate, vote, "
        "then result or error) instead of one JSON body; so does the header `Accept: text/event-stream`.",
    )
    profile: Literal["service", "reference"] | None = Field(
        None, description="service: our candidate rules; reference: the winners' notebook's, exactly."
    )

    @field_validator("num_samples", "max_steps", "temperature", "max_new_tokens", "deadline_s", "seed", mode="before")
    @classmethod
    def _json_number(cls, value: object) -> object:
        """JSON numbers only: "5" or true are type errors, not values to guess at.

        (Not pydantic's strict mode, which also refuses 5.0 for an integer, which JSON Schema allows.)
        """
        if isinstance(value, str | bool):
            raise ValueError("must be a JSON number")
        return value

    @field_validator("return_traces", "stream", mode="before")
    @classmethod
    def _json_boolean(cls, value: object) -> object:
        if not isinstance(value, bool):
            raise ValueError("must be true or false")
        return value

    @field_validator("problem", mode="wrap")
    @classmethod
    def _problem_is_text(cls, problem: object, handler: ValidatorFunctionWrapHandler) -> str:
        try:
            problem = handler(problem)
        except ValidationError as exc:
            if exc.errors()[0]["type"] == "string_pattern_mismatch":
                raise ValueError("must contain non-whitespace text") from None
            raise
        if len(problem.encode()) > MAX_PROBLEM_BYTES:
            raise ValueError(f"must be at most {MAX_PROBLEM_BYTES} bytes of UTF-8")
        return problem

    def to_config(self, settings: Settings) -> SolveConfig:
        """The effective parameters: this request's overrides over the server's defaults; a random seed unless given."""
        return settings.solve_config(**self.model_dump(include=set(SolveConfig.model_fields), exclude_none=True))


class CandidateSummary(BaseModel):
    index: int
    status: CandidateStatus
    steps: int = Field(description="Generation steps taken.")
    restarts: int
    executions: int = Field(description="Code blocks executed.")
    answer: str | None = Field(description="The raw final answer the candidate gave.")
    vote: str | None = Field(description="The answer class it voted for; null if invalid in the mode.")
    error: str | None = Field(
        description="Why it was pruned or failed; also, whatever its status, 'sandbox: ...' when a sandbox died "
        "or froze under one of its blocks (the block's output said so and the sandbox was replaced)."
    )
    prompt_tokens: int
    completion_tokens: int
    text: str | None = Field(None, description="The full completion (only with return_traces).")

    @classmethod
    def of(cls, candidate: Candidate, traces: bool) -> CandidateSummary:
        """The candidate's fields of the same names; its text only when the client asked for traces."""
        summary = cls.model_validate(candidate, from_attributes=True)
        return summary if traces else summary.model_copy(update={"text": None})


class Timings(BaseModel):
    total_s: float = Field(description="Wall time of the request, queueing included.")
    queue_s: float = Field(description="Time waiting for a free solver slot.")
    generation_s: float = Field(description="Engine time summed over candidates.")
    execution_s: float = Field(description="Code execution time summed over candidates.")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int


class SolveResponse(BaseModel):
    request_id: str
    answer: str | None = Field(description="The majority answer; null when no candidate gave a valid one.")
    votes: dict[str, int] = Field(description="Answer -> votes, winner first.")
    agreement: float = Field(description="Winning votes / valid votes.")
    answer_mode: AnswerMode
    seed: int = Field(description="The seed used; send it back to reproduce this result.")
    stopped_early: bool = Field(description="The leader became unbeatable and the rest were aborted.")
    deadline_hit: bool = Field(description="The deadline cut the run; the vote is of what finished.")
    retried_steps: int = Field(
        0,
        description="Steps sent again, with the same text so far and seed, because the engine replica running "
        "them died (a Ray cluster: the answer is unchanged); 0 on one box.",
    )
    candidates: list[CandidateSummary]
    timings: Timings
    usage: Usage

    @classmethod
    def from_result(
        cls, result: SolveResult, config: SolveConfig, request_id: str, queue_s: float, traces: bool
    ) -> SolveResponse:
        return cls(
            request_id=request_id,
            answer=result.answer,
            votes=result.votes,
            agreement=result.agreement,
            answer_mode=config.answer_mode,
            seed=result.seed,
            stopped_early=result.stopped_early,
            deadline_hit=result.deadline_hit,
            retried_steps=result.retried_steps,
            candidates=[CandidateSummary.of(c, traces) for c in result.candidates],
            timings=Timings(
                total_s=result.total_s + queue_s,
                queue_s=queue_s,
                generation_s=result.generation_s,
                execution_s=result.execution_s,
            ),
            usage=Usage(prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens),
        )


class ErrorResponse(BaseModel):
    request_id: str | None = None
    message: str = Field(description="What went wrong, naming the offending field.")
    detail: list[dict] | None = Field(
        None,
        description="Validation errors, one per field (the first 20); what they quote of the request is cut to "
        "200 characters, marked '... (cut: N characters in all)'.",
    )
