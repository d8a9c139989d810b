"""The playground: a prompt answered by a run's base and its adapter (or a checkpoint, or the merged model), side
by side. Generation runs on a `generate` worker, never in the web process; its text comes back as a Redis
Stream per request (app.playground)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio as aioredis
from sqlalchemy.orm import Session

from app import playground, runs
from app.config import Settings
from app.contracts.evaluation import evaluation_of
from app.contracts.playground import MAX_CHAT_CHARS, MAX_CHAT_TURNS, MAX_TURN_CHARS, PlaygroundRequest
from app.dataset_shapes import trains_with_chat
from app.errors import Conflict, InvalidInput, NotFound
from app.models import ArtifactKind, ArtifactStatus, Run, RunStatus
from app.queue import enqueue_generation, reaching_redis
from app.rundir import RunDir


@dataclass
class Choice:
    value: str  # what PlaygroundRequest.compare takes
    label: str


def choices(*, session: Session, settings: Settings, run_id: str) -> list[Choice]:
    """What can answer beside the base: the adapter of a succeeded run (or one taken from a checkpoint), its
    checkpoints, its merged model."""
    run = runs.get_run(session=session, run_id=run_id)
    found = []
    if run.status == RunStatus.succeeded or (
        RunStatus(run.status).finished and runs.has_adapter(session=session, run_id=run_id)
    ):
        found.append(Choice("adapter", "adapter (the run's result)"))
    found += [Choice(c.name, f"checkpoint of step {c.step}") for c in RunDir.of(run_id, settings).checkpoints()]
    merged = [
        a
        for a in runs.list_artifacts(session=session, run_id=run_id)
        if a.kind == ArtifactKind.merged and a.status == ArtifactStatus.ready
    ]
    if merged:
        found.append(Choice("merged", "merged model"))
    return found


def trained_with_chat(spec: dict[str, Any]) -> bool:
    """Whether the run's rows went through the chat template: messages rows do, prompt/completion and text
    rows do not. The playground prompts the same way by default, so the adapter sees what it learned."""
    return trains_with_chat(str(spec.get("dataset", "")))


def eval_examples(run: Run) -> list[dict[str, str]]:
    """Eval rows with their expected answers, for "Try an eval row": those the evaluation answered."""
    evaluation = evaluation_of(run.evaluation)
    return [{"prompt": e.prompt, "expected": e.expected} for e in (evaluation.examples if evaluation else [])]


def defaults_for(run: Run) -> PlaygroundRequest:
    """The form's starting values: the request a user who changes nothing sends."""
    return PlaygroundRequest(run_id=run.id, prompt="x", chat=trained_with_chat(run.spec))


@dataclass
class ChatBounds:
    """What one conversation may hold (PlaygroundRequest's bounds), for the page to say before the server does."""

    turns: int = MAX_CHAT_TURNS
    turn_chars: int = MAX_TURN_CHARS
    chars: int = MAX_CHAT_CHARS


@dataclass
class Started:
    id: str
    events: str  # the URL of its server-sent events


def start_generation(*, session: Session, settings: Settings, request: PlaygroundRequest) -> Started:
    """Queue a prompt, or a conversation's next turn, for the run's base and the chosen model."""
    if request.chat is None or request.messages is not None:
        chat = trained_with_chat(runs.get_run(session=session, run_id=request.run_id).spec)
        if request.messages is not None and not chat:
            # Its template was never trained: a conversation would be formatted in a way the adapter never saw.
            raise InvalidInput.fields(
                {"messages": "this run trained on prompt/completion or text rows, not on messages: send a prompt"}
            )
        request = request.model_copy(update={"chat": chat})
    offered = [choice.value for choice in choices(session=session, settings=settings, run_id=request.run_id)]
    if request.compare not in offered:
        have = ", ".join(offered) or "nothing yet (wait for a checkpoint or the end of the run)"
        raise Conflict(f"compare: this run has no {request.compare}; it has {have}")
    generation_id = playground.new_generation_id()
    with reaching_redis("the prompt was not queued"):
        # From now on its events page knows the id, and answers 404 for any other.
        with redis.Redis.from_url(settings.redis_url, socket_timeout=5) as client:
            client.set(playground.known_key(generation_id), 1, ex=playground.KEEP_S)
        enqueue_generation(generation_id, request)
    return Started(id=generation_id, events=f"/api/v1/playground/{generation_id}/events")


async def generation_stream(client: aioredis.Redis, generation_id: str) -> str:
    """The Redis Stream of a request this web queued (NotFound for any other id)."""
    unknown = NotFound(f"no playground request with id {generation_id} (answers are kept an hour)")
    if not generation_id.isalnum() or len(generation_id) > 32:
        raise unknown
    key = playground.stream_key(generation_id)
    with reaching_redis("the answer cannot be read"):
        if not await client.exists(key, playground.known_key(generation_id)):
            raise unknown
    return key
