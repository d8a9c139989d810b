"""What the playground is asked: one prompt, or a conversation for a run trained on messages, with the
sampling settings; sent by the web to the generate worker, which formats it as the run trained."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from app.schemas import refuse_hidden_characters

# A playground conversation's bounds: every turn goes through both models at each new message, so a long
# history costs each answer; the web refuses past these with a message saying to start a new chat.
MAX_CHAT_TURNS = 40
MAX_TURN_CHARS = 20_000
MAX_CHAT_CHARS = 60_000


class ChatTurn(BaseModel):
    """One turn of a playground conversation, as a messages row holds it."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"] = Field(description="Who speaks: system, user or assistant.")
    content: str = Field(max_length=MAX_TURN_CHARS, description="What they say.")

    @model_validator(mode="after")
    def _typed_turns_are_visible(self) -> ChatTurn:
        # An assistant turn is a model's own answer sent back as it came; what a person typed is checked.
        if self.role != "assistant":
            if not self.content.strip():
                raise ValueError(f"content: a {self.role} turn cannot be empty")
            refuse_hidden_characters("content", self.content)
        return self


class PlaygroundRequest(BaseModel):
    """One playground request: a prompt, or a conversation, answered by the run's base beside its adapter, a
    checkpoint or its merged model."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    run_id: str = Field(pattern=r"^[0-9a-f]{1,32}$", description="The run whose models answer.")
    prompt: str | None = Field(
        default=None, min_length=1, max_length=20_000, description="What both models continue or answer."
    )
    messages: list[ChatTurn] | None = Field(
        default=None,
        description="A conversation instead of a prompt, for a run trained on messages rows: an optional system "
        "turn, then user and assistant turns in turn, ending with the user's; formatted with the run's chat "
        f"template. At most {MAX_CHAT_TURNS} turns, {MAX_TURN_CHARS:,} characters a turn, {MAX_CHAT_CHARS:,} in all.",
    )
    base_answers: list[str] | None = Field(
        default=None,
        description="With messages: the base's own earlier answers, one per assistant turn, so each side continues "
        "its own conversation; empty: both sides continue messages as given.",
    )
    compare: str = Field(
        default="adapter",
        pattern=r"^(adapter|merged|checkpoint-[0-9]{1,9})$",
        description="What answers beside the base: the run's adapter, one of its checkpoints (checkpoint-N) "
        "or its merged model.",
    )
    chat: bool | None = Field(
        default=None,
        description="Apply the run's chat template to the prompt; empty: as the run trained, the template for a "
        "messages dataset and none for prompt/completion or text rows. Messages always go through it.",
    )
    temperature: float = Field(default=0.0, ge=0.0, le=5.0, description="0: greedy decoding.")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, description="Nucleus sampling: keep the top_p of the mass.")
    max_new_tokens: int = Field(default=128, ge=1, le=4096, description="Longest answer, in tokens.")
    seed: int = Field(default=0, ge=0, le=2**32 - 1, description="Seed for sampling; the same seed, the same text.")

    @field_validator("prompt")
    @classmethod
    def _visible(cls, value: str | None) -> str | None:
        if value is not None:
            refuse_hidden_characters("prompt", value)
        return value

    @field_validator("messages", mode="before")
    @classmethod
    def _not_too_many_turns(cls, value: Any) -> Any:
        # Before each turn is read: a request of a million turns is refused at once.
        if isinstance(value, list) and len(value) > MAX_CHAT_TURNS:
            raise ValueError(f"at most {MAX_CHAT_TURNS} turns in one conversation, not {len(value)}: start a new chat")
        return value

    @field_validator("messages")
    @classmethod
    def _in_turn(cls, turns: list[ChatTurn] | None) -> list[ChatTurn] | None:
        if turns is None:
            return None
        roles = [turn.role for turn in turns]
        start = 1 if roles[:1] == ["system"] else 0
        for index, role in enumerate(roles[start:], start):
            expected = "user" if (index - start) % 2 == 0 else "assistant"
            if role != expected:
                where = "only the first turn may be system" if role == "system" else f"expected a {expected} turn"
                raise ValueError(f"turn {index + 1} is {role}: {where}; user and assistant turns alternate")
        if len(roles) == start or roles[-1] != "user":
            raise ValueError("the last turn must be the user's: it is what both models answer")
        return turns

    @field_validator("base_answers")
    @classmethod
    def _answers_bounded(cls, answers: list[str] | None) -> list[str] | None:
        if answers is not None and any(len(answer) > MAX_TURN_CHARS for answer in answers):
            raise ValueError(f"an answer is longer than {MAX_TURN_CHARS:,} characters")
        return answers

    @model_validator(mode="after")
    def _prompt_or_conversation(self) -> PlaygroundRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("prompt, messages: give exactly one, a prompt or a conversation (messages)")
        if self.messages is None:
            if self.base_answers is not None:
                raise ValueError("base_answers: only with messages")
            return self
        if self.chat is False:
            raise ValueError("chat: a conversation (messages) is always formatted with the run's chat template")
        answers = sum(turn.role == "assistant" for turn in self.messages)
        if self.base_answers is not None and len(self.base_answers) != answers:
            raise ValueError(
                f"base_answers: give one per assistant turn of messages ({answers}), not {len(self.base_answers)}"
            )
        total = sum(len(turn.content) for turn in self.messages) + sum(map(len, self.base_answers or []))
        if total > MAX_CHAT_CHARS:
            raise ValueError(
                f"messages: the conversation holds {total:,} characters, more than the {MAX_CHAT_CHARS:,} one "
                "request takes: start a new chat"
            )
        return self

    def conversations(self) -> list[list[dict[str, str]]]:
        """The conversation each side continues, base first: with base_answers the base's holds its own
        earlier answers, the other side's those of messages."""
        turns = [turn.model_dump() for turn in self.messages or []]
        if self.base_answers is None:
            return [turns, turns]
        answers = iter(self.base_answers)
        base = [{**turn, "content": next(answers)} if turn["role"] == "assistant" else turn for turn in turns]
        return [base, turns]
