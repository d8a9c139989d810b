"""The built-in rewards on fixed strings, each as app.objectives.rewards.DEFINITIONS states it, and their TRL
reward functions called the way GRPOTrainer calls them. No model: these run in `make quick`."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace
from typing import Any

import pytest

from app.objectives.rewards import DEFINITIONS, Reward
from worker.engine.rewards import (
    SAMPLE_CHARS,
    RewardWarnings,
    SampleCollector,
    reward_functions,
    score,
    weighted,
)

# A row of the bundled sample: an address parsed into its fields, some of them null.
ANSWER = json.dumps(
    {"city": "屏東縣", "district": "屏東市", "road": "自由路", "section": None, "lane": "8巷", "number": "343之2號"},
    ensure_ascii=False,
)
FIELDS = json.loads(ANSWER)


def _score(function: str, completion: str, reference: str | None = ANSWER, tokens: int = 0, **params: Any) -> float:
    return score(Reward(function=function, **params), completion, reference, tokens)  # type: ignore[arg-type]


def _written(**changes: Any) -> str:
    """The answer with some fields changed (a value of ... removes the field)."""
    fields = {**FIELDS, **changes}
    return json.dumps({name: value for name, value in fields.items() if value is not ...}, ensure_ascii=False)


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        (ANSWER, 1.0),
        ('  [1, "two", null]\n', 1.0),  # any JSON value, surrounding whitespace stripped
        ('"just a string"', 1.0),
        (ANSWER[:-1], 0.0),  # cut before its closing brace
        (ANSWER + " and more", 0.0),  # one JSON value, nothing after it
        ("{'city': '屏東縣'}", 0.0),  # Python's quotes are not JSON's
        ('{"a": NaN}', 0.0),  # nor is NaN
        ("", 0.0),
        ("[" * 100_000, 0.0),  # deeper than Python's stack
    ],
)
def test_json_valid(completion: str, expected: float) -> None:
    assert _score("json_valid", completion, reference=None) == expected


def test_json_keys_are_the_shared_keys_over_the_keys_in_either() -> None:
    assert _score("json_keys", _written(city="wrong value", section="also wrong")) == 1.0  # keys, not values
    assert _score("json_keys", _written(lane=..., number=...)) == 4 / 6
    assert _score("json_keys", _written(extra="x", more="y")) == 6 / 8  # extra keys cost
    assert _score("json_keys", "[1, 2]") == 0.0
    assert _score("json_keys", ANSWER[:-1]) == 0.0
    assert _score("json_keys", "{}", reference="{}") == 1.0


def test_json_fields_is_the_share_of_fields_right_and_null_counts_only_when_written_null() -> None:
    assert _score("json_fields", ANSWER) == 1.0
    assert _score("json_fields", _written(road="中山路")) == 5 / 6
    assert _score("json_fields", _written(number=343)) == 5 / 6  # the string "343之2號" is not a number
    assert _score("json_fields", _written(section=...)) == 5 / 6  # null in the reference, missing here
    assert _score("json_fields", _written(section="一段")) == 5 / 6
    assert _score("json_fields", _written(extra="x")) == 1.0  # a share of the reference's fields
    assert _score("json_fields", ANSWER[:-1]) == 0.0
    assert _score("json_fields", '"屏東縣"') == 0.0


def test_json_fields_compares_as_json_true_is_not_1_and_key_order_does_not_matter() -> None:
    reference = '{"ok": true, "count": 2, "where": {"lat": 1.5, "lon": 2}}'
    assert _score("json_fields", '{"where": {"lon": 2.0, "lat": 1.5}, "count": 2.0, "ok": true}', reference) == 1.0
    assert _score("json_fields", '{"ok": 1, "count": true, "where": {"lat": 1.5}}', reference) == 0.0


def test_json_fields_weighs_each_field_by_field_weights() -> None:
    weights = {"city": 3.0, "section": 0.0}  # the others weigh 1; section is not scored
    assert _score("json_fields", _written(city="台北市"), field_weights=weights) == 4 / 7
    assert _score("json_fields", _written(road="x", section="一段"), field_weights=weights) == 6 / 7
    assert _score("json_fields", '{"a": 1}', reference='{"a": 2}', field_weights={"a": 0.0, "b": 1.0}) == 1.0


def test_a_reference_that_is_not_a_json_object_scores_0_and_is_said_once(caplog: pytest.LogCaptureFixture) -> None:
    warnings = RewardWarnings()
    for function in ("json_keys", "json_fields"):
        for reference in ("屏東縣", "[1, 2]", "屏東縣"):
            assert score(Reward(function=function), '{"a": 1}', reference, 5, warnings=warnings) == 0.0  # type: ignore[arg-type]
    said = _warnings(caplog)
    assert len(said) == 2, said  # once per function
    assert "json_keys" in said[0] and "not a JSON object" in said[0]


def test_a_reward_needing_a_reference_scores_0_without_one() -> None:
    for function in ("json_keys", "json_fields", "exact"):
        assert _score(function, ANSWER, reference=None) == 0.0


def test_exact_compares_json_values_when_both_parse_else_the_stripped_text() -> None:
    assert _score("exact", json.dumps(FIELDS, indent=2, ensure_ascii=False)) == 1.0  # spacing
    assert _score("exact", json.dumps(dict(reversed(FIELDS.items())), ensure_ascii=False)) == 1.0  # key order
    assert _score("exact", _written(section="一段")) == 0.0
    assert _score("exact", '{"n": 1.0, "ok": true}', '{"ok": true, "n": 1}') == 1.0
    assert _score("exact", '{"ok": 1}', '{"ok": true}') == 0.0
    assert _score("exact", "[1, 2]", "[2, 1]") == 0.0
    assert _score("exact", "  Paris\n", "Paris") == 1.0
    assert _score("exact", "paris", "Paris") == 0.0
    assert _score("exact", "Paris, France", "Paris") == 0.0


def test_regex_matches_anywhere_unless_anchored() -> None:
    assert _score("regex", "built in 2024.", pattern=r"\d{4}") == 1.0
    assert _score("regex", "built in 2024.", pattern=r"^\d{4}$") == 0.0
    assert _score("regex", ANSWER, pattern=r"^\{.*\}$") == 1.0
    assert _score("regex", "no digits", pattern=r"\d") == 0.0


def test_a_regex_that_backtracks_for_ever_stops_at_its_bound_scores_0_and_warns_once_per_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Nested repeats of alternatives try 2^40 ways to split the a's before the b fails the match. (The `regex`
    # engine defuses the textbook `(a+)+$` by itself; this one it cannot.)
    reward = Reward(function="regex", pattern="(a|aa)+$")
    completions = ["a" * 40 + "b", "a" * 40 + "b", "aaa"]
    for _ in range(2):  # two runs: each warns once
        (regex,) = reward_functions([reward])
        assert regex(prompts=["p"] * 3, completions=completions, completion_ids=[[1]] * 3) == [0.0, 0.0, 1.0]
    said = _warnings(caplog)
    assert len(said) == 2, said
    assert "(a|aa)+$" in said[0] and "0.1 s" in said[0]


def test_contains_and_not_contains_are_shares_of_the_texts_found_case_sensitively() -> None:
    texts = ["屏東縣", "自由路"]
    for completion, share in [(ANSWER, 1.0), ('{"city": "屏東縣"}', 0.5), ("台北市", 0.0)]:
        assert _score("contains", completion, texts=texts) == share
        assert _score("not_contains", completion, texts=texts) == 1.0 - share
    assert _score("contains", "Paris", texts=["paris"]) == 0.0
    assert _score("contains", "Paris", texts=["London", ""]) == 0.0  # an empty text, found in all, is no test


def test_length_is_1_within_its_range_and_falls_off_outside() -> None:
    (length,) = reward_functions([Reward(function="length", min_tokens=4, max_tokens=8)])
    ids = [[7] * tokens for tokens in (0, 2, 4, 6, 8, 16)]  # TRL's completion_ids: the length is theirs
    assert length(prompts=["p"] * 6, completions=["x"] * 6, completion_ids=ids) == [0.0, 0.5, 1.0, 1.0, 1.0, 0.5]
    assert _score("length", "", tokens=0, min_tokens=0, max_tokens=3) == 1.0


def test_conversational_completions_and_references_are_scored_by_their_text() -> None:
    rewards = [Reward(function="exact"), Reward(function="contains", texts=["自由路"])]
    prompts = [[{"role": "system", "content": "Answer in JSON."}, {"role": "user", "content": "解析地址：屏東縣"}]] * 2
    completions = [[{"role": "assistant", "content": ANSWER}], [{"role": "assistant", "content": "不知道"}]]
    reference = [[{"role": "user", "content": "q"}, {"role": "assistant", "content": ANSWER}]] * 2
    samples = SampleCollector()
    exact, contains = reward_functions(rewards, samples)
    assert exact(prompts=prompts, completions=completions, completion_ids=[[1], [1]], reference=reference) == [1, 0]
    assert contains(prompts=prompts, completions=completions, completion_ids=[[1], [1]]) == [1.0, 0.0]
    event = samples.latest(step=1)
    assert event is not None
    assert event.prompt == "system: Answer in JSON.\nuser: 解析地址：屏東縣"
    assert event.reference == ANSWER
    assert [sample.text for sample in event.completions] == [ANSWER, "不知道"]


def test_the_collector_keeps_the_first_group_of_the_latest_batch_with_each_functions_scores() -> None:
    rewards = [Reward(function="json_valid", weight=0.5), Reward(function="exact", weight=2.0)]
    samples = SampleCollector()
    assert samples.latest(step=0) is None
    functions = reward_functions(rewards, samples)

    def batch(prompts: list[str], completions: list[str]) -> None:
        references = [ANSWER if prompt == "first" else "{}" for prompt in prompts]
        for function in functions:  # as TRL does: each function once, on the same lists
            function(
                prompts=prompts, completions=completions, completion_ids=[[1]] * len(prompts), reference=references
            )

    # Two prompts, three generations each, one after the other.
    batch(["first"] * 3 + ["second"] * 3, [ANSWER, "oops", "{}", ANSWER, ANSWER, ANSWER])
    event = samples.latest(step=3, limit=2)
    assert event is not None
    assert (event.step, event.prompt, event.reference) == (3, "first", ANSWER)
    assert [(sample.text, sample.rewards, sample.reward) for sample in event.completions] == [
        (ANSWER, {"json_valid": 1.0, "exact": 1.0}, 2.5),
        ("oops", {"json_valid": 0.0, "exact": 0.0}, 0.0),
    ]
    event = samples.latest(step=3, limit=10)
    assert event is not None and [sample.reward for sample in event.completions] == [2.5, 0.0, 0.5]  # its group

    # The next batch replaces it; a long completion comes truncated.
    batch(["second"] * 2, ["x" * 50_000, "{}"])
    event = samples.latest(step=4)
    assert event is not None
    assert event.prompt == "second" and event.reference == "{}"
    assert [len(sample.text) for sample in event.completions] == [SAMPLE_CHARS + 1, 2]
    assert event.completions[1].rewards == {"json_valid": 1.0, "exact": 1.0}


def test_a_function_scoring_again_starts_a_new_batch_even_on_the_same_list() -> None:
    samples = SampleCollector()
    (valid,) = reward_functions([Reward(function="json_valid")], samples)
    prompts, completions = ["p", "p"], ["{}", "x"]
    valid(prompts=prompts, completions=completions, completion_ids=[[1], [1]])
    completions[1] = "[]"  # a list TRL would not reuse; were it reused, the new scores are the ones shown
    valid(prompts=prompts, completions=completions, completion_ids=[[1], [1]])
    event = samples.latest(step=2)
    assert event is not None
    assert [(sample.text, sample.reward) for sample in event.completions] == [("{}", 1.0), ("[]", 1.0)]


def test_weighted_is_the_sum_of_weight_times_score() -> None:
    rewards = [Reward(function="json_fields", weight=2.0), Reward(function="exact", weight=0.5)]
    assert weighted(rewards, {"json_fields": 0.75, "exact": 1.0}) == 2.0
    assert weighted(rewards, {"json_fields": 0.75}) == 1.5


def test_trl_names_each_function_after_its_reward_and_calls_it_with_the_batch_and_dataset_columns() -> None:
    """TRL's own GRPOTrainer._calculate_rewards runs our functions, on a stand-in for the trainer's state (no
    model): the keywords it passes (trainer_state, log_extra, log_metric, the dataset's columns) are accepted."""
    from trl.trainer.grpo_trainer import GRPOTrainer
    from trl.trainer.utils import get_callable_name

    rewards = [Reward(function=name) for name in ("json_valid", "json_fields", "exact")]  # type: ignore[arg-type]
    rewards.append(Reward(function="length", min_tokens=1, max_tokens=2))
    functions = reward_functions(rewards, SampleCollector())
    assert [get_callable_name(function) for function in functions] == [reward.function for reward in rewards]
    assert set(DEFINITIONS) >= {get_callable_name(function) for function in functions}

    trainer = SimpleNamespace(
        accelerator=SimpleNamespace(device="cpu", is_main_process=True),
        args=SimpleNamespace(report_to=[]),
        reward_funcs=functions,
        reward_processing_classes=[None] * len(functions),
        reward_func_names=[get_callable_name(function) for function in functions],
        state=SimpleNamespace(global_step=0),
        _log_completion_extra=lambda *args, **kwargs: None,
        _log_metric=lambda *args, **kwargs: None,
        environments=None,
    )
    inputs = [{"prompt": "解析地址", "reference": ANSWER, "row_id": n} for n in range(2)]
    completions = [ANSWER, _written(road="x") + "!"]
    scores = GRPOTrainer._calculate_rewards(trainer, inputs, ["解析地址"] * 2, completions, [[1, 2], [1, 2, 3]])  # type: ignore[arg-type]
    assert scores.tolist() == [[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, pytest.approx(2 / 3)]]  # float32
