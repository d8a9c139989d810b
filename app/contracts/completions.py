"""What `/v1/chat/completions` and `/v1/completions` send to the generate worker, and what comes back through the
request's Redis Stream (app.playground's stream per request, with these events).

The web checks the OpenAI request and resolves its model (app.services.openai_completions); the worker resolves the
model again when it runs (it may have been deleted meanwhile), formats the prompt, and decodes `n` answers of one
model. Every piece of text goes out as it is decoded; the last event holds each answer whole, so a streamed answer
and a whole one are the same text by construction.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.contracts.events import LiveEvent, TokenEvent

MAX_CHOICES = 8  # `n`: every choice is decoded one after another on one worker
MAX_STOPS = 4  # OpenAI's own bound on `stop`
MAX_STOP_CHARS = 200
MAX_NEW_TOKENS = 4096
DEFAULT_MAX_TOKENS = 256  # OpenAI's default is "up to the context"; a small model rambles to it, so loradeck caps it
MAX_MESSAGES = 100
MAX_PROMPT_CHARS = 60_000  # a prompt, or a conversation's turns together (the playground's bound)


class Turn(BaseModel):
    """One message as the chat template takes it (OpenAI's `developer` role already made `system`)."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str


class CompletionJob(BaseModel):
    """One request for the generate worker: a model id, what to continue, and how to sample."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    model: str = Field(max_length=400, description="The model id (app.openai_ids): a base, a fine-tune, a checkpoint.")
    messages: list[Turn] | None = Field(
        default=None, max_length=MAX_MESSAGES, description="A conversation, formatted with the model's chat template."
    )
    prompt: str | None = Field(
        default=None, max_length=MAX_PROMPT_CHARS, description="Text given to the model as it is, no template."
    )
    temperature: float = Field(default=1.0, ge=0.0, le=2.0, description="0: greedy decoding.")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    max_tokens: int = Field(default=DEFAULT_MAX_TOKENS, ge=1, le=MAX_NEW_TOKENS)
    stop: list[str] = Field(default_factory=list, max_length=MAX_STOPS)
    seed: int = Field(default=0, ge=0, lt=2**63, description="Choice i samples with seed + i.")
    n: int = Field(default=1, ge=1, le=MAX_CHOICES)

    @model_validator(mode="after")
    def _one_input(self) -> CompletionJob:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("give exactly one of messages and prompt")
        return self


# --- the request's stream
class PromptEvent(LiveEvent):
    """The model is loaded and the prompt read: its length in tokens (usage's prompt_tokens)."""

    type = "start"
    prompt_tokens: int


class ChoiceDone(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str
    finish_reason: Literal["stop", "length"]
    tokens: int = Field(
        description="Tokens the model generated for this choice (its end-of-sequence token not counted)."
    )


class CompletedEvent(LiveEvent):
    type = "done"
    choices: list[ChoiceDone]
    prompt_tokens: int


class FailedEvent(LiveEvent):
    """The request cannot be answered: `kind` says whose fault (the web turns it into a status)."""

    type = "error"
    kind: Literal["not_found", "invalid", "server"] = "server"
    message: str
    param: str | None = None


# TokenEvent: `side` is the choice's index.
COMPLETION_EVENTS: dict[str, type[LiveEvent]] = {
    model.type: model for model in (PromptEvent, TokenEvent, CompletedEvent, FailedEvent)
}
FINAL_COMPLETION_EVENTS = (CompletedEvent.type, FailedEvent.type)
