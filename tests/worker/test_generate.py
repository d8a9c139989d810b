"""The playground's decoding: two models in lockstep, token by token, exactly as generate() would."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from app.config import SAMPLE_DATASET_DIR, TINY_MODEL_DIR
from app.schemas import Method, RunSpec
from worker.serving.decoding import chat_prompt
from worker.serving.generate import ModelCache, Sampling, Side, decode_lockstep

PROMPT = "解析地址：臺北市大安區復興南路一段390號2樓\n"


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter with random B weights, so its answers differ from the base's."""
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(TINY_MODEL_DIR, dtype=torch.float32)
    config = LoraConfig(r=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    path = tmp_path_factory.mktemp("adapter")
    get_peft_model(base, config).save_pretrained(str(path))
    return path


def _reference(model: object, ids: torch.Tensor, tokenizer: object, new: int) -> str:
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, do_sample=False)  # type: ignore[attr-defined]
    return str(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))  # type: ignore[attr-defined]


def test_greedy_lockstep_gives_generates_text_for_base_and_adapter_piece_by_piece(adapter_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(TINY_MODEL_DIR)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(TINY_MODEL_DIR), str(adapter_dir)).eval()
    ids = torch.tensor([chat_prompt(tokenizer, PROMPT, chat=False)])
    pieces: list[list[str]] = [[], []]
    texts = decode_lockstep(
        [Side("base", model, None), Side("adapter", model, "default")],
        tokenizer,
        ids,
        Sampling(max_new_tokens=40),
        lambda side, text: pieces[side].append(text),
    )
    with model.disable_adapter():
        base_reference = _reference(model, ids, tokenizer, 40)
    bare = AutoModelForCausalLM.from_pretrained(TINY_MODEL_DIR).eval()
    assert base_reference == _reference(bare, ids, tokenizer, 40)
    assert texts == [base_reference, _reference(model, ids, tokenizer, 40)]
    assert texts[0] != texts[1]
    for side in (0, 1):
        assert len(pieces[side]) > 5, pieces[side]  # the text grows over many events, not in one
        assert "".join(pieces[side]) == texts[side]
        assert "\ufffd" not in "".join(pieces[side])  # no piece ends inside a character


def test_sampling_follows_its_seed(adapter_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(TINY_MODEL_DIR)
    model = AutoModelForCausalLM.from_pretrained(TINY_MODEL_DIR).eval()
    ids = torch.tensor([chat_prompt(tokenizer, "The weather", chat=False)])

    def sample(seed: int) -> str:
        sides = [Side("base", model, None)]
        return decode_lockstep(sides, tokenizer, ids, Sampling(1.0, 0.95, 30, seed), lambda *_: None)[0]

    assert sample(1) == sample(1)
    assert len({sample(seed) for seed in range(4)}) > 1


def test_the_cache_loads_a_base_and_an_adapter_once_and_lets_the_oldest_go(adapter_dir: Path) -> None:
    cache = ModelCache(capacity=1, idle_s=600)
    spec = RunSpec(base_model=str(TINY_MODEL_DIR), dataset=str(SAMPLE_DATASET_DIR / "train.jsonl"), method=Method.lora)
    first = cache.base(spec)
    cache.with_adapter(first, adapter_dir)
    again = cache.base(spec)
    model, name = cache.with_adapter(again, adapter_dir)
    assert again is first and cache.loads == 2  # one base, one adapter
    assert isinstance(model, PeftModel) and name in model.peft_config
    # A QLoRA run answers on the same full-precision base: the one it ships against, as its evaluation does.
    quantized = spec.model_copy(update={"quantization": "4bit", "method": "qlora"})
    assert cache.base(quantized) is first and cache.loads == 2
    cache.merged(TINY_MODEL_DIR, spec)  # another model
    assert cache.loads == 3 and len(cache.loaded) == 1  # capacity 1: the base was let go
