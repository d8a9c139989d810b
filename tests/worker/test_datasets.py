"""Reading dataset files: three formats, three row shapes, and every bad row named by its line and why."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from worker.data.files import WHAT_A_ROW_NEEDS, DatasetError, read_dataset, read_rows, validate_dataset

DATA = Path(__file__).parent / "data"


def _problems(path: Path) -> list[tuple[int, str]]:
    return [(problem.line, problem.message) for problem in validate_dataset(path)]


@pytest.mark.parametrize("name", ["pc.jsonl", "pc.json", "pc.csv", "pc.parquet"])
def test_prompt_completion_rows_read_the_same_from_every_format(name: str) -> None:
    expected = [json.loads(line) for line in (DATA / "pc.jsonl").read_text(encoding="utf-8").splitlines()]

    found = read_dataset(DATA / name)

    assert found.problems == []
    assert found.shape == "prompt_completion"
    assert found.fields == ["prompt", "completion"]
    assert [{"prompt": row.prompt, "completion": row.completion} for row in found.rows] == expected


@pytest.mark.parametrize("name", ["chat.jsonl", "chat.csv", "chat.parquet"])
def test_messages_rows_read_the_same_from_every_format(name: str) -> None:
    expected = [json.loads(line)["messages"] for line in (DATA / "chat.jsonl").read_text(encoding="utf-8").splitlines()]

    rows = read_rows(DATA / name)

    assert {row.shape for row in rows} == {"messages"}
    assert [row.messages for row in rows] == expected


def test_rows_carry_the_line_a_user_finds_them_on() -> None:
    # CSV counts the header as line 1, and a quoted cell with a newline makes a row span two lines.
    assert [row.line for row in read_rows(DATA / "pc.csv")] == [2, 4, 6, 7]
    assert [row.line for row in read_rows(DATA / "pc.json")] == [2, 6, 10, 14]
    assert [row.line for row in read_rows(DATA / "pc.parquet")] == [1, 2, 3, 4]
    assert [row.text for row in read_rows(DATA / "text.jsonl")][0].startswith("The quick brown fox")


def test_every_bad_jsonl_row_is_reported_with_its_line_and_why() -> None:
    assert _problems(DATA / "bad.jsonl") == [
        (2, "invalid JSON: Expecting ',' delimiter at column 15"),
        (3, '"completion" is missing'),
        (4, '"completion" must be a string, got a number'),
        (5, '"completion" is empty, so there is nothing to learn from this row'),
        (6, f"expected an object, got a list; a row holds {WHAT_A_ROW_NEEDS}"),
        (8, '"messages" turn 1: unknown role "bot"; use system, user or assistant'),
        (9, "mixed shapes: this row is text but line 1 is prompt/completion; a file holds rows of one shape"),
        (10, f'no known fields in this row ("foo"); a row holds {WHAT_A_ROW_NEEDS}'),
        (11, '"messages" has no assistant turn, so there is nothing to learn from this row'),
        (13, '"prompt" must be a string, got null'),
        (14, '"messages" is not valid JSON: Expecting value at column 2'),
        (15, '"messages" turn 1: "content" is missing'),
    ]


def test_a_bad_file_raises_one_error_that_lists_its_rows_as_a_user_reads_them() -> None:
    with pytest.raises(DatasetError) as caught:
        read_rows(DATA / "bad.jsonl")

    message = str(caught.value)
    assert message.startswith("bad.jsonl has 12 problems:\n")
    assert 'bad.jsonl line 3: "completion" is missing' in message
    assert 'bad.jsonl line 15: "messages" turn 1: "content" is missing' in message
    assert len(caught.value.problems) == 12


def test_past_twenty_problems_the_error_lists_twenty_and_counts_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text('{"prompt": "x"}\n' * 25, encoding="utf-8")

    with pytest.raises(DatasetError) as caught:
        read_rows(path)

    lines = str(caught.value).splitlines()
    assert lines[0] == "train.jsonl has 25 problems:"
    assert lines[1] == '  train.jsonl line 1: "completion" is missing'
    assert lines[20] == '  train.jsonl line 20: "completion" is missing'
    assert lines[21:] == ["  ... and 5 more"]


def test_one_bad_row_reads_as_one_line(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "x"}\n', encoding="utf-8")

    with pytest.raises(DatasetError, match=r'^train\.jsonl line 2: "completion" is missing$'):
        read_rows(path)


def test_json_list_rows_are_reported_at_the_line_they_start_on() -> None:
    assert _problems(DATA / "bad.json") == [
        (3, '"completion" is missing'),
        (4, '"completion" is empty, so there is nothing to learn from this row'),
        (8, "mixed shapes: this row is text but line 2 is prompt/completion; a file holds rows of one shape"),
    ]


def test_csv_rows_are_reported_at_their_line_counting_the_header_as_line_1() -> None:
    assert _problems(DATA / "bad.csv") == [
        (3, '"completion" is empty, so there is nothing to learn from this row'),
        (5, "1 cells, but the header names 2 columns"),
        (6, "3 cells, but the header names 2 columns"),
    ]


def test_csv_messages_cells_hold_json(tmp_path: Path) -> None:
    path = tmp_path / "chat.csv"
    good = json.dumps([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}])
    path.write_text(f'messages\n"{good.replace(chr(34), chr(34) * 2)}"\n"[{{""role"": ""user""]"\n', encoding="utf-8")

    found = read_dataset(path)

    assert found.rows[0].messages[1] == {"role": "assistant", "content": "yo"}
    assert [str(problem) for problem in found.problems] == [
        "chat.csv line 3: \"messages\" is not valid JSON: Expecting ',' delimiter at column 17"
    ]


def test_parquet_rows_are_reported_by_row_number(tmp_path: Path) -> None:
    path = tmp_path / "train.parquet"
    rows = [{"prompt": "a", "completion": "b"}, {"prompt": "a", "completion": None}]
    pq.write_table(pa.Table.from_pylist(rows), path)

    assert [str(problem) for problem in validate_dataset(path)] == [
        'train.parquet row 2: "completion" must be a string, got null'
    ]


def test_file_level_problems(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n", encoding="utf-8")
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet")

    assert [str(p) for p in validate_dataset(empty)] == [f"empty.jsonl: no rows; a row holds {WHAT_A_ROW_NEEDS}"]
    assert [str(p) for p in validate_dataset(latin)] == ["latin.jsonl line 2: not UTF-8 text (column 14)"]
    assert str(validate_dataset(broken)[0]).startswith("broken.parquet: not a readable Parquet file")
    with pytest.raises(DatasetError, match="no such file"):
        validate_dataset(tmp_path / "missing.jsonl")
    (tmp_path / "notes.txt").write_text("hello", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"must end in one of \.jsonl, \.json, \.csv, \.parquet"):
        validate_dataset(tmp_path / "notes.txt")


def test_limit_reads_only_the_first_good_rows() -> None:
    assert [row.completion for row in read_rows(DATA / "pc.jsonl", limit=2)] == [
        '{"city":"臺北市","district":"大安區"}',
        "fromage",
    ]
