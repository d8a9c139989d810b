"""The parameters of OpenAI's `/v1/chat/completions` and `/v1/completions` bodies, read into a CompletionJob for
the generate worker: what loradeck honours, what it ignores (bookkeeping that changes no answer), and what it
refuses naming the parameter (tool calls, log probabilities, structured output, penalties...), so a script learns at
once what does not work here instead of getting an answer that silently ignored it."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from app.contracts.completions import MAX_PROMPT_CHARS, MAX_STOP_CHARS, MAX_STOPS, CompletionJob
from app.errors import InvalidInput

# Bookkeeping a script may send; nothing in the answer depends on it.
IGNORED = {"user", "metadata", "store", "service_tier", "parallel_tool_calls"}
SAMPLING = ("temperature", "top_p", "seed", "n")
NOT_SUPPORTED = "is not supported by loradeck"


@dataclass
class Parsed:
    job: CompletionJob
    stream: bool
    include_usage: bool


def _refusal(param: str, value: Any) -> str | None:
    """Why a parameter's value is refused, or None when it can be honoured (or ignored)."""
    if value is None:
        return None
    if param in ("tools", "functions"):
        return f"{NOT_SUPPORTED} yet (tool and function calling): send the conversation without it" if value else None
    if param in ("tool_choice", "function_call"):
        return None if value in ("none", "auto") else f"{NOT_SUPPORTED}: no tools can be called"
    if param == "logprobs":
        return f"{NOT_SUPPORTED}: send logprobs false (or leave it out)" if value else None
    if param == "top_logprobs":
        return f"{NOT_SUPPORTED}: leave it out" if value else None
    if param == "logit_bias":
        return f"{NOT_SUPPORTED}: leave it out" if value else None
    if param in ("presence_penalty", "frequency_penalty"):
        return f"{NOT_SUPPORTED}: only 0 (no penalty)" if value != 0 else None
    if param == "response_format":
        kind = value.get("type") if isinstance(value, dict) else value
        return None if kind == "text" else f"only {{'type': 'text'}} is supported, not {kind!r} (no structured output)"
    if param == "echo":
        return f"{NOT_SUPPORTED}: send echo false" if value else None
    if param == "best_of":
        return None if value == 1 else f"{NOT_SUPPORTED}: use n for several answers"
    if param == "suffix":
        return f"{NOT_SUPPORTED} (no insertion): send the prompt only" if value else None
    if param in ("audio", "modalities", "prediction", "web_search_options", "reasoning_effort", "verbosity"):
        return f"{NOT_SUPPORTED}: loradeck answers with text only" if value not in (["text"],) else None
    return f"is not a parameter loradeck knows; it takes {', '.join(KNOWN)}"


KNOWN = ("model", "messages", "prompt", "stream", "stream_options", "max_tokens", "max_completion_tokens", "stop",
         *SAMPLING)  # fmt: skip


def _stops(value: Any) -> list[str]:
    stops = [value] if isinstance(value, str) else value if isinstance(value, list) else None
    if stops is None or not all(isinstance(stop, str) and stop for stop in stops):
        raise InvalidInput.fields({"stop": "give a string or a list of non-empty strings"})
    if len(stops) > MAX_STOPS or any(len(stop) > MAX_STOP_CHARS for stop in stops):
        raise InvalidInput.fields({"stop": f"at most {MAX_STOPS} sequences of {MAX_STOP_CHARS} characters each"})
    return list(stops)


def _content(index: int, content: Any) -> str:
    """A message's text: a string, or a list of text parts (OpenAI's content parts), joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(part, dict) for part in content):
        kinds = {part.get("type") for part in content}
        if kinds <= {"text"}:
            return "".join(str(part.get("text", "")) for part in content)
        other = ", ".join(sorted(str(kind) for kind in kinds - {"text"}))
        raise InvalidInput.fields({f"messages[{index}].content": f"{other} parts {NOT_SUPPORTED}: send text only"})
    raise InvalidInput.fields({f"messages[{index}].content": "give a string or a list of text parts"})


def _messages(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise InvalidInput.fields({"messages": "give a non-empty list of {role, content} messages"})
    turns = []
    for index, message in enumerate(value):
        if not isinstance(message, dict):
            raise InvalidInput.fields({f"messages[{index}]": "give an object with role and content"})
        role = "system" if message.get("role") == "developer" else message.get("role")
        if role not in ("system", "user", "assistant"):
            detail = (
                "tool results are not supported yet" if role == "tool" else "use system, developer, user or assistant"
            )
            raise InvalidInput.fields({f"messages[{index}].role": f"{message.get('role')!r}: {detail}"})
        if message.get("tool_calls") or message.get("function_call"):
            raise InvalidInput.fields({f"messages[{index}].tool_calls": f"{NOT_SUPPORTED} yet"})
        turns.append({"role": str(role), "content": _content(index, message.get("content"))})
    if sum(len(turn["content"]) for turn in turns) > MAX_PROMPT_CHARS:
        raise InvalidInput.fields({"messages": f"more than {MAX_PROMPT_CHARS:,} characters in all: send a shorter one"})
    return turns


def _prompt(value: Any) -> str:
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
        value = value[0]
    if not isinstance(value, str):
        raise InvalidInput.fields({"prompt": "give one prompt as a string (one request per prompt; no token ids)"})
    return value


def parse_body(body: Any, *, chat: bool) -> Parsed:
    """A CompletionJob from a request body, or InvalidInput naming the first parameter that cannot be used."""
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object")
    for param, value in body.items():
        if param in KNOWN or param in IGNORED:
            continue
        if why := _refusal(param, value):
            raise InvalidInput.fields({param: why})
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise InvalidInput.fields({"model": "name the model to answer with (GET /v1/models lists them)"})
    if chat:
        text: dict[str, Any] = {"messages": _messages(body.get("messages"))}
    else:
        text = {"prompt": _prompt(body.get("prompt"))}
    limit = (
        body.get("max_completion_tokens") if body.get("max_completion_tokens") is not None else body.get("max_tokens")
    )
    fields: dict[str, Any] = {name: body[name] for name in SAMPLING if body.get(name) is not None}
    if limit is not None:
        fields["max_tokens"] = limit
    if body.get("stop") is not None:
        fields["stop"] = _stops(body["stop"])
    # No seed: a fresh one, so two requests differ as OpenAI's do; a seed given maps onto the generator's range.
    seed = fields.get("seed")
    fields["seed"] = secrets.randbits(63) if seed is None else seed % 2**63 if isinstance(seed, int) else seed
    try:
        job = CompletionJob.model_validate({"model": body["model"], **text, **fields})
    except ValidationError as exc:
        first = exc.errors()[0]
        name = {"max_tokens": "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"}.get(
            str(first["loc"][0]) if first["loc"] else "", ".".join(str(part) for part in first["loc"])
        )
        raise InvalidInput.fields({name: str(first["msg"])}) from exc
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise InvalidInput.fields({"stream_options": "give an object such as {'include_usage': true}"})
    return Parsed(job=job, stream=bool(body.get("stream")), include_usage=bool(options.get("include_usage")))
