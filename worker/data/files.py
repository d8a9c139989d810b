"""Dataset files -> checked rows, every bad row reported with its line and why.

A file is JSONL (or .json holding a list), CSV or Parquet, and holds one of five row shapes: for supervised
tuning prompt/completion, messages (a conversation, whose assistant turns may carry OpenAI's "weight" 0 or 1) or
text; for preference tuning prompt/chosen/rejected pairs or prompt/completion/label unpaired rows
(worker.data.pairs reads those two). No tokenizer and no torch here, so the web process can check an upload and
a user can see all of a file's problems at once, not one per try.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from worker.data import pairs

Shape = Literal["prompt_completion", "messages", "text", "preference", "unpaired"]
SHAPE_NAMES: dict[Shape, str] = {
    "prompt_completion": "prompt/completion",
    "messages": "messages",
    "text": "text",
    "preference": "prompt/chosen/rejected",
    "unpaired": "prompt/completion/label",
}
ROLES = pairs.ROLES
FORMATS = {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
LISTED_PROBLEMS = 20  # an error naming 20 rows is enough to see the pattern; the total says how bad it is
WHAT_A_ROW_NEEDS = (
    '"prompt" and "completion", "messages" or "text" (supervised); "prompt", "chosen" and "rejected" '
    '(a preference pair, or OpenAI\'s "input", "preferred_output" and "non_preferred_output"); '
    'or "prompt", "completion" and "label" (unpaired, for KTO)'
)

READ_CHUNK = 1024**2
PARQUET_BATCH_ROWS = 256
# A Parquet file may decode to this many times its size (text compresses 3-5x, a repeated system prompt more);
# past that, and past half the inspection memory, it is refused as a decompression bomb.
PARQUET_EXPANSION = 100
PARQUET_FLOOR_BYTES = 16 * 1024**2


def max_row_bytes() -> int:
    from app.config import get_settings

    return get_settings().max_row_bytes


def _row_too_long(limit: int) -> _Unreadable:
    return _Unreadable(f"longer than the {_size(limit)} a row may be (LORADECK_MAX_ROW_BYTES); split or shorten it")


def _size(count: float) -> str:
    return f"{count / 1024**2:,.1f} MiB" if count >= 1024**2 else f"{count / 1024:,.0f} KiB"


class DatasetError(ValueError):
    """A dataset file the trainer cannot use; the message names the file and the lines."""

    def __init__(self, message: str, problems: list[RowProblem] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


@dataclass(frozen=True)
class RowProblem:
    """One bad row: line 1-based (CSV counts the header as line 1; Parquet counts rows); 0 is the whole file."""

    file: str
    line: int
    message: str
    unit: str = "line"

    def __str__(self) -> str:
        where = f" {self.unit} {self.line}" if self.line else ""
        return f"{self.file}{where}: {self.message}"


# A conversation's turn: "role" and "content" (str), and on an assistant turn of a messages row OpenAI's "weight"
# (int 0 or 1; absent means 1) when the row gave one. 0 marks the turn as context, not trained on (worker.data.chat).
Turn = dict[str, Any]


def template_turns(messages: list[Turn]) -> list[Turn]:
    """The turns as a chat template takes them: without "weight", which is loss masking, not text (a template
    that walks a turn's keys, or one that refuses unknown keys, never sees it)."""
    return [{key: value for key, value in turn.items() if key != "weight"} for turn in messages]


def trains_on(turn: Turn) -> bool:
    """Whether a turn is learned: an assistant turn without "weight": 0."""
    return turn["role"] == "assistant" and turn.get("weight", 1) != 0


@dataclass(frozen=True)
class Row:
    """A checked row. Only the fields of its shape are filled. A preference row (or an unpaired one) has its
    prompt as text in `prompt`, or as a conversation in `messages` (the turns before the answer); `chosen` and
    `rejected` (or `completion` and `label`) are the answers' texts."""

    line: int
    prompt: str = ""
    completion: str = ""
    shape: Shape = "prompt_completion"
    messages: list[Turn] = field(default_factory=list)
    text: str = ""
    chosen: str = ""
    rejected: str = ""
    label: bool | None = None  # unpaired rows: whether the completion is a good answer


@dataclass
class DatasetFile:
    """What reading a file found: its good rows, its problems, and the fields its rows carry."""

    name: str
    format: str
    shape: Shape | None = None
    fields: list[str] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    problems: list[RowProblem] = field(default_factory=list)

    def raise_for_problems(self) -> None:
        if not self.problems:
            return
        if len(self.problems) == 1:
            raise DatasetError(str(self.problems[0]), self.problems)
        listed = "\n".join(f"  {problem}" for problem in self.problems[:LISTED_PROBLEMS])
        more = len(self.problems) - LISTED_PROBLEMS
        tail = f"\n  ... and {more} more" if more > 0 else ""
        raise DatasetError(f"{self.name} has {len(self.problems)} problems:\n{listed}{tail}", self.problems)


@dataclass(frozen=True)
class _Unreadable:
    """A row that could not even be parsed into a value (bad JSON, bad bytes, a short CSV record)."""

    message: str


def read_dataset(path: str | Path, *, limit: int | None = None) -> DatasetFile:
    """Read and check every row (or until `limit` good rows). Bad rows land in `problems`, never raise;
    only a missing file or an unknown suffix raises DatasetError."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"dataset {path}: no such file")
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DatasetError(f"dataset {path.name}: the file must end in one of {', '.join(FORMATS)}")
    found = DatasetFile(name=path.name, format=fmt)
    unit = "row" if fmt == "parquet" else "line"
    first_line = 0
    for line, value in _records(path, fmt):
        if isinstance(value, dict):
            found.fields.extend(str(key) for key in value if key not in found.fields)
        row = _parse_row(line, value)
        if isinstance(row, str):
            found.problems.append(RowProblem(path.name, line, row, unit))
        elif found.shape is not None and (mixed := _mixed(row, found.rows[0], f"{unit} {first_line}")):
            found.problems.append(RowProblem(path.name, line, mixed, unit))
        else:
            found.shape, first_line = row.shape, first_line or line
            found.rows.append(row)
            if len(found.rows) == limit:
                break
    if not found.rows and not found.problems:
        found.problems.append(RowProblem(path.name, 0, f"no rows; a row holds {WHAT_A_ROW_NEEDS}"))
    return found


def _mixed(row: Row, first: Row, where: str) -> str:
    """Why a row cannot sit in a file beside its first good row ("" if it can)."""
    if row.shape != first.shape:
        return (
            f"mixed shapes: this row is {SHAPE_NAMES[row.shape]} but {where} is {SHAPE_NAMES[first.shape]}; "
            "a file holds rows of one shape"
        )
    # A preference file's prompts go through a chat template or none at all, never both (as TRL reads them).
    if row.shape in ("preference", "unpaired") and bool(row.messages) != bool(first.messages):
        kinds = ("a conversation", "text") if row.messages else ("text", "a conversation")
        return f"mixed prompts: this row's prompt is {kinds[0]} but {where}'s is {kinds[1]}; a file holds one kind"
    return ""


def validate_dataset(path: str | Path) -> list[RowProblem]:
    """Every problem of the file, in file order; empty when the file is fit to train on."""
    return read_dataset(path).problems


def read_rows(path: str | Path, limit: int | None = None) -> list[Row]:
    """The good rows of a file (the first `limit`); any bad row raises one DatasetError listing them."""
    found = read_dataset(path, limit=limit)
    found.raise_for_problems()
    return found.rows


# --- the formats: each yields (line, parsed value or _Unreadable)


def _records(path: Path, fmt: str) -> Iterator[tuple[int, Any]]:
    if fmt == "jsonl":
        return _jsonl_records(_lines(path))
    if fmt == "parquet":
        return _parquet_records(path)
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")  # -sig: spreadsheet programs start their CSV with a BOM
    except UnicodeDecodeError as exc:
        return iter([(data.count(b"\n", 0, exc.start) + 1, _Unreadable(f"not UTF-8 text (byte {exc.start})"))])
    if fmt == "csv":
        return _csv_records(text)
    if not text.lstrip().startswith("["):
        return _jsonl_records(_lines(path))  # a .json file of JSON lines, which is common enough to accept
    return _json_list_records(text)


def _lines(path: Path) -> Iterator[bytes | None]:
    """The file's lines without their ends, read a bounded piece at a time; None for a line past the row cap
    (it is skipped without being held in memory)."""
    limit = max_row_bytes()
    with path.open("rb") as handle:
        while piece := handle.readline(limit + 1):
            if len(piece) > limit and not piece.endswith(b"\n"):
                while (rest := handle.readline(READ_CHUNK)) and not rest.endswith(b"\n"):
                    pass
                yield None
                continue
            # Split bytes, not str: str.splitlines also breaks at U+2028 and friends, which JSON strings may hold
            # raw; bytes.splitlines breaks at \n, \r and \r\n, as reading the whole file used to.
            yield from piece.splitlines() or [b""]


def _jsonl_records(lines: Iterator[bytes | None]) -> Iterator[tuple[int, Any]]:
    for number, raw in enumerate(lines, start=1):
        if raw is None:
            yield number, _row_too_long(max_row_bytes())
            continue
        try:
            text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            yield number, _Unreadable(f"not UTF-8 text (column {exc.start + 1})")
            continue
        if text.strip():
            try:
                yield number, json.loads(text)
            except json.JSONDecodeError as exc:
                yield number, _Unreadable(f"invalid JSON: {exc.msg} at column {exc.colno}")


def _json_list_records(text: str) -> Iterator[tuple[int, Any]]:
    """The items of a top-level JSON list, each with the line it starts on."""
    decoder, position, line = json.JSONDecoder(), text.index("[") + 1, 1
    line += text.count("\n", 0, position)
    while True:
        start = _skip_space(text, position)
        line += text.count("\n", position, start)
        if text.startswith("]", start):
            return
        try:
            value, end = decoder.raw_decode(text, start)
        except json.JSONDecodeError as exc:
            # Past a syntax error the items cannot be told apart, so reading stops here.
            yield exc.lineno, _Unreadable(f"invalid JSON: {exc.msg} at column {exc.colno}; the rest is not read")
            return
        yield line, value
        line += text.count("\n", start, end)
        position = _skip_space(text, end)
        line += text.count("\n", end, position)
        if text.startswith(",", position):
            position += 1
        elif not text.startswith("]", position):
            yield line, _Unreadable("invalid JSON: expected , or ] after this item; the rest is not read")
            return


def _skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position] in " \t\r\n":
        position += 1
    return position


def _csv_records(text: str) -> Iterator[tuple[int, Any]]:
    csv.field_size_limit(max_row_bytes())  # a conversation in one cell easily passes the 128 KiB default
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [name.strip() for name in next(reader, [])]
        start = reader.line_num + 1
        for cells in reader:
            # A quoted cell may span lines; a row is reported at the line it starts on.
            line, start = start, reader.line_num + 1
            if not cells:
                continue
            if len(cells) != len(header):
                yield line, _Unreadable(f"{len(cells)} cells, but the header names {len(header)} columns")
            else:
                yield line, dict(zip(header, cells, strict=True))
    except csv.Error as exc:
        if "field larger than field limit" in str(exc):
            yield reader.line_num, _row_too_long(max_row_bytes())
        else:
            yield reader.line_num, _Unreadable(f"not readable as CSV ({exc})")


def _parquet_records(path: Path) -> Iterator[tuple[int, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DatasetError(f"dataset {path.name}: reading Parquet needs pyarrow (pip install pyarrow)") from None
    try:
        yield from _parquet_batches(pq.ParquetFile(path), path.stat().st_size)
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError and more for a damaged file
        yield 0, _Unreadable(f"not a readable Parquet file ({exc})")


def _plain(batch: Any) -> Any:
    import pyarrow as pa

    if not any(pa.types.is_dictionary(column.type) for column in batch.columns):
        return batch
    columns = [c.dictionary_decode() if pa.types.is_dictionary(c.type) else c for c in batch.columns]
    return pa.RecordBatch.from_arrays(columns, names=batch.schema.names)


def _parquet_cap(file_size: int) -> int:
    from app.config import get_settings

    half_memory = get_settings().inspect_memory_mb * 1024**2 // 2
    return min(max(PARQUET_FLOOR_BYTES, PARQUET_EXPANSION * file_size), half_memory)


def _parquet_batches(parquet: Any, file_size: int) -> Iterator[tuple[int, Any]]:
    """One row group at a time, a few hundred rows at a time, counting the bytes they decode to: a small file
    that inflates to gigabytes (a Parquet bomb) is refused at the cap, before it is held in memory."""
    cap, row_limit, decoded, line = _parquet_cap(file_size), max_row_bytes(), 0, 0
    bomb = (
        f"decodes to more than {_size(cap)} ({PARQUET_EXPANSION} times its size on disk, at most half of "
        "LORADECK_INSPECT_MEMORY_MB); the rest is not read: write it with plain encoding, or as JSONL"
    )
    for group in range(parquet.metadata.num_row_groups):
        meta = parquet.metadata.row_group(group)
        stated = sum(meta.column(i).total_uncompressed_size for i in range(meta.num_columns))
        if decoded + stated > cap:
            yield line + 1, _Unreadable(f"row group {group + 1} {bomb}")
            return
        for encoded in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, row_groups=[group]):
            batch = _plain(encoded)  # a dictionary column counts at its decoded size, as Python will hold it
            decoded += batch.nbytes
            if decoded > cap:
                yield line + 1, _Unreadable(bomb)
                return
            per_row = batch.nbytes / max(batch.num_rows, 1)
            for record in batch.to_pylist():
                line += 1
                if per_row > row_limit and len(json.dumps(record, default=str)) > row_limit:
                    yield line, _row_too_long(row_limit)
                else:
                    yield line, record


# --- the shapes: a parsed value -> Row, or the reason it is not one


_json_type = pairs.json_type


def _parse_row(line: int, value: Any) -> Row | str:
    if isinstance(value, _Unreadable):
        return value.message
    if not isinstance(value, dict):
        return f"expected an object, got {_json_type(value)}; a row holds {WHAT_A_ROW_NEEDS}"
    if pairs.is_pair(value):
        fields = pairs.parse_pair(value)
        return fields if isinstance(fields, str) else Row(line=line, shape="preference", **fields)
    if pairs.is_unpaired(value):
        fields = pairs.parse_unpaired(value)
        return fields if isinstance(fields, str) else Row(line=line, shape="unpaired", **fields)
    if "messages" in value:
        return _parse_messages(line, value["messages"])
    if "prompt" in value or "completion" in value:
        for key in ("prompt", "completion"):
            if key not in value:
                return f'"{key}" is missing'
            if not isinstance(value[key], str):
                return f'"{key}" must be a string, got {_json_type(value[key])}'
        if not value["completion"].strip():
            return '"completion" is empty, so there is nothing to learn from this row'
        return Row(line=line, prompt=value["prompt"], completion=value["completion"])
    if "text" in value:
        if not isinstance(value["text"], str):
            return f'"text" must be a string, got {_json_type(value["text"])}'
        if not value["text"].strip():
            return '"text" is empty'
        return Row(line=line, shape="text", text=value["text"])
    keys = ", ".join(f'"{key}"' for key in value) or "none"
    return f"no known fields in this row ({keys}); a row holds {WHAT_A_ROW_NEEDS}"


def _parse_messages(line: int, messages: Any) -> Row | str:
    if isinstance(messages, str):  # CSV cells and Parquet string columns hold the list as JSON text
        try:
            messages = json.loads(messages)
        except json.JSONDecodeError as exc:
            return f'"messages" is not valid JSON: {exc.msg} at column {exc.colno}'
    if not isinstance(messages, list):
        return f'"messages" must be a list of {{"role", "content"}} objects, got {_json_type(messages)}'
    if not messages:
        return '"messages" is empty'
    turns: list[Turn] = []
    for number, turn in enumerate(messages, start=1):
        where = f'"messages" turn {number}'
        if not isinstance(turn, dict):
            return f'{where}: expected a {{"role", "content"}} object, got {_json_type(turn)}'
        for key in ("role", "content"):
            if key not in turn:
                return f'{where}: "{key}" is missing'
            if not isinstance(turn[key], str):
                return f'{where}: "{key}" must be a string, got {_json_type(turn[key])}'
        if turn["role"] not in ROLES:
            return f'{where}: unknown role "{turn["role"]}"; use {", ".join(ROLES[:-1])} or {ROLES[-1]}'
        if turn["role"] == "assistant" and not turn["content"].strip():
            return f'{where}: the assistant\'s "content" is empty'
        kept: Turn = {"role": turn["role"], "content": turn["content"]}
        # Parquet fills a struct field a turn lacks with null, so null is "no weight" here.
        if turn.get("weight") is not None:
            if problem := _weight_problem(turn["role"], turn["weight"]):
                return f"{where}: {problem}"
            kept["weight"] = int(turn["weight"])
        turns.append(kept)
    if turns[0]["role"] == "assistant":
        return '"messages" starts with an assistant turn; start with a system or user turn'
    if not any(turn["role"] == "assistant" for turn in turns):
        return '"messages" has no assistant turn, so there is nothing to learn from this row'
    if not any(trains_on(turn) for turn in turns):
        return (
            'every assistant turn has "weight": 0, so there is nothing to learn from this row; '
            'set "weight": 1 on the turns to learn (or remove their "weight"), or drop the row'
        )
    return Row(line=line, shape="messages", messages=turns)


def _weight_problem(role: str, weight: Any) -> str:
    """Why a turn's "weight" is not OpenAI's loss mask ("" if it is): 0 or 1, on assistant turns only."""
    if role != "assistant":
        return f'"weight" is for assistant turns only (this is a {role} turn); remove it'
    # bool is an int to Python, but `true` is not a weight; 1.0 is, as a float column in Parquet or CSV holds it.
    if isinstance(weight, bool) or not isinstance(weight, int | float) or weight not in (0, 1):
        return f'"weight" must be 0 (context only) or 1 (trained on), got {json.dumps(weight, default=str)[:40]}'
    return ""
