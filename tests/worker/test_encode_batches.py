"""Rows tokenized in batches (as the upload's description and training read a file) give exactly the examples
that encoding each row alone gives."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from app.config import TINY_MODEL_DIR
from app.schemas import SAMPLE_TRAIN
from worker.data.encode import encode_all, encode_example
from worker.data.files import Row, read_rows


@pytest.mark.parametrize("train_on_prompt", [False, True])
def test_batched_rows_encode_as_each_row_alone(train_on_prompt: bool) -> None:
    tokenizer = AutoTokenizer.from_pretrained(TINY_MODEL_DIR)
    rows = read_rows(SAMPLE_TRAIN, limit=300)
    texts = [
        Row(line=n, text=f"{row.prompt} {row.completion}", shape="text") for n, row in enumerate(rows[:50], start=1)
    ]
    for chosen in (rows, texts):
        alone = [encode_example(row, tokenizer, "", train_on_prompt=train_on_prompt) for row in chosen]
        assert encode_all(chosen, tokenizer, "auto", train_on_prompt, Path("rows.jsonl")) == alone
