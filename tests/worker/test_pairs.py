"""Preference rows read from a file: pairs (plain, conversational, OpenAI's preference JSONL) and KTO's unpaired
rows, from JSONL, CSV and Parquet, and every refusal with the message a user reads."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from worker.data.files import WHAT_A_ROW_NEEDS, read_dataset, validate_dataset

USER = [{"role": "system", "content": "Answer in JSON."}, {"role": "user", "content": "Parse: Taipei"}]
PLAIN = {"prompt": "Parse: Taipei\n", "chosen": '{"city": "Taipei"}', "rejected": '{"city": null}'}
CONVERSATIONAL = {
    "prompt": USER,
    "chosen": [{"role": "assistant", "content": '{"city": "Taipei"}'}],
    "rejected": [{"role": "assistant", "content": '{"city": null}'}],
}
OPENAI = {
    "input": {"messages": USER, "tools": [], "parallel_tool_calls": True},
    "preferred_output": [{"role": "assistant", "content": '{"city": "Taipei"}'}],
    "non_preferred_output": [{"role": "assistant", "content": '{"city": null}'}],
}


ONE_SHAPE = "a file holds rows of one shape"


def _jsonl(tmp_path: Path, *rows: Any, name: str = "pairs.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def _problems(path: Path) -> list[tuple[int, str]]:
    return [(problem.line, problem.message) for problem in validate_dataset(path)]


def _cells(row: dict[str, Any]) -> dict[str, Any]:
    return {key: json.dumps(value) if isinstance(value, list) else value for key, value in row.items()}


def _csv(tmp_path: Path, *rows: dict[str, Any]) -> Path:
    path = tmp_path / "pairs.csv"
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(_cells(row) for row in rows)
    return path


def test_a_plain_pair_reads_as_prompt_chosen_rejected(tmp_path: Path) -> None:
    found = read_dataset(_jsonl(tmp_path, PLAIN))

    assert found.problems == [] and found.shape == "preference"
    row = found.rows[0]
    assert (row.prompt, row.messages, row.chosen, row.rejected) == (
        "Parse: Taipei\n",
        [],
        '{"city": "Taipei"}',
        '{"city": null}',
    )


def test_a_conversational_pair_keeps_the_turns_before_the_answer(tmp_path: Path) -> None:
    row = read_dataset(_jsonl(tmp_path, CONVERSATIONAL)).rows[0]

    assert (row.shape, row.prompt, row.messages) == ("preference", "", USER)
    assert (row.chosen, row.rejected) == ('{"city": "Taipei"}', '{"city": null}')


def test_openai_preference_rows_are_converted_on_read(tmp_path: Path) -> None:
    found = read_dataset(_jsonl(tmp_path, OPENAI, CONVERSATIONAL))

    assert found.problems == [] and found.shape == "preference"
    assert found.rows[0] == replace(found.rows[1], line=1)


@pytest.mark.parametrize("row", [PLAIN, CONVERSATIONAL], ids=["plain", "conversational"])
def test_pairs_read_the_same_from_csv_and_parquet(tmp_path: Path, row: dict[str, Any]) -> None:
    expected = read_dataset(_jsonl(tmp_path, row)).rows[0]
    parquet = tmp_path / "pairs.parquet"
    pq.write_table(pa.Table.from_pylist([_cells(row)]), parquet)

    for path, line in ((_csv(tmp_path, row), 2), (parquet, 1)):
        found = read_dataset(path)
        assert found.problems == [] and found.shape == "preference"
        assert found.rows[0].__dict__ == {**expected.__dict__, "line": line}


def test_unpaired_rows_take_labels_from_json_csv_and_parquet(tmp_path: Path) -> None:
    rows = [
        {"prompt": "Parse: Taipei\n", "completion": '{"city": "Taipei"}', "label": True},
        {"prompt": "Parse: Taipei\n", "completion": '{"city": null}', "label": False},
    ]
    csv_path = _csv(tmp_path, *[{**row, "label": label} for row, label in zip(rows, ("TRUE", " no "), strict=True)])
    parquet = tmp_path / "kto.parquet"
    pq.write_table(pa.Table.from_pylist([{**row, "label": int(row["label"])} for row in rows]), parquet)

    for path in (_jsonl(tmp_path, *rows), csv_path, parquet):
        found = read_dataset(path)
        assert found.problems == [] and found.shape == "unpaired", path.name
        assert [(row.prompt, row.completion, row.label) for row in found.rows] == [
            ("Parse: Taipei\n", '{"city": "Taipei"}', True),
            ("Parse: Taipei\n", '{"city": null}', False),
        ]


def test_a_conversational_unpaired_row(tmp_path: Path) -> None:
    row = {"prompt": USER, "completion": [{"role": "assistant", "content": "{}"}], "label": False}

    found = read_dataset(_jsonl(tmp_path, row))

    assert found.problems == []
    assert (found.rows[0].messages, found.rows[0].completion, found.rows[0].label) == (USER, "{}", False)


def test_every_refused_pair_names_its_line_and_what_to_fix(tmp_path: Path) -> None:
    assistant = [{"role": "assistant", "content": "A"}]
    rows = [
        {**PLAIN, "rejected": PLAIN["chosen"]},
        {**PLAIN, "rejected": PLAIN["chosen"] + "\n"},
        {"prompt": "Q", "chosen": "A"},
        {"chosen": "A", "rejected": "B"},
        {"input": {"messages": USER}, "preferred_output": assistant},
        {"input": USER, "preferred_output": assistant, "non_preferred_output": assistant},
        {**CONVERSATIONAL, "prompt": [*USER, {"role": "assistant", "content": "A"}]},
        {**CONVERSATIONAL, "chosen": "A"},
        {**CONVERSATIONAL, "chosen": [*assistant, *assistant]},
        {**CONVERSATIONAL, "chosen": [{"role": "user", "content": "A"}]},
        {**CONVERSATIONAL, "chosen": [{"role": "assistant"}]},
        {**PLAIN, "prompt": 3},
        {**PLAIN, "chosen": " "},
        {**PLAIN, "rejected": None},
        {**CONVERSATIONAL, "prompt": [{"role": "bot", "content": "hi"}]},
    ]

    assert _problems(_jsonl(tmp_path, *rows)) == [
        (1, '"chosen" and "rejected" are the same answer; a pair teaches nothing unless they differ'),
        (2, '"chosen" and "rejected" are the same answer; a pair teaches nothing unless they differ'),
        (
            3,
            '"rejected" is missing; a preference row needs "prompt", "chosen" and "rejected" '
            '(or OpenAI\'s "input", "preferred_output" and "non_preferred_output")',
        ),
        (
            4,
            '"prompt" is missing; a preference row needs "prompt", "chosen" and "rejected" '
            '(or OpenAI\'s "input", "preferred_output" and "non_preferred_output")',
        ),
        (
            5,
            '"non_preferred_output" is missing; OpenAI\'s preference rows need "input", "preferred_output" '
            'and "non_preferred_output"',
        ),
        (6, '"input" must be an object holding "messages" (the turns before the answer), got a list'),
        (
            7,
            '"prompt" ends with an assistant turn; it holds the turns before the answer, and the answers go in '
            '"chosen" and "rejected"',
        ),
        (
            8,
            '"chosen" is text but the prompt is a conversation; give it as [{"role": "assistant", "content": "..."}]',
        ),
        (9, '"chosen" must hold one assistant turn (the answer), got 2 turns'),
        (10, '"chosen" turn 1 is a user turn; the answer is one assistant turn'),
        (11, '"chosen" turn 1: "content" is missing'),
        (12, '"prompt" must be a string or a list of {"role", "content"} turns, got a number'),
        (13, '"chosen" is empty'),
        (14, '"rejected" must be a string or a list with one assistant turn, got null'),
        (15, '"prompt" turn 1: unknown role "bot"; use system, user or assistant'),
    ]


def test_every_refused_unpaired_row_names_what_to_fix(tmp_path: Path) -> None:
    rows = [
        {"prompt": "Q", "label": True},
        {"prompt": "Q", "completion": "A", "label": "positive"},
        {"prompt": "Q", "completion": "A", "label": 2},
        {"prompt": USER + [{"role": "assistant", "content": "A"}], "completion": "A", "label": True},
    ]

    assert _problems(_jsonl(tmp_path, *rows)) == [
        (1, '"completion" is missing; an unpaired row needs "prompt", "completion" and "label" (true: a good answer)'),
        (
            2,
            '"label" must be true (a good answer) or false (a bad one), got "positive"; '
            "a row with a label is read as an unpaired (KTO) row",
        ),
        (
            3,
            '"label" must be true (a good answer) or false (a bad one), got 2; '
            "a row with a label is read as an unpaired (KTO) row",
        ),
        (
            4,
            '"prompt" ends with an assistant turn; it holds the turns before the answer, and the answer goes in '
            '"completion"',
        ),
    ]


def test_a_broken_json_cell_in_a_csv_pair_is_named_not_read_as_text(tmp_path: Path) -> None:
    path = _csv(tmp_path, {**CONVERSATIONAL, "prompt": '[{"role": "user", "content": "Q"'})

    assert _problems(path) == [
        (2, "\"prompt\" looks like a JSON list of turns but is not valid JSON: Expecting ',' delimiter at column 33")
    ]


def test_a_file_holds_pairs_of_one_shape_and_one_kind(tmp_path: Path) -> None:
    rows = [
        PLAIN,
        {"prompt": "Q", "completion": "A"},
        {"prompt": "Q", "completion": "A", "label": True},
        CONVERSATIONAL,
        OPENAI,
        PLAIN,
    ]

    assert _problems(_jsonl(tmp_path, *rows)) == [
        (2, f"mixed shapes: this row is prompt/completion but line 1 is prompt/chosen/rejected; {ONE_SHAPE}"),
        (3, f"mixed shapes: this row is prompt/completion/label but line 1 is prompt/chosen/rejected; {ONE_SHAPE}"),
        (4, "mixed prompts: this row's prompt is a conversation but line 1's is text; a file holds one kind"),
        (5, "mixed prompts: this row's prompt is a conversation but line 1's is text; a file holds one kind"),
    ]


def test_the_no_known_fields_message_names_the_preference_shapes_too(tmp_path: Path) -> None:
    assert _problems(_jsonl(tmp_path, {"question": "Q", "answer": "A"}, ["Q", "A"])) == [
        (1, f'no known fields in this row ("question", "answer"); a row holds {WHAT_A_ROW_NEEDS}'),
        (2, f"expected an object, got a list; a row holds {WHAT_A_ROW_NEEDS}"),
    ]
    assert WHAT_A_ROW_NEEDS == (
        '"prompt" and "completion", "messages" or "text" (supervised); "prompt", "chosen" and "rejected" '
        '(a preference pair, or OpenAI\'s "input", "preferred_output" and "non_preferred_output"); '
        'or "prompt", "completion" and "label" (unpaired, for KTO)'
    )


def test_the_readme_example_lines_read_as_their_shapes(tmp_path: Path) -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Dataset formats", 1)[1].split("\n## ", 1)[0]
    examples = [line.rsplit("| `", 1)[1].rsplit("` |", 1)[0] for line in section.splitlines() if "| `{" in line]
    shapes = []
    for number, example in enumerate(examples):
        found = read_dataset(_jsonl(tmp_path, json.loads(example), name=f"{number}.jsonl"))
        assert found.problems == [], example
        shapes.append((found.shape, bool(found.rows[0].messages)))

    assert shapes == [("preference", False), ("preference", True), ("preference", True), ("unpaired", False)]
