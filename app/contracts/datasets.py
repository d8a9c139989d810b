"""Describing a dataset file: what the web asks an inspect worker (worker.data.describe) and what it answers."""

from __future__ import annotations

from pydantic import BaseModel, Field

from app.schemas import MAX_SEQ_LENGTH, MIN_SEQ_LENGTH


class DescribeRequest(BaseModel):
    path: str = Field(description="The file, under the allowed dataset roots.")
    base_model: str = Field(description="Whose tokenizer counts the tokens.")
    max_seq_length: int = Field(ge=MIN_SEQ_LENGTH, le=MAX_SEQ_LENGTH)
    train_on_prompt: bool = False
    chat_template: str = "auto"


class RowProblemOut(BaseModel):
    line: int = Field(description="The row's line (1-based); 0 for a problem with the file as a whole.")
    message: str


class TokenStats(BaseModel):
    min: int
    p50: int
    p90: int
    p99: int
    max: int
    mean: float
    total: int


class Histogram(BaseModel):
    edges: list[int] = Field(description="Bin i counts lengths in [edges[i], edges[i+1]).")
    counts: list[int]


class Segment(BaseModel):
    text: str
    trained: bool = Field(description="Whether the loss falls on these tokens.")


class Answer(BaseModel):
    """One answer of a preference row, as the model sees it after the prompt."""

    name: str = Field(description="chosen, rejected, or completion (an unpaired row's).")
    label: bool | None = Field(default=None, description="An unpaired row's label: true is a good answer.")
    tokens: int
    segments: list[Segment]


class ExampleRow(BaseModel):
    line: int
    tokens: int
    segments: list[Segment] = Field(description="The row as the model sees it; a preference row's prompt alone.")
    answers: list[Answer] = Field(default_factory=list, description="A preference row's answers, after the prompt.")


class PartLengths(BaseModel):
    tokens: TokenStats
    histogram: Histogram


class DatasetDescription(BaseModel):
    file: str
    format: str
    rows: int
    shape: str
    fields: list[str]
    chat_template: str | None = None
    max_seq_length: int
    train_on_prompt: bool = False
    tokens: TokenStats
    histogram: Histogram
    truncated_rows: int
    truncated_share: float
    dropped_rows: int
    trained_tokens: int
    examples: list[ExampleRow]
    parts: dict[str, PartLengths] = Field(
        default_factory=dict,
        description="Preference files: the token lengths of prompt, chosen and rejected (or completion).",
    )
    labels: dict[str, int] | None = Field(default=None, description="Unpaired files: how many rows are good and bad.")
    base_model: str | None = Field(default=None, description="Whose tokenizer described it (set by the web).")


class DescribeAnswer(BaseModel):
    ok: bool
    description: DatasetDescription | None = None
    problems: list[RowProblemOut] = Field(default_factory=list, description="Bad rows, the first 200.")
    count: int = Field(default=0, description="How many rows are bad in all.")
