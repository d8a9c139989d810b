"""OpenAI's completions on the generate worker: one model (a base, a base with a run's adapter or checkpoint, or a
merged model) answers `n` times, one choice after another, each piece of text published to the request's stream.

The model comes from the playground's ModelCache (worker.serving.generate), so a base loaded for the playground or an
earlier request is reused, adapters attached by name; decoding is the playground's `SideDecoder` (KV cache, greedy at
temperature 0, seeded sampling otherwise), so an answer here is the playground's answer for the same settings.
Stop sequences are cut here: text that might be the start of a stop sequence is held back until it is not, so no
piece of a stop sequence is ever sent, and the streamed text and the whole one are the same.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis
import torch
from transformers import PreTrainedTokenizerBase

from app import playground
from app.config import get_settings
from app.contracts.completions import (
    COMPLETION_EVENTS,
    ChoiceDone,
    CompletedEvent,
    CompletionJob,
    FailedEvent,
    PromptEvent,
)
from app.contracts.events import LiveEvent, TokenEvent
from app.db import get_sessionmaker
from app.errors import InvalidInput, NotFound
from app.preflight import check_inputs
from app.queue import release_completion
from app.schemas import RunSpec
from app.services.openai_models import Target, resolve_model
from worker.data.encode import encode_prompt
from worker.serving.conversation import conversation_ids
from worker.serving.decoding import eos_ids
from worker.serving.generate import ModelCache, Sampling, Side, SideDecoder, model_cache

log = logging.getLogger(__name__)


def held_back(text: str, stops: Sequence[str]) -> int:
    """How many characters at the end of `text` could be the start of a stop sequence."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """The text up to the first stop sequence (True), or the part of it that cannot become one (False)."""
    found = [index for stop in stops if (index := text.find(stop)) >= 0]
    if found:
        return text[: min(found)], True
    return text[: len(text) - held_back(text, stops)], False


@dataclass
class Answer:
    text: str
    finish_reason: str  # stop | length
    tokens: int


def decode_one(
    side: Side,
    tokenizer: PreTrainedTokenizerBase,
    prompt: torch.Tensor,
    sampling: Sampling,
    stops: Sequence[str],
    on_text: Callable[[str], None],
) -> Answer:
    """One answer of one model: decoded a token at a time, cut at the first stop sequence; `on_text` gets each
    new piece. finish_reason `length` when it ran to `max_new_tokens`, else `stop` (end of sequence, stop text)."""
    decoder = SideDecoder(side, prompt, sampling, eos_ids(tokenizer))
    sent = ""
    while not decoder.done:
        decoder.step()
        text = str(tokenizer.decode(decoder.ids, skip_special_tokens=True))
        if text.endswith("\ufffd") and not decoder.done:
            continue  # inside a multi-byte character
        shown, stopped = cut_at_stop(text, stops)
        if decoder.done and not stopped:
            shown = text  # nothing more comes: what was held back is the answer's end
        if len(shown) > len(sent) and shown.startswith(sent):
            on_text(shown[len(sent) :])
            sent = shown
        if stopped:
            return Answer(sent, "stop", len(decoder.ids))
    length = len(decoder.ids) >= sampling.max_new_tokens
    return Answer(sent, "length" if length else "stop", len(decoder.ids))


def decode_choices(
    side: Side,
    tokenizer: PreTrainedTokenizerBase,
    prompt: torch.Tensor,
    job: CompletionJob,
    on_text: Callable[[int, str], None],
    *,
    max_new_tokens: int | None = None,
) -> list[Answer]:
    """`job.n` answers, choice i sampled with seed + i (at temperature 0 they are all the greedy answer)."""
    answers = []
    for index in range(job.n):
        sampling = Sampling(job.temperature, job.top_p, max_new_tokens or job.max_tokens, job.seed + index)
        answers.append(decode_one(side, tokenizer, prompt, sampling, job.stop, functools.partial(on_text, index)))
    return answers


def load_side(target: Target, cache: ModelCache) -> tuple[Side, PreTrainedTokenizerBase]:
    """The model a target answers with, loaded (or found loaded) in the cache."""
    settings = get_settings()
    spec = check_inputs(RunSpec(base_model=target.base_model), settings, fields=("base_model",))
    if target.merged_dir is not None:
        merged = cache.merged(target.merged_dir, spec)
        return Side("merged", merged.model, None), merged.tokenizer
    base = cache.base(spec)
    if target.adapter_dir is None:
        return Side("base", base.model, None), base.tokenizer
    model, name = cache.with_adapter(base, target.adapter_dir)
    return Side("fine-tune", model, name), base.tokenizer


def prompt_of(job: CompletionJob, target: Target, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The ids the model is given: messages through its chat template, as its run trained; a prompt as it is."""
    if job.messages is not None:
        return conversation_ids(tokenizer, target.chat_template, [turn.model_dump() for turn in job.messages])
    return encode_prompt(tokenizer, job.prompt or "")


def context_size(model: Any) -> int | None:
    config = getattr(model, "config", None)
    size = getattr(config, "max_position_embeddings", None)
    return int(size) if isinstance(size, int) else None


def answer_completion(request_id: str, payload: dict[str, Any]) -> None:
    """Answer one OpenAI completion request, publishing its events; never raises (the web reads the error)."""
    settings = get_settings()
    client = redis.Redis.from_url(settings.redis_url)

    def publish(event: LiveEvent) -> None:
        playground.publish(client, request_id, event, COMPLETION_EVENTS)

    try:
        job = CompletionJob.model_validate(payload)
        cache = model_cache()
        with cache.lock:
            with get_sessionmaker()() as session:  # resolved again: deleted or moved since it was queued?
                target = resolve_model(session=session, settings=settings, model_id=job.model)
            side, tokenizer = load_side(target, cache)
            ids = prompt_of(job, target, tokenizer)
            limit = job.max_tokens
            if (size := context_size(side.model)) is not None:
                if len(ids) >= size:
                    param = "messages" if job.messages is not None else "prompt"
                    message = f"{param}: the prompt is {len(ids)} tokens; {job.model} reads at most {size}"
                    publish(FailedEvent(kind="invalid", message=message, param=param))
                    return
                limit = min(limit, size - len(ids))
            publish(PromptEvent(prompt_tokens=len(ids)))
            prompt = torch.tensor([ids], device=side.model.device)
            answers = decode_choices(
                side,
                tokenizer,
                prompt,
                job,
                lambda index, text: publish(TokenEvent(side=index, text=text)),
                max_new_tokens=limit,
            )
        choices = [ChoiceDone(**dataclasses.asdict(answer)) for answer in answers]
        publish(CompletedEvent(choices=choices, prompt_tokens=len(ids)))
    except NotFound as exc:
        publish(FailedEvent(kind="not_found", message=str(exc), param="model"))
    except InvalidInput as exc:
        publish(FailedEvent(kind="invalid", message=str(exc)))
    except Exception as exc:
        log.exception("completion %s failed", request_id)
        publish(FailedEvent(kind="server", message=f"{type(exc).__name__}: {exc}"))
    finally:
        release_completion(client, request_id)
        client.close()
