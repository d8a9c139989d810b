"""The pre-flight estimate against the real thing: the parameter counts PEFT prints for the model training
loads (bitsandbytes quantization included), the bytes of its weights, the tensors a real training step keeps
for the backward pass; and an 8B model from its config.json alone, in seconds."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

from app.config import SAMPLE_DATASET_DIR, TINY_MODEL_DIR
from app.schemas import RunSpec
from worker.engine.estimate import answer_estimate, estimate_spec
from worker.engine.steps import apply_adapter, load_model

LLAMA_8B = Path(__file__).parent / "configs" / "llama-8b"
DATASET = str(SAMPLE_DATASET_DIR / "train.jsonl")
GB = 10**9

# Meta-Llama-3-8B by hand: embeddings, 32 x (attention + SwiGLU MLP + 2 norms), final norm, lm_head.
H, FFN, KV, V, LAYERS, R = 4096, 14336, 1024, 128256, 32, 8
LINEAR_8B = LAYERS * (2 * H * H + 2 * H * KV + 3 * H * FFN)
ALL_8B = V * H + LINEAR_8B + LAYERS * 2 * H + H + V * H
LORA_QV_8B = LAYERS * (R * H + H * R + R * H + KV * R)  # q_proj: A r x 4096, B 4096 x r; v_proj: B 1024 x r


def make_spec(base_model: Path | str = TINY_MODEL_DIR, **overrides: Any) -> RunSpec:
    return RunSpec(base_model=str(base_model), dataset=DATASET, **overrides)


def loaded(spec: RunSpec) -> Any:
    """The PEFT model as training builds it: real weights, real bitsandbytes quantization."""
    return apply_adapter(load_model(spec), spec)


SPECS: dict[str, dict[str, Any]] = {
    "qlora default (all-linear, nf4, double quant)": {},
    "qlora fp4 without double quant": {"bnb_4bit_quant_type": "fp4", "bnb_4bit_use_double_quant": False},
    "lora q_proj,v_proj": {"method": "lora", "target_modules": "q_proj,v_proj"},
    "lora 8-bit base": {"method": "lora", "quantization": "8bit"},
    "lora dora + modules_to_save lm_head": {"method": "lora", "use_dora": True, "modules_to_save": "lm_head"},
    "qlora rslora dora r=16": {"r": 16, "use_rslora": True, "use_dora": True, "modules_to_save": "embed_tokens"},
    "ia3 default modules": {"method": "ia3"},
    "ia3 named modules": {
        "method": "ia3",
        "target_modules": "q_proj,v_proj,down_proj",
        "feedforward_modules": "down_proj",
    },
    "prompt tuning": {"method": "prompt_tuning", "num_virtual_tokens": 20},
}


@pytest.mark.parametrize("overrides", SPECS.values(), ids=SPECS.keys())
def test_counts_equal_what_peft_prints_for_the_loaded_model(
    overrides: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    spec = make_spec(**overrides)
    model = loaded(spec)
    capsys.readouterr()
    model.print_trainable_parameters()
    printed = capsys.readouterr().out.strip()

    params = estimate_spec(spec).params.model_dump()

    assert (params["trainable"], params["all"]) == model.get_nb_trainable_parameters()
    estimated = (
        f"trainable params: {params['trainable']:,d} || all params: {params['all']:,d} "
        f"|| trainable%: {params['percent']:.4f}"
    )
    assert estimated == printed


@pytest.fixture(scope="module")
def odd_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Random-weight models with what the tiny Llama lacks: biases, tied embeddings, 4-bit weights of an odd
    number of values (stored as one extra half byte), GPT-2's Conv1D layers."""
    configs = {
        "llama-odd": LlamaConfig(
            hidden_size=45,
            intermediate_size=63,
            num_attention_heads=5,
            num_key_value_heads=5,
            head_dim=10,
            num_hidden_layers=2,
            vocab_size=101,
            attention_bias=True,
            mlp_bias=True,
            tie_word_embeddings=True,
        ),
        "gpt2": GPT2Config(
            n_embd=48, n_layer=2, n_head=4, vocab_size=101, n_positions=64, bos_token_id=0, eos_token_id=0
        ),
    }
    paths = {}
    for name, config in configs.items():
        torch.manual_seed(0)
        path = tmp_path_factory.mktemp(name)
        AutoModelForCausalLM.from_config(config).save_pretrained(path)
        paths[name] = path
    return paths


@pytest.mark.parametrize("model_name", ["llama-odd", "gpt2"])
@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"bias": "all"},
        {"bias": "lora_only", "modules_to_save": "lm_head"},
        {"method": "lora", "quantization": "8bit"},
    ],
    ids=["qlora", "qlora bias all", "qlora bias lora_only + lm_head", "lora 8-bit"],
)
def test_counts_equal_the_loaded_model_with_biases_ties_and_odd_sizes(
    odd_models: dict[str, Path], model_name: str, overrides: dict[str, Any]
) -> None:
    spec = make_spec(odd_models[model_name], **overrides)
    params = estimate_spec(spec).params.model_dump()
    assert (params["trainable"], params["all"]) == loaded(spec).get_nb_trainable_parameters()


def _stored_bytes(model: torch.nn.Module) -> int:
    """Bytes the loaded model's parameters occupy, quantization constants included (shared code maps aside)."""
    total = 0
    for param in model.parameters():
        kind = type(param).__name__
        total += param.numel() * param.element_size()
        if kind == "Params4bit":
            state = param.quant_state
            total += state.absmax.numel() * state.absmax.element_size() + state.code.numel() * 4
            if state.nested:
                total += state.state2.absmax.numel() * 4 + 4  # second-level absmax and the offset
        elif kind == "Int8Params":
            total += param.SCB.numel() * param.SCB.element_size()
    return total


@pytest.mark.parametrize(
    "overrides",
    [{}, {"bnb_4bit_use_double_quant": False}, {"method": "lora", "quantization": "8bit"}],
    ids=["4-bit double quant", "4-bit", "8-bit"],
)
def test_weight_bytes_equal_the_quantized_model(overrides: dict[str, Any]) -> None:
    spec = make_spec(**overrides)
    memory = estimate_spec(spec).memory.model_dump()
    # A k-bit base's other tensors are upcast to fp32 for training, so the GPU's dtype does not matter here.
    assert memory["weights"] + memory["adapter"] == _stored_bytes(loaded(spec))


def _kept_for_backward(model: torch.nn.Module, spec: RunSpec) -> int:
    """Bytes of the tensors one real training forward pass keeps for the backward pass, plus the logits
    and their gradient (alive at the step's peak, not saved by autograd)."""
    storages: dict[int, int] = {}
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    batch, length = spec.per_device_train_batch_size, spec.max_seq_length
    ids = torch.randint(3, model.config.vocab_size, (batch, length))
    mask = torch.ones_like(ids)
    mask[0, -5:] = 0  # padding, as the collator makes
    model.train()
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        logits = model(input_ids=ids, attention_mask=mask, labels=ids).logits
    return sum(storages.values()) + logits.numel() * (logits.element_size() + 4)


@pytest.mark.parametrize(
    "overrides",
    [
        {"method": "lora", "lora_dropout": 0.0},
        {"target_modules": "q_proj,v_proj", "lora_dropout": 0.0, "bnb_4bit_compute_dtype": "float32"},
        {"method": "lora", "lora_dropout": 0.0, "use_dora": True},
        {"method": "ia3"},
    ],
    ids=["lora all-linear", "qlora q_proj,v_proj", "dora", "ia3"],
)
def test_activations_match_a_real_training_step(overrides: dict[str, Any]) -> None:
    # fp32 on both sides: a CPU trains in fp32. (Dropout is left out: on a CPU its mask is fp32, on a GPU bool.)
    spec = make_spec(precision="fp32", per_device_train_batch_size=4, max_seq_length=128, **overrides)
    estimated = estimate_spec(spec).memory.activations
    real = _kept_for_backward(loaded(spec), spec)
    assert 0.9 * real <= estimated <= 1.1 * real


def test_an_8b_model_from_config_json_alone_in_seconds() -> None:
    assert sorted(path.name for path in LLAMA_8B.iterdir()) == ["config.json"]  # no weights, no tokenizer
    started = time.monotonic()
    full = estimate_spec(make_spec(LLAMA_8B, method="lora", target_modules="q_proj,v_proj", precision="bf16"))
    qlora = estimate_spec(make_spec(LLAMA_8B))  # all-linear r=8 on NF4
    elapsed = time.monotonic() - started

    assert full.params.all - full.params.trainable == ALL_8B == 8_030_261_248
    assert full.params.trainable == LORA_QV_8B == 3_407_872
    assert full.params.percent == pytest.approx(100 * LORA_QV_8B / (ALL_8B + LORA_QV_8B))
    assert full.model.model_dump() == {
        "architecture": "LlamaForCausalLM",
        "layers": 32,
        "hidden_size": 4096,
        "vocab_size": 128256,
        "dtype": "bfloat16",
        "quantization": "none",
        "target_choices": {
            "attention only": "q_proj, k_proj, v_proj, o_proj",
            "all linear": "all-linear",
            "with embeddings": "q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, embed_tokens, lm_head",
        },
    }
    lora_all_linear = LAYERS * R * (2 * (H + H) + 2 * (H + KV) + 3 * (H + FFN))
    assert qlora.params.trainable == lora_all_linear == 20_971_520
    assert qlora.params.all == ALL_8B + lora_all_linear  # every 4-bit weight here has an even size
    assert elapsed < 20, f"the 8B estimates took {elapsed:.1f} s"


def _memory(**overrides: Any) -> dict[str, int]:
    return estimate_spec(make_spec(LLAMA_8B, **overrides)).memory.model_dump()


def test_8b_memory_by_quantization() -> None:
    four = _memory(method="lora", quantization="4bit")
    eight = _memory(method="lora", quantization="8bit")
    half = _memory(method="lora", quantization="none", precision="bf16")
    assert four["weights"] < eight["weights"] < half["weights"]
    # bf16: 2 bytes a parameter. k-bit: the linear layers quantized, embeddings and lm_head (1.05B) in fp32,
    # as prepare_model_for_kbit_training upcasts them: 4.2 GB of the 4-bit base's 7.8 GB.
    assert half["weights"] == 2 * ALL_8B
    others = ALL_8B - LINEAR_8B
    assert 0.51 * LINEAR_8B < four["weights"] - 4 * others < 0.53 * LINEAR_8B  # 4 bits + absmax constants
    assert 1.0 * LINEAR_8B < eight["weights"] - 4 * others < 1.01 * LINEAR_8B  # 8 bits + row scales
    assert 7.0 * GB < four["weights"] < 8.5 * GB
    for memory in (four, eight, half):
        assert memory["total"] == sum(value for key, value in memory.items() if key != "total")


def test_8b_memory_by_training_settings() -> None:
    base = _memory()
    assert _memory(gradient_checkpointing=True)["activations"] < base["activations"] / 3
    assert _memory(per_device_train_batch_size=16)["activations"] > 1.9 * base["activations"]
    assert _memory(max_seq_length=512)["activations"] > 1.9 * base["activations"]
    # AdamW: two fp32 states per trained (fp32) value; 8-bit AdamW about a quarter of that; SGD none.
    assert base["optimizer"] == 2 * base["gradients"] == 2 * 4 * 20_971_520
    assert 0.25 * base["optimizer"] < _memory(optim="adamw_8bit")["optimizer"] < 0.27 * base["optimizer"]
    assert _memory(optim="sgd")["optimizer"] == 0
    assert _memory(r=64)["adapter"] == 8 * base["adapter"]


def test_a_hub_id_reads_config_json_from_the_local_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    # The layout `huggingface-cli download` leaves: refs/main names a snapshot holding the files.
    repo = tmp_path / "models--meta-llama--Meta-Llama-3-8B"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_bytes((LLAMA_8B / "config.json").read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))

    estimate = estimate_spec(make_spec("meta-llama/Meta-Llama-3-8B", method="lora", target_modules="q_proj,v_proj"))
    assert estimate.params.all == ALL_8B + LORA_QV_8B


def test_refusals_name_the_field() -> None:
    bad_rank = answer_estimate(
        {"base_model": str(TINY_MODEL_DIR), "dataset": DATASET, "r": 0}, enforce_roots=False
    ).model_dump()
    assert bad_rank["ok"] is False and bad_rank["error"].startswith("r: ")

    unknown = answer_estimate(
        {"base_model": str(TINY_MODEL_DIR), "dataset": DATASET, "target_modules": ["qkv"]}, enforce_roots=False
    ).model_dump()
    assert unknown["ok"] is False and unknown["error"].startswith("target_modules: qkv not found")

    hub = answer_estimate(
        {"base_model": "nobody-here/no-such-model-7b", "dataset": DATASET}, enforce_roots=False
    ).model_dump()
    assert hub["ok"] is False
    assert hub["error"].startswith("base_model: nobody-here/no-such-model-7b is a hub id")
    assert "Hugging Face cache" in hub["error"]

    good = answer_estimate(make_spec().model_dump(mode="json"), enforce_roots=False).model_dump()
    assert good["ok"] is True and good["estimate"]["params"]["trainable"] > 0


def test_8b_memory_of_a_pair_counts_both_answers_and_the_reference() -> None:
    # A pair puts two sequences through the model (chosen and rejected); DPO and KTO also run a reference
    # forward without grad, ORPO has no reference.
    sft_double = _memory(method="lora", per_device_train_batch_size=8)["activations"]
    orpo = _memory(method="lora", objective="orpo", per_device_train_batch_size=4)["activations"]
    dpo = _memory(method="lora", objective="dpo", per_device_train_batch_size=4)["activations"]
    assert orpo == sft_double
    assert sft_double < dpo < 1.2 * sft_double
    assert _memory(method="lora", objective="kto", per_device_train_batch_size=4)["activations"] == dpo
