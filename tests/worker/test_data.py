"""Rows -> token ids and labels: the loss falls exactly on what the model must learn to write."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from app.config import TINY_MODEL_DIR
from app.schemas import RunSpec
from worker.data.chat import NAMED_TEMPLATES, encode_conversation, render_chat, resolve_chat_template
from worker.data.describe import describe_dataset
from worker.data.encode import (
    IGNORE_INDEX,
    DatasetError,
    PadCollator,
    encode_row,
    encode_row_prompt,
    load_dataset,
    load_training_data,
    make_collator,
    read_rows,
)

DATA = Path(__file__).parent / "data"
PROMPT = "解析地址：臺北市大安區復興南路一段390號2樓\n"
COMPLETION = '{"city":"臺北市","district":"大安區"}'
CHAT = json.loads((DATA / "chat.jsonl").read_text(encoding="utf-8").splitlines()[0])["messages"]


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(TINY_MODEL_DIR)


def _ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _trained_text(tokenizer: PreTrainedTokenizerBase, example: dict[str, list[int]]) -> str:
    return str(tokenizer.decode([label for label in example["labels"] if label != IGNORE_INDEX]))


def _spec(**fields: Any) -> RunSpec:
    return RunSpec(**{"base_model": str(TINY_MODEL_DIR), "dataset": str(DATA / "pc.jsonl"), **fields})


def test_prompt_tokens_are_masked_and_completion_plus_eos_are_learned(tokenizer: PreTrainedTokenizerBase) -> None:
    prompt_ids, completion_ids = _ids(tokenizer, PROMPT), _ids(tokenizer, COMPLETION)
    example = encode_row(tokenizer, PROMPT, COMPLETION, max_seq_length=1024)

    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    assert example["input_ids"] == [bos, *prompt_ids, *completion_ids, eos]
    assert example["labels"] == [IGNORE_INDEX] * (1 + len(prompt_ids)) + [*completion_ids, eos]
    assert _trained_text(tokenizer, example) == COMPLETION + "</s>"

    everything = encode_row(tokenizer, PROMPT, COMPLETION, max_seq_length=1024, train_on_prompt=True)
    assert everything["labels"] == everything["input_ids"] == example["input_ids"]


def test_long_rows_are_cut_to_max_seq_length(tokenizer: PreTrainedTokenizerBase) -> None:
    prompt_length = 1 + len(_ids(tokenizer, PROMPT))
    example = encode_row(tokenizer, PROMPT, COMPLETION, max_seq_length=prompt_length + 3)

    assert len(example["input_ids"]) == len(example["labels"]) == prompt_length + 3
    assert example["labels"][:prompt_length] == [IGNORE_INDEX] * prompt_length
    assert example["labels"][prompt_length:] == _ids(tokenizer, COMPLETION)[:3]
    assert tokenizer.eos_token_id not in example["input_ids"]


def test_rows_with_no_room_for_the_completion_are_skipped(tokenizer: PreTrainedTokenizerBase, tmp_path: Path) -> None:
    short = json.dumps({"prompt": "臺北\n", "completion": "{}"}, ensure_ascii=False)
    long = json.dumps({"prompt": PROMPT * 4, "completion": COMPLETION}, ensure_ascii=False)
    (tmp_path / "train.jsonl").write_text(f"{short}\n{long}\n", encoding="utf-8")
    (tmp_path / "only_long.jsonl").write_text(f"{long}\n", encoding="utf-8")

    assert len(load_dataset(tmp_path / "train.jsonl", tokenizer, max_seq_length=32)) == 1
    with pytest.raises(DatasetError, match="max_seq_length=32"):
        load_dataset(tmp_path / "only_long.jsonl", tokenizer, max_seq_length=32)


def test_a_conversation_trains_the_assistant_turns_and_their_end_token_only(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    # The tiny tokenizer's own template: <|role|>\ncontent\n, and an assistant turn ends with </s>.
    given_1 = "<s><|system|>\nYou answer in one word.\n<|user|>\nCapital of France?\n<|assistant|>\n"
    given_2 = "\n<|user|>\nAnd of Japan?\n<|assistant|>\n"
    pieces = [(given_1, False), ("Paris</s>", True), (given_2, False), ("Tokyo</s>", True), ("\n", False)]
    expected_ids = [token for text, _ in pieces for token in _ids(tokenizer, text)]
    expected_labels = [
        token if trained else IGNORE_INDEX for text, trained in pieces for token in _ids(tokenizer, text)
    ]

    (example,) = load_dataset(DATA / "chat.jsonl", tokenizer, max_seq_length=1024).examples[:1]

    assert (
        example["input_ids"] == expected_ids == _ids(tokenizer, render_chat(tokenizer, tokenizer.chat_template, CHAT))
    )
    assert example["labels"] == expected_labels
    assert _trained_text(tokenizer, example) == "Paris</s>Tokyo</s>"

    (everything,) = load_dataset(DATA / "chat.jsonl", tokenizer, 1024, train_on_prompt=True).examples[:1]
    assert everything["labels"] == everything["input_ids"] == expected_ids


def test_an_answer_that_would_merge_with_the_generation_prompt_keeps_the_prompt_inference_sees(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    # Whole, "...r" + "is" tokenizes as "ri", "s": the prompt must stay "...r", as at inference.
    template = (
        "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}{{ m['content'] }}"
        "{% else %}{{ 'r' + m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'r' }}{% endif %}"
    )
    messages = [{"role": "user", "content": "Q\n"}, {"role": "assistant", "content": "is"}]

    example = encode_conversation(tokenizer, template, messages)

    prompt = _ids(tokenizer, render_chat(tokenizer, template, messages[:1], add_generation_prompt=True))
    assert _ids(tokenizer, render_chat(tokenizer, template, messages)) != example["input_ids"]  # the merge is real
    assert example["input_ids"][: len(prompt)] == prompt
    assert example["labels"] == [IGNORE_INDEX] * len(prompt) + example["input_ids"][len(prompt) :]
    assert _trained_text(tokenizer, example) == "is</s>"


EXPECTED_RENDERINGS = {
    "chatml": "<s><|im_start|>system\nYou answer in one word.<|im_end|>\n<|im_start|>user\nCapital of France?"
    "<|im_end|>\n<|im_start|>assistant\nParis<|im_end|>\n<|im_start|>user\nAnd of Japan?<|im_end|>\n"
    "<|im_start|>assistant\nTokyo<|im_end|>\n",
    "llama-3": "<s><|start_header_id|>system<|end_header_id|>\n\nYou answer in one word.<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nCapital of France?<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\nParis<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nAnd of Japan?<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\nTokyo<|eot_id|>",
    "zephyr": "<s><|system|>\nYou answer in one word.</s>\n<|user|>\nCapital of France?</s>\n"
    "<|assistant|>\nParis</s>\n<|user|>\nAnd of Japan?</s>\n<|assistant|>\nTokyo</s>\n",
    "alpaca": "<s>You answer in one word.\n\n### Instruction:\nCapital of France?\n\n### Response:\nParis</s>\n\n"
    "### Instruction:\nAnd of Japan?\n\n### Response:\nTokyo</s>\n\n",
}
TRAINED = {"chatml": "<|im_end|>", "llama-3": "<|eot_id|>", "zephyr": "</s>", "alpaca": "</s>"}


@pytest.mark.parametrize("name", sorted(NAMED_TEMPLATES))
def test_each_named_template_renders_and_trains_the_answers(
    tokenizer: PreTrainedTokenizerBase, tmp_path: Path, name: str
) -> None:
    template = resolve_chat_template(tokenizer, name)
    (tmp_path / "chat.jsonl").write_text(json.dumps({"messages": CHAT}) + "\n", encoding="utf-8")

    (example,) = load_dataset(tmp_path / "chat.jsonl", tokenizer, 1024, chat_template=name).examples

    assert render_chat(tokenizer, template, CHAT) == EXPECTED_RENDERINGS[name]
    assert tokenizer.decode(example["input_ids"]) == EXPECTED_RENDERINGS[name]
    assert _trained_text(tokenizer, example) == f"Paris{TRAINED[name]}Tokyo{TRAINED[name]}"
    # The generation prompt is exactly where the trained span starts.
    prompt = render_chat(tokenizer, template, CHAT[:2], add_generation_prompt=True)
    first_trained = next(i for i, label in enumerate(example["labels"]) if label != IGNORE_INDEX)
    assert example["input_ids"][:first_trained] == _ids(tokenizer, prompt)


def test_auto_uses_the_tokenizers_template_else_chatml() -> None:
    plain = AutoTokenizer.from_pretrained(TINY_MODEL_DIR)
    assert resolve_chat_template(plain, "auto") == plain.chat_template
    plain.chat_template = None
    assert resolve_chat_template(plain, "auto") == NAMED_TEMPLATES["chatml"]


@pytest.mark.parametrize("shape", ["pc", "chat"])
def test_every_format_gives_the_same_token_ids(tokenizer: PreTrainedTokenizerBase, shape: str) -> None:
    formats = [".jsonl", ".csv", ".parquet"] + ([".json"] if shape == "pc" else [])
    loaded = {suffix: load_dataset(DATA / f"{shape}{suffix}", tokenizer, 256).examples for suffix in formats}

    assert len(loaded[".jsonl"]) >= 3
    for suffix in formats[1:]:
        assert loaded[suffix] == loaded[".jsonl"], suffix


def test_text_rows_train_on_every_token(tokenizer: PreTrainedTokenizerBase) -> None:
    first = load_dataset(DATA / "text.jsonl", tokenizer, 256).examples[0]
    text = "The quick brown fox jumps over the lazy dog."

    assert first["input_ids"] == [1, *_ids(tokenizer, text), 2]
    assert first["labels"] == first["input_ids"]


def test_eval_split_is_deterministic_disjoint_and_seeded(tokenizer: PreTrainedTokenizerBase, tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"text": f"row {i}"}) + "\n" for i in range(40)), encoding="utf-8")

    def split(seed: int) -> tuple[list[str], list[str]]:
        train, held_out = load_training_data(_spec(dataset=str(path), eval_split=0.25, seed=seed), tokenizer)
        assert held_out is not None
        texts = [[str(tokenizer.decode(e["input_ids"][1:-1])) for e in part.examples] for part in (train, held_out)]
        return texts[0], texts[1]

    train, held_out = split(seed=7)
    assert len(held_out) == 10 and len(train) == 30
    assert set(train).isdisjoint(held_out)
    assert sorted(train + held_out) == sorted(f"row {i}" for i in range(40))
    assert split(seed=7) == (train, held_out)
    assert split(seed=8)[1] != held_out


def test_eval_dataset_is_loaded_as_the_eval_data(tokenizer: PreTrainedTokenizerBase) -> None:
    train, held_out = load_training_data(_spec(eval_dataset=str(DATA / "pc.csv")), tokenizer)

    assert held_out is not None and held_out.examples == train.examples
    assert load_training_data(_spec(), tokenizer)[1] is None


def test_a_bad_file_fails_the_run_with_every_bad_line(tokenizer: PreTrainedTokenizerBase) -> None:
    with pytest.raises(DatasetError, match=r"bad\.jsonl has 12 problems:\n  bad\.jsonl line 2: invalid JSON"):
        load_training_data(_spec(dataset=str(DATA / "bad.jsonl")), tokenizer)


def test_collator_pads_ids_masks_labels_and_builds_attention_mask() -> None:
    batch = PadCollator(pad_token_id=0)(
        [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}]
    )

    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_packing_gives_the_loss_of_the_padded_batch(tokenizer: PreTrainedTokenizerBase) -> None:
    examples = [
        *load_dataset(DATA / "chat.jsonl", tokenizer, 256).examples,
        *load_dataset(DATA / "pc.jsonl", tokenizer, 256).examples,
    ]
    # The one-row layout make_collator picks under flash attention (tests/worker/test_packed_rows.py has the
    # bounded rows of sdpa); sdpa reads its position_ids restarts too, so it runs here.
    packed = make_collator(_spec(packing=True), tokenizer, "flash_attention_2")(examples)
    padded = make_collator(_spec(), tokenizer)(examples)

    assert packed["input_ids"].shape == (1, sum(len(e["input_ids"]) for e in examples))
    assert "attention_mask" not in packed
    starts = (packed["position_ids"][0] == 0).nonzero().flatten().tolist()
    assert starts == [sum(len(e["input_ids"]) for e in examples[:i]) for i in range(len(examples))]
    assert all(packed["labels"][0, start] == IGNORE_INDEX for start in starts)

    model = AutoModelForCausalLM.from_pretrained(TINY_MODEL_DIR, dtype=torch.float32)
    model.config.use_cache = False  # as in training: with a KV cache transformers does not look for packing
    assert model.config._attn_implementation == "sdpa"
    with torch.no_grad():
        packed_loss = model(**packed).loss.item()
        padded_loss = model(**padded).loss.item()
    assert packed_loss == pytest.approx(padded_loss, abs=1e-4)


def test_packing_is_refused_for_prompt_tuning(tokenizer: PreTrainedTokenizerBase) -> None:
    # RunSpec refuses it, and the collator too, for a spec that got past validation some other way.
    with pytest.raises(ValueError, match="packing: not with method prompt_tuning"):
        _spec(packing=True, method="prompt_tuning", quantization="none")
    spec = _spec(method="prompt_tuning", quantization="none").model_copy(update={"packing": "on"})
    with pytest.raises(ValueError, match="packing: not with method prompt_tuning"):
        make_collator(spec, tokenizer)


def test_describe_dataset_counts_what_max_seq_length_cuts(tokenizer: PreTrainedTokenizerBase) -> None:
    # pc.jsonl rows are 42, 13, 7 and 16 tokens long, of which bos + prompt are 28, 10, 5 and 9 (the
    # tokenizer gives every Han character a token of its own).
    described = describe_dataset(DATA / "pc.jsonl", tokenizer, max_seq_length=13).model_dump(mode="json")

    assert json.loads(json.dumps(described)) == described
    assert described["rows"] == 4
    assert (described["shape"], described["fields"], described["format"]) == (
        "prompt_completion",
        ["prompt", "completion"],
        "jsonl",
    )
    assert described["tokens"] == {"min": 7, "p50": 13, "p90": 42, "p99": 42, "max": 42, "mean": 19.5, "total": 78}
    assert sum(described["histogram"]["counts"]) == 4
    assert described["histogram"]["edges"][0] == 7 and described["histogram"]["edges"][-1] == 43
    assert (described["truncated_rows"], described["truncated_share"]) == (2, 0.5)
    assert described["dropped_rows"] == 1  # the 28-token prompt leaves no room at 13
    assert described["trained_tokens"] == 3 + 2 + 4
    assert [example["line"] for example in described["examples"]] == [2, 3, 4]
    assert described["examples"][1]["segments"] == [
        {"text": "<s>2+2=", "trained": False},
        {"text": "4</s>", "trained": True},
    ]


def test_describe_dataset_of_a_chat_file_shows_the_template_as_the_model_sees_it(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    described = describe_dataset(DATA / "chat.csv", tokenizer, max_seq_length=512, chat_template="zephyr").model_dump(
        mode="json"
    )

    assert (described["rows"], described["shape"], described["chat_template"]) == (3, "messages", "zephyr")
    assert described["fields"] == ["id", "messages"]
    segments = described["examples"][0]["segments"]
    assert "".join(segment["text"] for segment in segments) == EXPECTED_RENDERINGS["zephyr"]
    assert [segment["text"] for segment in segments if segment["trained"]] == ["Paris</s>", "Tokyo</s>"]


def test_the_prompt_of_any_row_is_what_inference_is_given(tokenizer: PreTrainedTokenizerBase) -> None:
    chat_row = read_rows(DATA / "chat.jsonl")[0]
    pc_row = read_rows(DATA / "pc.jsonl")[0]

    prompt = render_chat(tokenizer, tokenizer.chat_template, CHAT[:2], add_generation_prompt=True)
    assert encode_row_prompt(chat_row, tokenizer) == _ids(tokenizer, prompt)
    assert encode_row_prompt(pc_row, tokenizer) == [1, *_ids(tokenizer, PROMPT)]
