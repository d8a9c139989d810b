"""The playground's generation: two models answer one prompt in lockstep, token by token.

Side 0 is always the run's base; side 1 is its adapter, one of its checkpoints, or its merged model. Both
decode in one loop, a token of each in turn, so their answers grow side by side on the page. In a chat each
side is given its own conversation (worker.serving.conversation), so their prompts may differ. Each token's
text goes to the request's Redis Stream (`app.playground`). Greedy decoding gives exactly the text of the
plain greedy loop without a cache (`worker.serving.decoding.reference_greedy`), for every method: the same
argmax of the same logits, a KV cache (`worker.serving.decoding.CachedLM`) only saving the work.

Models stay loaded between requests (`ModelCache`): a base is loaded once per worker while in use, with
the run's adapters and checkpoints attached to it by name; an idle model is let go after a while. OpenAI's
completions (worker.serving.completions) share the cache and `SideDecoder`, one model a request.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

from app import playground, runs
from app.config import get_settings
from app.contracts.events import AnsweredEvent, ErrorEvent, StartEvent, TokenEvent
from app.contracts.playground import PlaygroundRequest
from app.db import get_sessionmaker
from app.errors import InvalidInput
from app.models import ArtifactKind, ArtifactStatus
from app.preflight import check_inputs, stored_spec
from app.rundir import RunDir
from app.schemas import RunSpec
from worker.data.hub import model_source
from worker.engine.configs import model_dtype, quantization_config
from worker.serving.conversation import prompt_ids
from worker.serving.decoding import CachedLM, eos_ids

log = logging.getLogger(__name__)


@dataclass
class Side:
    """One answering model: `model` with `adapter` active (None: every adapter off, the bare base)."""

    label: str
    model: Any
    adapter: str | None

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        if not isinstance(self.model, PeftModel):
            yield
        elif self.adapter is None:
            with self.model.disable_adapter():
                yield
        else:
            self.model.set_adapter(self.adapter)
            yield


@dataclass
class Sampling:
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    max_new_tokens: int = 128
    seed: int = 0


class SideDecoder:
    """One side's decoding state: its KV cache (`CachedLM`, which holds a prompt-tuning adapter's virtual
    tokens too), the ids so far, and the text already sent."""

    def __init__(self, side: Side, prompt_ids: torch.Tensor, sampling: Sampling, eos_ids: set[int]) -> None:
        self.side, self.sampling, self.eos_ids = side, sampling, eos_ids
        self.next_input = prompt_ids
        self.forward: CachedLM | None = None  # made at the first step, with the side's adapter on
        self.ids: list[int] = []
        self.sent = ""
        self.done = False
        self.generator = torch.Generator(device=prompt_ids.device).manual_seed(sampling.seed)
        warpers: list[Any] = []
        if sampling.temperature > 0:
            warpers.append(TemperatureLogitsWarper(sampling.temperature))
            if sampling.top_p < 1.0:
                warpers.append(TopPLogitsWarper(sampling.top_p))
        self.warpers = warpers

    @torch.no_grad()
    def step(self) -> None:
        with self.side.active():
            if self.forward is None:
                self.forward = CachedLM(self.side.model)
            logits = self.forward(self.next_input)
        if self.sampling.temperature > 0:
            for warp in self.warpers:
                logits = warp(self.next_input, logits)
            token = int(torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=self.generator).item())
        else:
            token = int(logits.argmax(dim=-1).item())
        self.next_input = torch.tensor([[token]], device=self.next_input.device)
        if token in self.eos_ids:
            self.done = True
            return
        self.ids.append(token)
        if len(self.ids) >= self.sampling.max_new_tokens:
            self.done = True

    def new_text(self, tokenizer: PreTrainedTokenizerBase) -> str:
        """The text added since the last call; held back while it ends inside a multi-byte character."""
        text = str(tokenizer.decode(self.ids, skip_special_tokens=True))
        if text.endswith("\ufffd") and not self.done:
            return ""
        delta, self.sent = text[len(self.sent) :], text
        return delta


def decode_lockstep(
    sides: list[Side],
    tokenizer: PreTrainedTokenizerBase,
    prompt_ids: torch.Tensor | Sequence[torch.Tensor],
    sampling: Sampling,
    on_text: Callable[[int, str], None],
) -> list[str]:
    """Decode every side a token at a time in turn; `on_text(side, text)` gets each new piece of text.
    `prompt_ids`: one prompt for every side, or one per side (each continuing its own conversation)."""
    prompts = [prompt_ids] * len(sides) if isinstance(prompt_ids, torch.Tensor) else list(prompt_ids)
    stop = eos_ids(tokenizer)
    decoders = [SideDecoder(side, ids, sampling, stop) for side, ids in zip(sides, prompts, strict=True)]
    while not all(decoder.done for decoder in decoders):
        for index, decoder in enumerate(decoders):
            if decoder.done:
                continue
            decoder.step()
            if text := decoder.new_text(tokenizer):
                on_text(index, text)
    return [decoder.sent for decoder in decoders]


@dataclass
class _Loaded:
    model: Any
    tokenizer: PreTrainedTokenizerBase
    adapters: dict[str, str]  # adapter dir -> adapter name inside the PeftModel
    used_at: float


class ModelCache:
    """Loaded models, each loaded at most once while in use: a base (with the adapters attached to it) or
    a merged model, keyed by path and quantization. The least recently used goes first when more than
    `capacity` are held; any unused for `idle_s` goes at the next request."""

    def __init__(self, *, capacity: int, idle_s: float) -> None:
        self.capacity, self.idle_s = capacity, idle_s
        self.loaded: OrderedDict[tuple[str, str], _Loaded] = OrderedDict()
        self.loads = 0  # how many times a model was read from disk (tests check the reuse)
        self.lock = threading.Lock()

    def base(self, spec: RunSpec) -> _Loaded:
        """The base the run ships against, as the evaluation answers on it: in full precision, even for a
        run trained on a 4-bit or 8-bit copy (the merged download is that base plus the adapter). Where it
        does not fit in the GPU's memory, the copy as trained."""
        return self._get((spec.base_model, "shipped"), lambda: _load_shipped_base(spec))

    def merged(self, path: Path, spec: RunSpec) -> _Loaded:
        return self._get((str(path), "merged"), lambda: _load(str(path), spec, as_trained=False))

    def with_adapter(self, loaded: _Loaded, adapter_dir: Path) -> tuple[Any, str]:
        """The base with the adapter at adapter_dir attached (once), and the adapter's name in it."""
        key = str(adapter_dir)
        if key not in loaded.adapters:
            name = f"a{len(loaded.adapters)}"
            if isinstance(loaded.model, PeftModel):
                loaded.model.load_adapter(key, adapter_name=name, is_trainable=False)
            else:
                loaded.model = PeftModel.from_pretrained(loaded.model, key, adapter_name=name, is_trainable=False)
            loaded.model.eval()
            loaded.adapters[key] = name
            self.loads += 1
        return loaded.model, loaded.adapters[key]

    def _get(self, key: tuple[str, str], load: Callable[[], tuple[Any, PreTrainedTokenizerBase]]) -> _Loaded:
        now = time.monotonic()
        for stale in [k for k, v in self.loaded.items() if now - v.used_at > self.idle_s and k != key]:
            self._drop(stale)
        if key not in self.loaded:
            while len(self.loaded) >= max(1, self.capacity):
                self._drop(next(iter(self.loaded)))
            model, tokenizer = load()
            self.loads += 1
            self.loaded[key] = _Loaded(model=model, tokenizer=tokenizer, adapters={}, used_at=now)
        self.loaded.move_to_end(key)
        entry = self.loaded[key]
        entry.used_at = now
        return entry

    def _drop(self, key: tuple[str, str]) -> None:
        log.info("playground: letting go of %s", key[0])
        del self.loaded[key]
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _device() -> str:
    return "cuda:0" if torch.cuda.is_available() else "cpu"


def _load(path: str, spec: RunSpec, *, as_trained: bool) -> tuple[Any, PreTrainedTokenizerBase]:
    """A model for generation and the run's tokenizer: the base quantized as the run trained it
    (as_trained), or a model (the base, a merged model) in the dtype it was saved in."""
    trust = get_settings().allow_trust_remote_code
    log.info("playground: loading %s", path)
    kwargs: dict[str, Any] = {"dtype": "auto"}
    if as_trained:
        kwargs = {"dtype": model_dtype(spec), "quantization_config": quantization_config(spec)}
    model = AutoModelForCausalLM.from_pretrained(
        path, device_map={"": _device()}, trust_remote_code=trust, use_safetensors=True, **kwargs
    )
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(model_source(spec.base_model), trust_remote_code=trust)
    return model, tokenizer


def _load_shipped_base(spec: RunSpec) -> tuple[Any, PreTrainedTokenizerBase]:
    try:
        return _load(spec.base_model, spec, as_trained=False)
    except torch.OutOfMemoryError:
        log.warning("playground: the full-precision base of %s does not fit; loading it as trained", spec.base_model)
        gc.collect()
        torch.cuda.empty_cache()
        return _load(spec.base_model, spec, as_trained=True)


_cache: ModelCache | None = None


def model_cache() -> ModelCache:
    global _cache
    if _cache is None:
        settings = get_settings()
        _cache = ModelCache(capacity=settings.playground_models, idle_s=settings.playground_idle_s)
    return _cache


def _sides(request: PlaygroundRequest, cache: ModelCache) -> tuple[list[Side], PreTrainedTokenizerBase, RunSpec]:
    """Base and the chosen other side of the request's run, loaded (or found loaded), and the run's spec."""
    settings = get_settings()
    with get_sessionmaker()() as session:
        run = runs.get_run(session=session, run_id=request.run_id)
        # The base is read: it must still be there, under the allowed roots.
        spec = check_inputs(stored_spec(run.spec), settings, fields=("base_model",))
        merged = None
        if request.compare == "merged":
            ready = [
                artifact
                for artifact in runs.list_artifacts(session=session, run_id=run.id)
                if artifact.kind == ArtifactKind.merged and artifact.status == ArtifactStatus.ready
            ]
            merged = ready[-1] if ready else None  # the newest
            if merged is None:
                raise playground.PlaygroundError("this run has no merged model yet: merge it on the run page first")
            merged_dir = RunDir.of(run.id, settings).merged_dir  # where the merge puts it (its artifact's path)
    if request.compare == "merged":
        other = cache.merged(merged_dir, spec)
        base = cache.base(spec)  # with capacity 1 the cache lets the merged model go; this request still holds it
        return [Side("base", base.model, None), Side("merged", other.model, None)], base.tokenizer, spec
    base = cache.base(spec)
    run_dir = RunDir.of(request.run_id, settings)
    adapter_dir = run_dir.adapter_dir if request.compare == "adapter" else run_dir.checkpoint_dir(request.compare)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise playground.PlaygroundError(f"no {request.compare} for this run (nothing at {adapter_dir.name})")
    model, name = cache.with_adapter(base, adapter_dir)
    return [Side("base", model, None), Side(request.compare, model, name)], base.tokenizer, spec


def run_playground(generation_id: str, payload: dict[str, Any]) -> None:
    """Answer one playground request, publishing every piece of text to the request's stream."""
    settings = get_settings()
    client = redis.Redis.from_url(settings.redis_url)
    try:
        request = PlaygroundRequest.model_validate(payload)
        cache = model_cache()
        with cache.lock:
            sides, tokenizer, spec = _sides(request, cache)
            given = prompt_ids(tokenizer, spec.chat_template, request)
            ids = [torch.tensor([side_ids], device=sides[0].model.device) for side_ids in given]
            shown = [str(tokenizer.decode(side_ids)) for side_ids in given]
            playground.publish(client, generation_id, StartEvent(sides=[side.label for side in sides], prompts=shown))
            sampling = Sampling(request.temperature, request.top_p, request.max_new_tokens, request.seed)
            started = time.perf_counter()
            texts = decode_lockstep(
                sides,
                tokenizer,
                ids,
                sampling,
                lambda side, text: playground.publish(client, generation_id, TokenEvent(side=side, text=text)),
            )
        seconds = round(time.perf_counter() - started, 3)
        playground.publish(client, generation_id, AnsweredEvent(texts=texts, seconds=seconds))
    except (playground.PlaygroundError, InvalidInput) as exc:
        playground.publish(client, generation_id, ErrorEvent(message=str(exc)))
    except Exception as exc:
        log.exception("playground request %s failed", generation_id)
        playground.publish(client, generation_id, ErrorEvent(message=f"{type(exc).__name__}: {exc}"))
    finally:
        client.close()
