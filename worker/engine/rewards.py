"""The built-in rewards of a GRPO run, computed exactly as app.objectives.rewards.DEFINITIONS states them.

`score` scores one completion by one reward; `reward_functions` makes them TRL GRPOTrainer's reward functions
(one per reward, named for it, so TRL logs `rewards/<function>/mean`); `SampleCollector` keeps the latest
generation batch those functions scored, so the run page can show a handful of what the policy wrote.
No reward runs user code: a user pattern is matched by the `regex` engine with a time bound.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

import regex

from app.contracts.events import SampledCompletion, SamplesEvent
from app.objectives.rewards import NEEDS_REFERENCE, Reward

log = logging.getLogger(__name__)

REGEX_TIMEOUT_S = 0.1  # a match running longer scores 0: `(a|aa)+$` on 40 a's and a b would take hours
SAMPLE_CHARS = 2_000  # the longest prompt, reference or completion text a SamplesEvent carries

RewardFunc = Callable[..., list[float]]


class RewardWarnings:
    """What a run's rewards have warned about: each problem once per reward function and run, not per completion
    (a timing-out pattern would otherwise write a line for each of thousands of completions)."""

    def __init__(self) -> None:
        self.said: set[tuple[str, str]] = set()

    def once(self, function: str, problem: str, message: str) -> None:
        if (function, problem) not in self.said:
            self.said.add((function, problem))
            log.warning("reward %s: %s (said once per run)", function, message)


def score(
    reward: Reward, completion: str, reference: str | None, tokens: int, *, warnings: RewardWarnings | None = None
) -> float:
    """`reward`'s score in [0, 1] of `completion` (`tokens` long) against the row's `reference` answer. Pass one
    `warnings` per run to warn once per problem; without it each problem warns each time."""
    warnings = warnings or RewardWarnings()
    function = reward.function
    if function in NEEDS_REFERENCE and reference is None:
        warnings.once(function, "no reference", "a row has no reference answer to compare with; it scores 0")
        return 0.0
    if function == "json_valid":
        return float(_parse(completion) is not _INVALID)
    if function in ("json_keys", "json_fields"):
        expected = _parse(reference or "")
        if not isinstance(expected, dict):
            warnings.once(function, "reference", "a row's reference answer is not a JSON object; it scores 0")
            return 0.0
        written = _parse(completion)
        if not isinstance(written, dict):
            return 0.0
        if function == "json_keys":
            either = expected.keys() | written.keys()
            return len(expected.keys() & written.keys()) / len(either) if either else 1.0
        return _fields_right(expected, written, reward.field_weights)
    if function == "exact":
        expected, written = _parse(reference or ""), _parse(completion)
        if expected is not _INVALID and written is not _INVALID:
            return float(_same(expected, written))
        return float(completion.strip() == (reference or "").strip())
    if function == "regex":
        return _regex_score(reward.pattern, completion, warnings)
    if function in ("contains", "not_contains"):
        texts = [text for text in reward.texts if text]  # an empty text is in every completion: it says nothing
        share = sum(text in completion for text in texts) / len(texts) if texts else 0.0
        return share if function == "contains" else 1.0 - share
    if function == "length":
        if tokens < reward.min_tokens:
            return tokens / reward.min_tokens
        return 1.0 if tokens <= reward.max_tokens else reward.max_tokens / tokens
    raise ValueError(f"rewards: unknown function {function}")


def weighted(rewards: Sequence[Reward], scores: dict[str, float]) -> float:
    """The reward GRPO trains on: each function's score times its weight, summed (a missing score adds 0, as TRL's
    nansum does)."""
    return sum(reward.weight * scores.get(reward.function, 0.0) for reward in rewards)


def reward_functions(rewards: Sequence[Reward], samples: SampleCollector | None = None) -> list[RewardFunc]:
    """TRL GRPOTrainer's `reward_funcs` for `rewards`, in their order (pass their weights as `reward_weights`).
    TRL calls each once per generation batch with every completion of it; the dataset's `reference` column comes
    as a keyword. `samples`, if given, is handed each function's scores of the batch."""
    warnings = RewardWarnings()  # one per run: reward_functions is called once per trainer
    if samples is not None:
        samples.rewards = list(rewards)
    return [_reward_function(reward, warnings, samples) for reward in rewards]


def _reward_function(reward: Reward, warnings: RewardWarnings, samples: SampleCollector | None) -> RewardFunc:
    def reward_func(
        prompts: list[Any],
        completions: list[Any],
        completion_ids: list[list[int]],
        reference: list[Any] | None = None,
        **_: Any,
    ) -> list[float]:
        references = reference if reference is not None else [None] * len(completions)
        scores = [
            score(reward, message_text(completion), _reference_text(answer), len(ids), warnings=warnings)
            for completion, answer, ids in zip(completions, references, completion_ids, strict=True)
        ]
        if samples is not None:
            samples.record(reward.function, prompts, completions, references, scores)
        return scores

    reward_func.__name__ = reward_func.__qualname__ = reward.function  # TRL names its metric after it
    return reward_func


class SampleCollector:
    """The latest generation batch the reward functions scored: its first prompt, that prompt's completions (the
    batch's first group: TRL writes each prompt's num_generations completions one after the other) and each
    function's scores of them. Memory stays one group of truncated texts, whatever the run's length."""

    def __init__(self, rewards: Sequence[Reward] = ()) -> None:
        self.rewards = list(rewards)  # reward_functions sets them; `weighted` sums their scores
        self._batch: list[Any] | None = None  # the completions list TRL hands every function of one batch
        self._prompt = ""
        self._reference: str | None = None
        self._texts: list[str] = []
        self._scores: dict[str, list[float]] = {}

    def record(
        self, function: str, prompts: list[Any], completions: list[Any], references: list[Any], scores: list[float]
    ) -> None:
        """Called by each reward function. TRL hands every function of one batch the same `completions` list
        object (held here, so its identity cannot be reused by a later list while compared); another list, or a
        function scoring twice, starts a new batch."""
        if completions is not self._batch or function in self._scores:
            self._start(prompts, completions, references)
        self._scores[function] = scores[: len(self._texts)]

    def _start(self, prompts: list[Any], completions: list[Any], references: list[Any]) -> None:
        self._batch = completions
        self._scores = {}
        if not prompts:
            self._prompt, self._reference, self._texts = "", None, []
            return
        group = 1
        while group < len(prompts) and prompts[group] == prompts[0]:
            group += 1
        self._prompt = _tail(prompt_text(prompts[0]))
        answer = _reference_text(references[0]) if references else None
        self._reference = None if answer is None else _head(answer)
        self._texts = [_head(message_text(completion)) for completion in completions[:group]]

    def latest(self, step: int, limit: int = 4) -> SamplesEvent | None:
        """The latest batch's first prompt with up to `limit` of its completions and their rewards, as of `step`;
        None before any batch was scored."""
        if not self._texts:
            return None
        completions = []
        for index, text in enumerate(self._texts[:limit]):
            scores = {name: values[index] for name, values in self._scores.items() if index < len(values)}
            completions.append(SampledCompletion(text=text, reward=weighted(self.rewards, scores), rewards=scores))
        return SamplesEvent(step=step, prompt=self._prompt, reference=self._reference, completions=completions)


def message_text(value: Any) -> str:
    """A completion's or answer's text: a plain string, or a conversational one's messages' contents (TRL hands a
    conversational completion as [{"role": "assistant", "content": ...}]; a content may be a list of parts)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, list):
        return "\n".join(_content(message) for message in value if isinstance(message, dict))
    return "" if value is None else str(value)


def prompt_text(prompt: Any) -> str:
    """A prompt as the run page shows it: a plain prompt as it is; a conversation a "role: content" line each."""
    if isinstance(prompt, list) and len(prompt) > 1:
        return "\n".join(f"{message.get('role', '')}: {_content(message)}" for message in prompt)
    return message_text(prompt)


def _content(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):  # parts: [{"type": "text", "text": ...}, ...]
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content if isinstance(content, str) else ""


def _reference_text(answer: Any) -> str | None:
    """The row's reference answer as text: None stays None (no reference); a conversation gives its last
    assistant turn; a JSON value from a typed column (e.g. a Parquet struct) is written back as JSON."""
    if answer is None or isinstance(answer, str):
        return answer
    if isinstance(answer, list) and answer and all(isinstance(item, dict) and "role" in item for item in answer):
        replies = [message for message in answer if message.get("role") == "assistant"]
        return _content(replies[-1]) if replies else message_text(answer)  # a conversation: its last reply
    return json.dumps(answer)


_INVALID = object()


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _parse(text: str) -> Any:
    """`text` (surrounding whitespace stripped) as one strict JSON value (no NaN or Infinity), or _INVALID."""
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError):  # JSONDecodeError is a ValueError; nesting deeper than Python's stack
        return _INVALID


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON values: true is not 1, 1 is 1.0, objects equal whatever their key order."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[key], b[key]) for key in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def _fields_right(expected: dict[str, Any], written: dict[str, Any], field_weights: dict[str, float]) -> float:
    """The weighted share of `expected`'s fields `written` holds equal; 1 when no field is scored (all weighted 0,
    or an empty reference): a JSON object then has nothing wrong."""
    total = right = 0.0
    for name, value in expected.items():
        weight = field_weights.get(name, 1.0)
        total += weight
        if name in written and _same(written[name], value):  # a null field counts only when written null
            right += weight
    return right / total if total else 1.0


@functools.lru_cache(maxsize=64)
def _compiled(pattern: str) -> regex.Pattern[str]:
    return regex.compile(pattern)


def _regex_score(pattern: str, completion: str, warnings: RewardWarnings) -> float:
    try:
        compiled = _compiled(pattern)
    except regex.error as exc:  # the form checks it with Python's re, whose syntax differs in corners
        warnings.once("regex", "compile", f"pattern {pattern!r} does not compile ({exc}); every completion scores 0")
        return 0.0
    try:
        return float(compiled.search(completion, timeout=REGEX_TIMEOUT_S) is not None)
    except TimeoutError:
        warnings.once(
            "regex",
            "timeout",
            f"pattern {pattern!r} ran past its {REGEX_TIMEOUT_S} s bound on a completion, which scores 0; "
            "a pattern with nested repeats like (a|aa)+ can take for ever, simplify it",
        )
        return 0.0


def _head(text: str) -> str:
    return text if len(text) <= SAMPLE_CHARS else text[:SAMPLE_CHARS] + "…"


def _tail(text: str) -> str:
    """A long prompt's end: where the question is."""
    return text if len(text) <= SAMPLE_CHARS else "…" + text[-SAMPLE_CHARS:]
