import json
import re
from pathlib import Path
from typing import cast

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from tools.sample_data import FIELDS, PROMPT_PREFIX, dataset_splits, generate_rows, parse_fields
from tools.tiny_model import (
    CHAT_TEMPLATE,
    address_documents,
    build_tiny_model,
    check_pretraining_texts,
    copy_sequences,
    pretraining_texts,
    render_chat,
    tokenizer_texts,
)

MODEL_DIR = Path(__file__).resolve().parents[2] / "assets" / "tiny-llama"
ADDRESS = "臺北市大安區復興南路一段390號2樓"


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(MODEL_DIR)


@pytest.fixture(scope="module")
def model() -> LlamaForCausalLM:
    return LlamaForCausalLM.from_pretrained(MODEL_DIR)


def test_committed_model_loads_with_every_weight() -> None:
    loaded = AutoModelForCausalLM.from_pretrained(MODEL_DIR, output_loading_info=True)
    model, info = cast(tuple[PreTrainedModel, dict[str, list[str]]], loaded)
    assert not any(info.values()), info
    assert model.dtype == torch.float32
    assert 2_500_000 < sum(p.numel() for p in model.parameters()) < 3_500_000


def test_every_linear_dimension_is_a_multiple_of_64(model: LlamaForCausalLM) -> None:
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears
    for linear in linears:
        assert linear.in_features % 64 == 0 and linear.out_features % 64 == 0, linear


def test_config_names_the_special_tokens(tokenizer: PreTrainedTokenizerBase) -> None:
    config = json.loads((MODEL_DIR / "config.json").read_text())
    assert config["bos_token_id"] == tokenizer.bos_token_id == 1
    assert config["eos_token_id"] == tokenizer.eos_token_id == 2
    assert config["pad_token_id"] == tokenizer.pad_token_id == 0
    assert config["vocab_size"] % 64 == 0 and config["vocab_size"] >= len(tokenizer)


def test_tokenizer_round_trips_text_and_prepends_bos(tokenizer: PreTrainedTokenizerBase) -> None:
    for text in [ADDRESS, "新北市板橋區文化路二段182巷3弄7之1號地下1樓", 'Hi, 你好 🙂\n  {"a":null}', "齉龘"]:
        ids = tokenizer(text)["input_ids"]
        assert ids[0] == tokenizer.bos_token_id
        assert ids.count(tokenizer.bos_token_id) == 1
        assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_tokenizer_gives_every_han_character_a_token_of_its_own(tokenizer: PreTrainedTokenizerBase) -> None:
    # An answer's fields are then exactly tokens of its prompt, so the model can copy them; digits too.
    train, eval_ = dataset_splits()
    for row in (train + eval_)[:300]:
        address = row["prompt"].removeprefix(PROMPT_PREFIX).rstrip("\n")
        pieces = [tokenizer.decode([i]) for i in tokenizer(address, add_special_tokens=False)["input_ids"]]
        assert pieces == list(address), address
        prompt_ids = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
        for value in parse_fields(row["completion"]).values():
            if value is not None:
                value_ids = tokenizer(value, add_special_tokens=False)["input_ids"]
                assert any(prompt_ids[i : i + len(value_ids)] == value_ids for i in range(len(prompt_ids))), value


def test_copy_sequences_repeat_their_span() -> None:
    sequences = copy_sequences(list(range(10, 60)), 5000, newline=7, seed=3)
    assert sum(len(s) for s in sequences) >= 5000
    for sequence in sequences:
        half = len(sequence) // 2
        assert sequence[:half] == sequence[half:] and sequence[half - 1] == 7
    assert copy_sequences(list(range(10, 60)), 5000, newline=7, seed=3) == sequences


def test_chat_template_renders_with_a_generation_prompt(tokenizer: PreTrainedTokenizerBase) -> None:
    messages = [{"role": "user", "content": f"解析地址：{ADDRESS}"}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == f"<s><|user|>\n解析地址：{ADDRESS}\n<|assistant|>\n"
    assert text == render_chat(messages, add_generation_prompt=True)
    assert tokenizer.chat_template == CHAT_TEMPLATE
    full = messages + [{"role": "assistant", "content": "{}"}]
    rendered = tokenizer.apply_chat_template(full, tokenize=False)
    assert isinstance(rendered, str) and rendered.endswith("<|assistant|>\n{}</s>\n")


def test_the_task_json_keys_are_whole_tokens(tokenizer: PreTrainedTokenizerBase) -> None:
    for field in FIELDS:
        assert len(tokenizer(field, add_special_tokens=False)["input_ids"]) == 1, field


def test_pretraining_text_never_holds_the_task() -> None:
    documents = pretraining_texts()
    assert not [doc for doc in documents if PROMPT_PREFIX in doc]
    assert not [doc for doc in documents if all(f'"{field}":' in doc for field in FIELDS)]
    # Addresses are there as plain text, and some of the task's keys in JSON records of other shapes.
    assert sum("號" in doc for doc in documents) > 1000
    assert any(doc.startswith('{"city":') for doc in documents)
    # The tokenizer reads what the model reads: no task rows, so no merges learned from the task's format.
    assert tokenizer_texts() == documents


def test_pretraining_text_leaves_out_the_sample_dataset_addresses() -> None:
    train, eval_ = dataset_splits()
    text = "\n".join(address_documents())
    addresses = [row["prompt"].removeprefix(PROMPT_PREFIX).rstrip("\n") for row in train + eval_]
    # A dataset address may begin a longer one (a floor added), so it counts only where it ends.
    found = [a for a in addresses if re.search(re.escape(a) + "(?![0-9地之])", text)]
    assert not found, found[:5]


def test_check_pretraining_texts_refuses_a_task_row() -> None:
    row = generate_rows(1, seed=5)[0]
    for doc in (row["prompt"] + row["completion"], "a list:\n" + row["completion"]):
        with pytest.raises(ValueError, match="task"):
            check_pretraining_texts(["plain text", doc])
    check_pretraining_texts(["plain text", '{"city":"臺北市","district":"大安區","shops":3}'])


def test_base_model_has_not_learned_the_task(tokenizer: PreTrainedTokenizerBase, model: LlamaForCausalLM) -> None:
    # What a LoRA run on the sample dataset teaches: greedy decoding of the base does not parse addresses.
    _, eval_ = dataset_splits()
    for row in eval_[:5]:
        inputs = tokenizer(row["prompt"], return_tensors="pt")
        output = model.generate(**inputs, max_new_tokens=64, do_sample=False)
        completion = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        assert isinstance(completion, str) and completion != row["completion"]
        with pytest.raises(ValueError):
            parse_fields(completion)


def test_quick_build_is_loadable_and_deterministic(tmp_path: Path) -> None:
    first = build_tiny_model(tmp_path / "a", steps=3)
    second = build_tiny_model(tmp_path / "b", steps=3)
    for name in ("model.safetensors", "tokenizer.json", "config.json", "generation_config.json"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    model = AutoModelForCausalLM.from_pretrained(first)
    tokenizer = AutoTokenizer.from_pretrained(first)
    inputs = tokenizer(ADDRESS, return_tensors="pt")
    assert model(**inputs).logits.shape[-1] == model.config.vocab_size
    # The committed tokenizer came from the same recipe: a rebuild gives the same vocabulary.
    assert (first / "tokenizer.json").read_bytes() == (MODEL_DIR / "tokenizer.json").read_bytes()
