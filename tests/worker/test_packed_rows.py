"""Packing without flash attention: the batch's examples in bounded rows (PackedRowsCollator), each example
attending only to itself, the loss that of the padded batch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorWithFlattening, PreTrainedTokenizerBase

from app.config import TINY_MODEL_DIR
from app.models import RunStatus
from tests.worker.conftest import TRAIN, create_run, read_run, run_spec, train_points
from worker.data.chat import IGNORE_INDEX
from worker.data.encode import PackedRowsCollator, PadCollator, load_dataset, make_collator
from worker.engine.train import run_training

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(TINY_MODEL_DIR)


@pytest.fixture(scope="module")
def model() -> Any:
    model = AutoModelForCausalLM.from_pretrained(TINY_MODEL_DIR, dtype=torch.float32)
    model.config.use_cache = False  # as in training: with a KV cache transformers does not look for packing
    assert model.config._attn_implementation == "sdpa"
    return model.eval()


def _examples(tokenizer: PreTrainedTokenizerBase) -> list[dict[str, list[int]]]:
    """Real rows of unequal lengths: conversations, prompt/completion rows, and the sample's addresses."""
    return [
        *load_dataset(DATA / "chat.jsonl", tokenizer, 256).examples,
        *load_dataset(DATA / "pc.jsonl", tokenizer, 256).examples,
        *load_dataset(TRAIN, tokenizer, 256).examples[:6],
    ]


def _loss_tokens(batch: dict[str, torch.Tensor]) -> int:
    """What Trainer counts as num_items_in_batch for a causal LM: labels[..., 1:] that are not IGNORE_INDEX."""
    return int((batch["labels"][..., 1:] != IGNORE_INDEX).sum())


def test_packing_picks_bounded_rows_unless_flash_attention_attends_per_example(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    packing = run_spec(packing=True)
    assert isinstance(make_collator(packing, tokenizer), PackedRowsCollator)
    for implementation in ("sdpa", "eager", "flex_attention"):
        assert isinstance(make_collator(packing, tokenizer, implementation), PackedRowsCollator)
    for implementation in ("flash_attention_2", "flash_attention_3", "kernels-community/flash-attn2"):
        assert isinstance(make_collator(packing, tokenizer, implementation), DataCollatorWithFlattening)
    assert isinstance(make_collator(run_spec(), tokenizer, "flash_attention_2"), PadCollator)


def test_rows_hold_each_example_whole_with_its_positions_and_labels(tokenizer: PreTrainedTokenizerBase) -> None:
    examples = _examples(tokenizer)
    lengths = [len(e["input_ids"]) for e in examples]
    batch = PackedRowsCollator(pad_token_id=0)(examples)
    padded = PadCollator(pad_token_id=0)(examples)

    assert set(batch) == {"input_ids", "labels", "position_ids"}  # an attention_mask would turn packing off
    rows, width = batch["input_ids"].shape
    assert width <= max(lengths) and rows < len(examples)
    assert batch["input_ids"].numel() < padded["input_ids"].numel()

    # Cut each row where position_ids restart: the pieces are the examples (each once, whole) and the padding.
    found = []
    for r in range(rows):
        positions = batch["position_ids"][r].tolist()
        starts = [i for i, p in enumerate(positions) if p == 0] + [width]
        for start, end in zip(starts, starts[1:], strict=False):
            assert positions[start:end] == list(range(end - start))
            ids, labels = batch["input_ids"][r, start:end].tolist(), batch["labels"][r, start:end].tolist()
            matches = [i for i, e in enumerate(examples) if e["input_ids"] == ids]
            if matches:
                (index,) = [i for i in matches if i not in found][:1]
                found.append(index)
                # Its first label is never learned (in a padded row nothing predicts it either), the rest kept.
                assert labels == [IGNORE_INDEX, *examples[index]["labels"][1:]]
            else:  # the row's tail: pad ids, nothing to learn
                assert end == width and set(ids) == {0} and set(labels) == {IGNORE_INDEX}
    assert sorted(found) == list(range(len(examples)))
    assert _loss_tokens(batch) == _loss_tokens(padded)


def test_bounded_rows_give_the_padded_batchs_loss(tokenizer: PreTrainedTokenizerBase, model: Any) -> None:
    examples = _examples(tokenizer)
    packed = make_collator(run_spec(packing=True), tokenizer)(examples)
    padded = make_collator(run_spec(), tokenizer)(examples)
    count = _loss_tokens(padded)
    assert _loss_tokens(packed) == count

    with torch.no_grad():
        losses = [model(**batch).loss.item() for batch in (packed, padded)]
        # As Trainer computes it: the summed loss over its own count of loss tokens.
        counted = [model(**batch, num_items_in_batch=torch.tensor(count)).loss.item() for batch in (packed, padded)]
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)
    assert counted[0] == pytest.approx(counted[1], abs=1e-5)
    assert counted[1] == pytest.approx(losses[1], abs=1e-5)


def test_each_packed_example_sees_only_itself(tokenizer: PreTrainedTokenizerBase, model: Any) -> None:
    examples = _examples(tokenizer)
    changed = [dict(e) for e in examples]
    # The longest example shares no row; change the example that shares its row with the most others instead.
    before = PackedRowsCollator(pad_token_id=0)(examples)
    row = int((before["position_ids"] == 0).sum(-1).argmax())
    neighbours = [i for i, e in enumerate(examples) if _row_of(before, e["input_ids"]) == row]
    assert len(neighbours) >= 2
    victim = neighbours[0]
    changed[victim] = {
        "input_ids": [(t + 7) % 1000 + 3 for t in examples[victim]["input_ids"]],
        "labels": examples[victim]["labels"],
    }
    after = PackedRowsCollator(pad_token_id=0)(changed)
    assert torch.equal(before["position_ids"], after["position_ids"])  # the same layout

    with torch.no_grad():
        logits = [model(**batch).logits for batch in (before, after)]
    same = before["input_ids"] == after["input_ids"]
    assert not same.all()
    # Every token of every other example (and the padding) gives the same logits; the changed one's differ.
    assert torch.allclose(logits[0][same], logits[1][same], atol=1e-5)
    assert not torch.allclose(logits[0][~same], logits[1][~same], atol=1e-3)


def _row_of(batch: dict[str, torch.Tensor], ids: list[int]) -> int | None:
    for r, row in enumerate(batch["input_ids"].tolist()):
        for start in range(len(row) - len(ids) + 1):
            if row[start : start + len(ids)] == ids and batch["position_ids"][r, start] == 0:
                return r
    return None


def test_a_packed_run_trains_with_the_padded_runs_losses(loradeck_env: dict[str, str]) -> None:
    # No LoRA dropout: its random masks are drawn over the batch's shape, which packing changes.
    spec = {"method": "lora", "max_steps": 4, "per_device_train_batch_size": 8, "save_steps": 0, "lora_dropout": 0.0}
    losses = {}
    for packing in ("auto", "off"):  # auto packs the tiny Llama (worker.engine.fastpaths)
        run_id = create_run(spec, packing=packing)
        run_training(run_id)
        run = read_run(run_id)
        assert run.status == RunStatus.succeeded, run.error
        chosen = {path["name"]: path["chosen"] for path in run.fast_paths or []}
        assert chosen["packing"] == ("on" if packing == "auto" else "off")
        points = train_points(run_id)
        assert [p.step for p in points] == [1, 2, 3, 4]
        losses[packing] = [p.loss for p in points]
    # The same batches and loss tokens, so the same losses step by step (float sums in another order).
    assert losses["auto"] == pytest.approx(losses["off"], abs=1e-4)


def test_a_batch_with_nothing_to_pack_is_the_padded_batch() -> None:
    # No two of these fit in a row of the longest one's length: packing would only change the mask path.
    examples = [{"input_ids": [5 + i] * length, "labels": [7] * length} for i, length in enumerate((9, 6, 8))]
    packed = PackedRowsCollator(pad_token_id=0)(examples)
    padded = PadCollator(pad_token_id=0)(examples)
    assert packed.keys() == padded.keys() == {"input_ids", "labels", "attention_mask"}
    assert all(torch.equal(packed[key], padded[key]) for key in padded)
