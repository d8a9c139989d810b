"""Dataset rows -> token ids and labels, the eval split and the batch collators.

Labels are IGNORE_INDEX on whatever the model is given rather than asked to write: the prompt of a
prompt/completion row (`bos + prompt + completion + eos`), the system and user turns of a
conversation and the markup around them (see worker.data.chat); `train_on_prompt` and text rows
train on every token. The prompt and the completion are tokenized separately and their ids joined,
so the boundary between "given" and "to learn" is exact (tokenizing the joined text can merge the last
prompt character with the first completion one). Reading and checking files is worker.data.files; a
file's description for the web is worker.data.describe.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jinja2.exceptions import TemplateError
from torch.utils.data import Dataset
from transformers import DataCollatorWithFlattening, PreTrainedTokenizerBase
from transformers.utils.generic import is_flash_attention_requested

from app.schemas import RunSpec
from worker.data.chat import (
    IGNORE_INDEX,
    chat_template_name,
    encode_conversation,
    render_chat,
    resolve_chat_template,
    warn_about_markup,
)
from worker.data.files import SHAPE_NAMES, Row, read_rows

# Re-exported: train.py, merge.py and the CLI import the whole dataset contract from here.
from worker.data.files import DatasetError as DatasetError
from worker.data.files import RowProblem as RowProblem
from worker.data.files import validate_dataset as validate_dataset

log = logging.getLogger(__name__)
Example = dict[str, list[int]]


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """The ids the model sees before the completion: bos (when the tokenizer has one) + prompt."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return bos + list(tokenizer(prompt, add_special_tokens=False)["input_ids"])


def encode_row(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    completion: str,
    max_seq_length: int,
    *,
    train_on_prompt: bool = False,
) -> Example:
    """input_ids and labels for one prompt/completion row, cut to max_seq_length."""
    row = Row(line=0, prompt=prompt, completion=completion)
    return truncate(encode_example(row, tokenizer, "", train_on_prompt=train_on_prompt), max_seq_length)


def encode_example(
    row: Row, tokenizer: PreTrainedTokenizerBase, template: str, *, train_on_prompt: bool = False
) -> Example:
    """input_ids and labels for a row of any shape, not yet cut; `template` is the Jinja source for messages."""
    if row.shape == "messages":
        return encode_conversation(tokenizer, template, row.messages, train_on_prompt=train_on_prompt)
    head = row.text if row.shape == "text" else row.prompt
    tail = None if row.shape == "text" else list(tokenizer(row.completion, add_special_tokens=False)["input_ids"])
    return plain_example(tokenizer, encode_prompt(tokenizer, head), tail, train_on_prompt=train_on_prompt)


def plain_example(
    tokenizer: PreTrainedTokenizerBase,
    prompt_ids: list[int],
    completion_ids: list[int] | None,
    *,
    train_on_prompt: bool,
) -> Example:
    """A text row (no completion: every token trained) or a prompt/completion row from its ids, eos added."""
    if tokenizer.eos_token_id is None:
        raise DatasetError("the tokenizer has no eos token, so the model could never learn where to stop")
    if completion_ids is None:
        ids = [*prompt_ids, tokenizer.eos_token_id]
        return {"input_ids": ids, "labels": list(ids)}
    completion_ids = [*completion_ids, tokenizer.eos_token_id]
    labels = prompt_ids if train_on_prompt else [IGNORE_INDEX] * len(prompt_ids)
    return {"input_ids": prompt_ids + completion_ids, "labels": labels + completion_ids}


def _token_ids(tokenizer: PreTrainedTokenizerBase, texts: list[str], batch: int = 2000) -> list[list[int]]:
    """Each text's ids, without special tokens, a batch per call: a call per text costs more in Python than
    the tokenizing itself. A fast tokenizer's own batch encoder, without offsets, is faster again (100k short
    rows: 3-4x against a call per row, measured on 2 busy cores)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    encode = getattr(backend, "encode_batch_fast", None)
    ids: list[list[int]] = []
    for start in range(0, len(texts), batch):
        chunk = texts[start : start + batch]
        if encode is not None:
            ids += [encoding.ids for encoding in encode(chunk, add_special_tokens=False)]
        else:
            ids += tokenizer(chunk, add_special_tokens=False)["input_ids"]
    return ids


def _encode_plain_rows(rows: list[Row], tokenizer: PreTrainedTokenizerBase, train_on_prompt: bool) -> list[Example]:
    """Text and prompt/completion rows, tokenized in batches; the same examples as encode_example gives."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    heads = _token_ids(tokenizer, [row.text if row.shape == "text" else row.prompt for row in rows])
    tails = iter(_token_ids(tokenizer, [row.completion for row in rows if row.shape != "text"]))
    return [
        plain_example(
            tokenizer, bos + head, None if row.shape == "text" else next(tails), train_on_prompt=train_on_prompt
        )
        for row, head in zip(rows, heads, strict=True)
    ]


def encode_row_prompt(row: Row, tokenizer: PreTrainedTokenizerBase, chat_template: str = "auto") -> list[int]:
    """The ids a row gives the model before its first answer (what the merge check compares logits on)."""
    if row.shape == "messages":
        first_answer = next(i for i, turn in enumerate(row.messages) if turn["role"] == "assistant")
        template = resolve_chat_template(tokenizer, chat_template)
        text = render_chat(tokenizer, template, row.messages[:first_answer], add_generation_prompt=True)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return encode_prompt(tokenizer, row.prompt if row.shape == "prompt_completion" else row.text)


def truncate(example: Example, max_seq_length: int) -> Example:
    return {key: ids[:max_seq_length] for key, ids in example.items()}


def learns_something(example: Example) -> bool:
    return any(label != IGNORE_INDEX for label in example["labels"])


class TokenizedDataset(Dataset[dict[str, list[int]]]):
    """Rows tokenized once up front: the datasets here are small next to the cost of a training step."""

    def __init__(self, examples: list[Example]) -> None:
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> Example:
        return self.examples[index]


def encode_all(
    rows: list[Row], tokenizer: PreTrainedTokenizerBase, chat_template: str, train_on_prompt: bool, path: Path
) -> list[Example]:
    """Every row encoded whole; a template that cannot render a row names the row."""
    template = ""
    if rows and rows[0].shape == "messages":
        name = chat_template_name(tokenizer, chat_template)
        template = resolve_chat_template(tokenizer, chat_template)
        warn_about_markup(tokenizer, name)
    unit = "row" if path.suffix.lower() == ".parquet" else "line"
    if rows and all(row.shape != "messages" for row in rows):
        return _encode_plain_rows(rows, tokenizer, train_on_prompt)
    examples = []
    for row in rows:
        try:
            examples.append(encode_example(row, tokenizer, template, train_on_prompt=train_on_prompt))
        except (DatasetError, TemplateError) as exc:
            raise DatasetError(f"{path.name} {unit} {row.line}: {exc}") from None
    return examples


def _fit(examples: list[Example], rows: list[Row], max_seq_length: int, name: str) -> list[Example]:
    """Cut each example to max_seq_length; drop those left with nothing to learn (their prompt fills it)."""
    kept: list[Example] = []
    dropped: list[int] = []
    for example, row in zip(examples, rows, strict=True):
        example = truncate(example, max_seq_length)
        if learns_something(example):
            kept.append(example)
        else:
            dropped.append(row.line)
    if dropped:
        log.warning(
            "dataset %s: %d rows have prompts of %d tokens or more and no room left for the completion "
            "(lines %s); they are skipped. Raise max_seq_length to keep them.",
            name,
            len(dropped),
            max_seq_length,
            ", ".join(map(str, dropped[:10])) + (" ..." if len(dropped) > 10 else ""),
        )
    if not kept:
        raise DatasetError(
            f"dataset {name}: every prompt is at least max_seq_length={max_seq_length} tokens long, "
            "so no completion token is left to learn; raise max_seq_length"
        )
    return kept


def load_dataset(
    path: str | Path,
    tokenizer: PreTrainedTokenizerBase,
    max_seq_length: int,
    *,
    train_on_prompt: bool = False,
    chat_template: str = "auto",
) -> TokenizedDataset:
    """Read, check and tokenize a dataset file. Rows left with nothing to learn are dropped with a warning."""
    rows, path = read_rows(path), Path(path)
    examples = encode_all(rows, tokenizer, chat_template, train_on_prompt, path)
    return TokenizedDataset(_fit(examples, rows, max_seq_length, path.name))


def split_rows(rows: list[Row], fraction: float, seed: int) -> tuple[list[Row], list[Row]]:
    """Hold out round(fraction * rows) rows (at least one), chosen by `seed` alone: the same file, share
    and seed always give the same split, whatever max_seq_length or the tokenizer."""
    count = max(1, round(len(rows) * fraction))
    if count >= len(rows):
        raise DatasetError(
            f"eval_split: {len(rows)} rows are too few to hold out {fraction:g} of them and still train; "
            "add rows, or give an eval_dataset"
        )
    held_out = set(random.Random(seed).sample(range(len(rows)), count))
    train = [row for index, row in enumerate(rows) if index not in held_out]
    return train, [row for index, row in enumerate(rows) if index in held_out]


def eval_rows(spec: RunSpec) -> list[Row]:
    """The run's held-out rows as read: the same split as `load_training_data`, untokenized."""
    if spec.eval_split:
        return split_rows(read_rows(spec.dataset), spec.eval_split, spec.seed)[1]
    if spec.eval_dataset:
        return read_rows(spec.eval_dataset)
    return []


def _same_shape(train: Row, held_out: Row, train_path: Path, eval_path: Path) -> None:
    # The web refuses this before queueing where it can read the files' first rows (app.dataset_shapes);
    # Parquet files and specs from the command line meet it here.
    if train.shape != held_out.shape:
        raise DatasetError(
            f"eval_dataset: {eval_path.name} holds {SHAPE_NAMES[held_out.shape]} rows but dataset {train_path.name} "
            f"holds {SHAPE_NAMES[train.shape]} rows; give an eval file of the same shape, or use eval_split"
        )


def load_training_data(
    spec: RunSpec, tokenizer: PreTrainedTokenizerBase
) -> tuple[TokenizedDataset, TokenizedDataset | None]:
    """The run's train and eval data: eval from spec.eval_dataset, or spec.eval_split of spec.dataset."""

    def tokenize(rows: list[Row], path: Path) -> TokenizedDataset:
        examples = encode_all(rows, tokenizer, spec.chat_template, spec.train_on_prompt, path)
        return TokenizedDataset(_fit(examples, rows, spec.max_seq_length, path.name))

    path = Path(spec.dataset)
    rows, eval_data = read_rows(path), None
    if spec.eval_split:
        rows, eval_rows = split_rows(rows, spec.eval_split, spec.seed)
        eval_data = tokenize(eval_rows, path)
    elif spec.eval_dataset:
        eval_data = load_dataset(
            spec.eval_dataset,
            tokenizer,
            spec.max_seq_length,
            train_on_prompt=spec.train_on_prompt,
            chat_template=spec.chat_template,
        )
    if spec.eval_dataset and rows and eval_data is not None:
        _same_shape(rows[0], read_rows(spec.eval_dataset, limit=1)[0], path, Path(spec.eval_dataset))
    train_data = tokenize(rows, path)
    log.info("dataset: %d train rows, %d eval rows", len(train_data), len(eval_data) if eval_data else 0)
    return train_data, eval_data


@dataclass
class PadCollator:
    """Right-pads a batch: input_ids with the pad id, labels with IGNORE_INDEX, attention_mask 1/0."""

    pad_token_id: int

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(feature["input_ids"]) for feature in features)
        input_ids = torch.full((len(features), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(features), width), dtype=torch.long)
        for i, feature in enumerate(features):
            length = len(feature["input_ids"])
            input_ids[i, :length] = torch.tensor(feature["input_ids"], dtype=torch.long)
            labels[i, :length] = torch.tensor(feature["labels"], dtype=torch.long)
            attention_mask[i, :length] = 1
        return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


@dataclass
class PackedRowsCollator:
    """Padding-free packing in bounded rows: the batch's examples placed best-fit decreasing into rows of at most
    the longest example's length, each example's position_ids restarting at 0 and its first label IGNORE_INDEX
    (the token before it must not learn to predict it), each row's tail filled with pad ids whose labels are
    IGNORE_INDEX and whose position_ids restart at 0 too, so the padding is a "sequence" of its own.

    No attention_mask: transformers reads the restarts in each row's position_ids
    (`masking_utils.find_packed_sequence_indices`, per row of a 2-D batch) and lets each token attend only to
    the earlier tokens of its own example. Attention costs the sum over rows of row length², never more than the
    padded batch's, and the linear layers run on few pad tokens. The loss tokens are those of the padded batch,
    and Trainer's count of them (`labels[..., 1:] != IGNORE_INDEX`) is the same, so the loss is too. A batch in
    which no two examples fit one row is returned padded (PadCollator's layout): the same shapes, a cheaper mask.
    """

    pad_token_id: int

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        lengths = [len(feature["input_ids"]) for feature in features]
        bound = max(lengths)
        rows: list[list[int]] = []
        room: list[int] = []
        for index in sorted(range(len(features)), key=lambda i: -lengths[i]):
            fits = [r for r, free in enumerate(room) if free >= lengths[index]]
            if fits:
                best = min(fits, key=room.__getitem__)
                rows[best].append(index)
                room[best] -= lengths[index]
            else:
                rows.append([index])
                room.append(bound - lengths[index])
        if len(rows) == len(features):
            # Nothing shares a row (uniformly long examples): the padded batch, the same shape, takes sdpa's
            # plain padding-mask path, measured faster than the packed one (0.85x) on the CPU benchmark's long rows.
            return PadCollator(self.pad_token_id)(features)
        width = bound - min(room)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        position_ids = torch.zeros((len(rows), width), dtype=torch.long)
        counting = torch.arange(width, dtype=torch.long)
        for r, members in enumerate(rows):
            at = 0
            for index in sorted(members):
                length, feature = lengths[index], features[index]
                input_ids[r, at : at + length] = torch.tensor(feature["input_ids"], dtype=torch.long)
                labels[r, at + 1 : at + length] = torch.tensor(feature["labels"][1:], dtype=torch.long)
                position_ids[r, at : at + length] = counting[:length]
                at += length
            position_ids[r, at:] = counting[: width - at]
        return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}


def uses_varlen_attention(attn_implementation: str | None) -> bool:
    """Whether the model's attention takes packed sequences as variable-length runs (flash-attention's varlen
    kernels, from the flash-attn package or the kernels hub) rather than through a mask."""
    return bool(is_flash_attention_requested(requested_attention_implementation=attn_implementation))


def make_collator(
    spec: RunSpec, tokenizer: PreTrainedTokenizerBase, attn_implementation: str | None = None
) -> Callable[[list[dict]], dict[str, torch.Tensor]]:
    """Padding, or with spec.packing "on" a padding-free batch of examples whose position_ids restart at 0 for each,
    labels IGNORE_INDEX on each example's first token and no attention_mask.

    transformers sees the restarts in position_ids and keeps each example's attention to itself (sdpa, eager
    and flash attention alike), but only without an attention_mask and without a KV cache: the model must run
    with `config.use_cache = False`, as training does anyway. Which packed layout depends on the attention
    (`attn_implementation`, the model's `config._attn_implementation`):

    - flash attention (varlen kernels): the whole batch in one row (DataCollatorWithFlattening); the kernels
      attend per example, so attention costs the sum of each example's length², and there is no padding at all.
    - anything else (sdpa, the engine's default on CPU and GPU; eager): PackedRowsCollator's bounded rows.
      These implementations keep packed examples apart with a dense mask over the whole row, so one row of the
      whole batch costs (sum of the lengths)² in attention. On the CPU benchmark (bench/packing.py, tiny model,
      LoRA, batch 8, useful tokens/s against the padded batch's): one row was 1.61x on mixed lengths and 0.62x
      on uniformly long rows (2026-11-27); bounded rows 2.13x and 1.02x (2026-12-08; the long rows' batches go
      padded, as nothing shares a row there). See bench/README.md's packing section.
    """
    packing = spec.packing == "on"  # resolved by worker.engine.fastpaths; an unresolved auto pads
    if packing:
        if spec.method == "prompt_tuning":
            # PEFT drops position_ids for prompt tuning, and the packed examples would then see each other.
            raise ValueError("packing: not with method prompt_tuning; turn packing off")
        if uses_varlen_attention(attn_implementation):
            return DataCollatorWithFlattening(return_position_ids=True, separator_id=IGNORE_INDEX)  # type: ignore[no-any-return]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if packing:
        return PackedRowsCollator(pad_token_id=int(pad_id or 0))
    return PadCollator(pad_token_id=int(pad_id or 0))
