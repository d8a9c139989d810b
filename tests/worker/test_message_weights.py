"""OpenAI's `weight` on assistant turns: 0 keeps a turn as context (labels -100 over its tokens), 1 or none trains
it; the dataset check refuses weights it cannot honour and rows left with nothing to learn, naming the line; a
real run of the tiny model trains on such a file, on fewer tokens than without the weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from app.config import TINY_MODEL_DIR
from app.models import RunStatus
from tests.worker.conftest import TRAIN, run_spec, train_run
from worker.data.chat import IGNORE_INDEX, encode_conversation, render_chat, resolve_chat_template
from worker.data.describe import describe_dataset
from worker.data.encode import encode_row_prompt, load_training_data
from worker.data.files import Row, read_rows, validate_dataset

SYSTEM = {"role": "system", "content": "You answer in one word."}
CHAT = [
    SYSTEM,
    {"role": "user", "content": "Capital of France?"},
    {"role": "assistant", "content": "Paris"},
    {"role": "user", "content": "And of Japan?"},
    {"role": "assistant", "content": "Tokyo"},
]


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(TINY_MODEL_DIR)


def weighted(messages: list[dict[str, Any]], *weights: int | None) -> list[dict[str, Any]]:
    """The conversation with each assistant turn's weight in order (None: no weight key)."""
    given = iter(weights)
    turns = []
    for turn in messages:
        if turn["role"] == "assistant" and (weight := next(given)) is not None:
            turn = turn | {"weight": weight}
        turns.append(turn)
    return turns


def labelled_spans(tokenizer: PreTrainedTokenizerBase, example: dict[str, list[int]]) -> list[str]:
    """The decoded runs of consecutive trained labels."""
    spans: list[list[int]] = []
    previous = IGNORE_INDEX
    for label in example["labels"]:
        if label != IGNORE_INDEX:
            if previous == IGNORE_INDEX:
                spans.append([])
            spans[-1].append(label)
        previous = label
    return [str(tokenizer.decode(span)) for span in spans]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize("template_name", ["auto", "chatml"])
def test_a_weight_0_answer_is_context_and_the_other_answer_is_learned(
    tokenizer: PreTrainedTokenizerBase, template_name: str
) -> None:
    template = resolve_chat_template(tokenizer, template_name)
    plain = encode_conversation(tokenizer, template, CHAT)
    masked = encode_conversation(tokenizer, template, weighted(CHAT, 0, 1))

    # The model still reads the masked answer: the text is the same, and the template never sees "weight".
    assert masked["input_ids"] == plain["input_ids"]
    assert render_chat(tokenizer, template, weighted(CHAT, 0, 1)) == render_chat(tokenizer, template, CHAT)
    assert "weight" not in render_chat(tokenizer, template, weighted(CHAT, 0, 1))
    # Labels -100 over exactly the first answer's trained tokens; the second answer's are unmasked.
    unmasked = [i for i, (a, b) in enumerate(zip(plain["labels"], masked["labels"], strict=True)) if a != b]
    assert masked["labels"][unmasked[0] : unmasked[-1] + 1] == [IGNORE_INDEX] * len(unmasked)
    assert unmasked == list(range(unmasked[0], unmasked[-1] + 1))
    first_answer = str(tokenizer.decode(plain["input_ids"][unmasked[0] : unmasked[-1] + 1]))
    assert first_answer == labelled_spans(tokenizer, plain)[0] and first_answer.startswith("Paris")
    assert labelled_spans(tokenizer, masked) == labelled_spans(tokenizer, plain)[1:]
    assert labelled_spans(tokenizer, masked)[0].startswith("Tokyo")
    # weight 1 is what no weight was; masking the last answer instead leaves the first one trained.
    assert encode_conversation(tokenizer, template, weighted(CHAT, 1, 1)) == plain
    assert labelled_spans(tokenizer, encode_conversation(tokenizer, template, weighted(CHAT, None, 0))) == [
        first_answer
    ]


def test_the_tiny_template_masks_the_weight_0_answer_through_its_end_token(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    # The tiny tokenizer's own template: <|role|>\ncontent\n, and an assistant turn ends with </s>.
    example = encode_conversation(tokenizer, str(tokenizer.chat_template), weighted(CHAT, 0, None))
    trained = [i for i, label in enumerate(example["labels"]) if label != IGNORE_INDEX]
    assert labelled_spans(tokenizer, example) == ["Tokyo</s>"]
    assert "Paris</s>" in str(tokenizer.decode(example["input_ids"][: trained[0]]))


def test_the_check_keeps_weights_and_refuses_what_it_cannot_honour_naming_the_line(tmp_path: Path) -> None:
    user_weighted = weighted(CHAT, 1, 1)
    user_weighted[1] = user_weighted[1] | {"weight": 0}
    rows = [
        {"messages": weighted(CHAT, 0, 1)},
        {"messages": weighted(CHAT, 0, 0)},
        {"messages": user_weighted},
        {"messages": weighted(CHAT, 2, None)},
        {"messages": weighted(CHAT, None, True)},
        {"messages": weighted(CHAT[:3], 0)},
    ]
    problems = {p.line: p.message for p in validate_dataset(write_jsonl(tmp_path / "weights.jsonl", rows))}

    assert 1 not in problems
    assert problems[2] == (
        'every assistant turn has "weight": 0, so there is nothing to learn from this row; '
        'set "weight": 1 on the turns to learn (or remove their "weight"), or drop the row'
    )
    assert problems[3] == '"messages" turn 2: "weight" is for assistant turns only (this is a user turn); remove it'
    assert problems[4] == '"messages" turn 3: "weight" must be 0 (context only) or 1 (trained on), got 2'
    assert problems[5] == '"messages" turn 5: "weight" must be 0 (context only) or 1 (trained on), got true'
    assert problems[6].startswith('every assistant turn has "weight": 0')
    assert len(problems) == 5

    good = write_jsonl(tmp_path / "good.jsonl", rows[:1])
    (row,) = read_rows(good)
    assert [turn.get("weight") for turn in row.messages] == [None, None, 0, None, 1]


def test_parquet_turns_without_a_weight_read_as_unweighted(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    # A struct column gives every turn the "weight" field; the turns that had none hold null.
    path = tmp_path / "weights.parquet"
    pq.write_table(pa.Table.from_pylist([{"messages": weighted(CHAT, 0, 1)}, {"messages": CHAT}]), path)
    first, second = read_rows(path)
    assert [turn.get("weight") for turn in first.messages] == [None, None, 0, None, 1]
    assert all("weight" not in turn for turn in second.messages)


def test_the_other_readers_of_a_conversation_never_see_the_weight(
    tokenizer: PreTrainedTokenizerBase, tmp_path: Path
) -> None:
    from worker.engine.objectives.grpo import grpo_record

    (row,) = read_rows(write_jsonl(tmp_path / "masked.jsonl", [{"messages": weighted(CHAT, 0, 1)}]))
    # GRPO: the turns before the last answer are the prompt TRL renders; the last answer is the reference.
    record = grpo_record(row)
    assert record == {"prompt": CHAT[:4], "reference": "Tokyo"}
    # The merge check's prompt: the turns before the first answer, as inference renders them.
    assert encode_row_prompt(row, tokenizer) == encode_row_prompt(
        Row(line=1, shape="messages", messages=CHAT), tokenizer
    )


def two_exchange_rows(count: int, *weights: int | None) -> list[dict[str, Any]]:
    """The sample's address rows, two to a conversation (each answer weighted as given)."""
    samples = [json.loads(line) for line in TRAIN.read_text(encoding="utf-8").splitlines()[: 2 * count]]
    rows = []
    for first, second in zip(samples[::2], samples[1::2], strict=True):
        turns = [
            {"role": "system", "content": "Parse the address into JSON."},
            {"role": "user", "content": first["prompt"]},
            {"role": "assistant", "content": first["completion"]},
            {"role": "user", "content": second["prompt"]},
            {"role": "assistant", "content": second["completion"]},
        ]
        rows.append({"messages": weighted(turns, *weights)})
    return rows


@pytest.mark.slow
def test_a_run_on_weight_0_turns_trains_on_fewer_tokens(
    loradeck_env: dict[str, str], tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    masked = write_jsonl(tmp_path / "masked.jsonl", two_exchange_rows(8, 0, 1))
    plain = write_jsonl(tmp_path / "plain.jsonl", two_exchange_rows(8, None, None))
    quick = {
        "method": "lora",
        "precision": "fp32",
        "max_steps": 3,
        "save_steps": 0,
        "per_device_train_batch_size": 2,
        "max_seq_length": 512,
        "eval_split": 0.0,
        "eval_dataset": "",
    }

    run = train_run(run_spec(quick, dataset=str(masked)))

    assert run.status == RunStatus.succeeded, run.error
    assert run.step == 3
    # What the run trained on, and what the dataset description shows: only the weighted answers' tokens.
    spec = run_spec(quick, dataset=str(masked))
    trained_masked = sum(
        label != IGNORE_INDEX
        for example in load_training_data(spec, tokenizer)[0].examples
        for label in example["labels"]
    )
    trained_plain = sum(
        label != IGNORE_INDEX
        for example in load_training_data(spec.model_copy(update={"dataset": str(plain)}), tokenizer)[0].examples
        for label in example["labels"]
    )
    assert 0 < trained_masked < trained_plain
    described = describe_dataset(masked, tokenizer, max_seq_length=512).trained_tokens
    assert described == trained_masked < describe_dataset(plain, tokenizer, max_seq_length=512).trained_tokens
