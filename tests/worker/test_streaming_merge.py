"""The streaming merge: its output loads with stock transformers and computes what PEFT computes."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from peft import IA3Config, LoraConfig, PeftConfig, PeftModel, PromptTuningConfig, get_peft_model
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from app.config import TINY_MODEL_DIR
from worker.merge.model_card import write_sha256sums
from worker.merge.safetensors_io import INDEX_FILE, ShardWriter, TensorSpec, verify_shard
from worker.merge.streaming import UnmergeableAdapter, merge_adapter_streaming

PARITY = 1e-4  # fp32 logits, streaming merge vs PEFT: only summation order may differ


TINY_VOCAB = int(json.loads((TINY_MODEL_DIR / "config.json").read_text())["vocab_size"])


def _ids(vocab: int) -> torch.Tensor:
    return torch.randint(3, vocab, (2, 24), generator=torch.Generator().manual_seed(7))


def _load(path: Path, **kwargs: object) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(path, **{"dtype": torch.float32, **kwargs}).eval()


@torch.no_grad()
def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return model.eval()(input_ids=ids).logits.float()


def _make_adapter(base: Path, config: PeftConfig, out: Path, seed: int = 0) -> Path:
    """An adapter as training would leave it: every trainable tensor moved away from its init (LoRA's B
    starts at zero, (IA)³ at one, DoRA's magnitude at the weight norm) by a seeded random amount."""
    model = get_peft_model(_load(base), config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue
            noise = torch.randn(param.shape, generator=generator)
            if "lora_" in name and "magnitude" not in name:
                param.copy_(noise * 0.05)
            else:  # (IA)³ vectors, DoRA magnitudes, modules_to_save copies, trained biases: scale them
                param.mul_(1 + 0.1 * noise)
    model.save_pretrained(str(out))
    return out


def _peft_merged(base: Path, adapter: Path, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """PEFT's own answer: adapter-on-base logits, then merge_and_unload() logits."""
    with_adapter = PeftModel.from_pretrained(_load(base), str(adapter))
    return _logits(with_adapter, ids), _logits(with_adapter.merge_and_unload(), ids)


LORA_CASES: dict[str, Callable[[], PeftConfig]] = {
    "lora": lambda: LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]),
    "rslora": lambda: LoraConfig(r=16, lora_alpha=8, use_rslora=True, target_modules=["q_proj", "o_proj", "up_proj"]),
    "dora": lambda: LoraConfig(r=4, lora_alpha=8, use_dora=True, target_modules=["q_proj", "k_proj", "down_proj"]),
    "dora_embedding": lambda: LoraConfig(r=4, use_dora=True, target_modules=["embed_tokens", "v_proj"]),
    "patterns": lambda: LoraConfig(
        r=8,
        lora_alpha=16,
        target_modules="all-linear",
        rank_pattern={"q_proj": 2, "layers.1.mlp.down_proj": 12},
        alpha_pattern={"v_proj": 64, "layers.3.mlp.gate_proj": 3},
    ),
    "modules_to_save": lambda: LoraConfig(r=4, target_modules=["q_proj"], modules_to_save=["lm_head"]),
    "all_linear": lambda: LoraConfig(r=8, lora_alpha=32, target_modules="all-linear"),
    "ia3": lambda: IA3Config(target_modules=["k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"]),
}


@pytest.mark.parametrize("case", sorted(LORA_CASES))
def test_merge_matches_peft_merge_and_unload(case: str, tmp_path: Path) -> None:
    adapter = _make_adapter(TINY_MODEL_DIR, LORA_CASES[case](), tmp_path / "adapter")
    summary = merge_adapter_streaming(TINY_MODEL_DIR, adapter, tmp_path / "merged")

    ids = _ids(TINY_VOCAB)
    with_adapter, peft_merged = _peft_merged(TINY_MODEL_DIR, adapter, ids)
    merged = _logits(_load(tmp_path / "merged"), ids)  # stock loading, nothing of loradeck's
    assert (merged - peft_merged).abs().max() < PARITY
    assert (merged - with_adapter).abs().max() < PARITY
    assert (merged - _logits(_load(TINY_MODEL_DIR), ids)).abs().max() > 1e-3  # the adapter did something
    assert summary["dtype"] == "float32" and summary["shards"] == ["model.safetensors"]
    assert summary["merged_tensors"] > 0
    assert {"config.json", "generation_config.json", "tokenizer.json"} <= {
        p.name for p in (tmp_path / "merged").iterdir()
    }


def _tiny_llama(out: Path, **overrides: object) -> Path:
    """A random tiny Llama saved like a hub checkpoint; with tie_word_embeddings only the embedding is stored."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        **overrides,
    )
    LlamaForCausalLM(config).save_pretrained(out)
    shutil.copy(TINY_MODEL_DIR / "tokenizer.json", out)  # any tokenizer: these tests feed token ids
    return out


@pytest.fixture(scope="module")
def tied_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = _tiny_llama(tmp_path_factory.mktemp("tied"), tie_word_embeddings=True)
    with safe_open(str(base / "model.safetensors"), framework="pt") as handle:
        assert "lm_head.weight" not in set(handle.keys())  # stored once: the case to get right
    return base


TIED_CASES: dict[str, tuple[Callable[[], PeftConfig], bool]] = {  # config, whether the merge must untie
    "plain": (lambda: LoraConfig(r=4, target_modules=["q_proj", "v_proj"]), False),
    "lora_on_embedding": (lambda: LoraConfig(r=4, target_modules=["embed_tokens", "q_proj"]), True),
    "lora_on_head": (lambda: LoraConfig(r=4, target_modules=["lm_head"]), True),
    "head_saved": (lambda: LoraConfig(r=4, target_modules=["q_proj"], modules_to_save=["lm_head"]), True),
    "embedding_saved": (lambda: LoraConfig(r=4, target_modules=["q_proj"], modules_to_save=["embed_tokens"]), True),
}


@pytest.mark.parametrize("case", sorted(TIED_CASES))
def test_tied_embeddings_merge_like_adapter_on_base(case: str, tied_base: Path, tmp_path: Path) -> None:
    make_config, untie = TIED_CASES[case]
    adapter = _make_adapter(tied_base, make_config(), tmp_path / "adapter")
    summary = merge_adapter_streaming(tied_base, adapter, tmp_path / "merged")

    ids = _ids(512)
    # The reference is adapter-on-base, the function that was trained. PEFT's merge_and_unload() gets the
    # untie cases wrong: merging into a tied embedding changes the head as well.
    with_adapter, _ = _peft_merged(tied_base, adapter, ids)
    merged_model = _load(tmp_path / "merged")
    assert (_logits(merged_model, ids) - with_adapter).abs().max() < PARITY
    assert summary["untied_embeddings"] is untie
    config = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert config["tie_word_embeddings"] is not untie
    with safe_open(str(tmp_path / "merged" / "model.safetensors"), framework="pt") as handle:
        assert ("lm_head.weight" in set(handle.keys())) is untie
    heads_shared = merged_model.lm_head.weight.data_ptr() == merged_model.model.embed_tokens.weight.data_ptr()
    assert heads_shared is not untie


def test_trained_biases_and_lora_bias_merge(tmp_path: Path) -> None:
    base = _tiny_llama(tmp_path / "base", attention_bias=True, tie_word_embeddings=False)
    ids = _ids(512)
    configs = {
        "bias_all": LoraConfig(r=4, target_modules=["q_proj", "v_proj"], bias="all"),
        "lora_bias": LoraConfig(r=4, target_modules=["q_proj", "k_proj"], lora_bias=True),
        "ia3_scales_bias": IA3Config(
            target_modules=["k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"]
        ),
    }
    for name, config in configs.items():
        adapter = _make_adapter(base, config, tmp_path / name)
        if name == "bias_all":
            assert any(key.endswith(".bias") for key in load_file(adapter / "adapter_model.safetensors"))
        merge_adapter_streaming(base, adapter, tmp_path / f"{name}-merged")
        with_adapter, peft_merged = _peft_merged(base, adapter, ids)
        merged = _logits(_load(tmp_path / f"{name}-merged"), ids)
        assert (merged - with_adapter).abs().max() < PARITY, name
        assert (merged - peft_merged).abs().max() < PARITY, name


def test_many_shards_with_an_index_load_and_match_one_shard(tmp_path: Path) -> None:
    adapter = _make_adapter(TINY_MODEL_DIR, LORA_CASES["all_linear"](), tmp_path / "adapter")
    merge_adapter_streaming(TINY_MODEL_DIR, adapter, tmp_path / "one")
    many = merge_adapter_streaming(TINY_MODEL_DIR, adapter, tmp_path / "many", max_shard_bytes=2_000_000)

    assert len(many["shards"]) > 3 and many["shards"][0] == f"model-00001-of-{len(many['shards']):05d}.safetensors"
    index = json.loads((tmp_path / "many" / INDEX_FILE).read_text())
    reference = load_file(tmp_path / "one" / "model.safetensors")
    assert set(index["weight_map"]) == set(reference) and set(index["weight_map"].values()) == set(many["shards"])
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in reference.values())
    for shard in many["shards"]:
        with safe_open(str(tmp_path / "many" / shard), framework="pt") as handle:
            keys = list(handle.keys())
            # Only a tensor bigger than the limit (the 2.3 MB embedding) may make its shard bigger.
            assert len(keys) == 1 or sum(reference[k].numel() * reference[k].element_size() for k in keys) <= 2_000_000
            for key in keys:
                assert index["weight_map"][key] == shard
                assert torch.equal(handle.get_tensor(key), reference[key])
    ids = _ids(TINY_VOCAB)
    assert torch.equal(_logits(_load(tmp_path / "many"), ids), _logits(_load(tmp_path / "one"), ids))

    # A sharded model is also a base: the index is followed, tensor by tensor, across its files.
    second = _make_adapter(tmp_path / "many", LORA_CASES["dora"](), tmp_path / "second", seed=5)
    merge_adapter_streaming(tmp_path / "many", second, tmp_path / "again", max_shard_bytes=5_000_000)
    _, peft_merged = _peft_merged(tmp_path / "many", second, ids)
    assert (_logits(_load(tmp_path / "again"), ids) - peft_merged).abs().max() < PARITY


def test_bfloat16_output_rounds_the_fp32_merge_once(tmp_path: Path) -> None:
    adapter = _make_adapter(TINY_MODEL_DIR, LORA_CASES["lora"](), tmp_path / "adapter")
    fp32 = merge_adapter_streaming(TINY_MODEL_DIR, adapter, tmp_path / "fp32")
    bf16 = merge_adapter_streaming(TINY_MODEL_DIR, adapter, tmp_path / "bf16", dtype="bfloat16")

    assert (fp32["dtype"], bf16["dtype"]) == ("float32", "bfloat16")
    exact = load_file(tmp_path / "fp32" / "model.safetensors")
    for key, tensor in load_file(tmp_path / "bf16" / "model.safetensors").items():
        assert tensor.dtype == torch.bfloat16 and torch.equal(tensor, exact[key].to(torch.bfloat16)), key
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "bf16", dtype="auto")
    assert model.dtype == torch.bfloat16


def test_writer_reads_back_bit_exact_like_save_file(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(1)
    tensors = {
        "a.f32": torch.randn(3, 5, generator=generator),
        "b.bf16": torch.randn(7, generator=generator).to(torch.bfloat16),
        "c.f16": torch.randn(2, 2, 3, generator=generator).half(),
        "d.i64": torch.arange(5),
        "e.bool": torch.tensor([True, False, True]),
        "f.scalar": torch.tensor(2.5),
        "g.empty": torch.zeros(0, 4),
    }
    specs = [TensorSpec(name, t.dtype, tuple(t.shape)) for name, t in tensors.items()]
    with ShardWriter(tmp_path / "ours.safetensors", specs) as writer:
        for name, tensor in tensors.items():
            writer.write(name, tensor)
        digest = writer.close()
    verify_shard(tmp_path / "ours.safetensors", specs)
    assert digest == hashlib.sha256((tmp_path / "ours.safetensors").read_bytes()).hexdigest()
    save_file(tensors, tmp_path / "theirs.safetensors")
    ours, theirs = load_file(tmp_path / "ours.safetensors"), load_file(tmp_path / "theirs.safetensors")
    assert ours.keys() == theirs.keys() == tensors.keys()
    for name, tensor in tensors.items():
        assert (
            ours[name].dtype == tensor.dtype and torch.equal(ours[name], tensor) and torch.equal(theirs[name], tensor)
        )

    with pytest.raises(ValueError, match="planned"):
        ShardWriter(tmp_path / "wrong.safetensors", specs[:1]).write("a.f32", torch.zeros(5, 3))


def test_sha256sums_verify_with_sha256sum(tmp_path: Path) -> None:
    adapter = _make_adapter(TINY_MODEL_DIR, LORA_CASES["lora"](), tmp_path / "adapter")
    out = tmp_path / "merged"
    summary = merge_adapter_streaming(TINY_MODEL_DIR, adapter, out, max_shard_bytes=4_000_000)
    sums = write_sha256sums(out, known=summary["sha256"])

    listed = [line.split("  ", 1)[1] for line in sums.read_text().splitlines()]
    assert sorted(listed) == sorted(p.name for p in out.iterdir() if p.name != "SHA256SUMS")
    check = subprocess.run(["sha256sum", "--check", "--strict", "SHA256SUMS"], cwd=out, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    (out / "config.json").write_text("{}")
    assert subprocess.run(["sha256sum", "--check", "SHA256SUMS"], cwd=out, capture_output=True).returncode != 0


def _edit_adapter(
    adapter: Path, config: dict[str, object] | None = None, rename: tuple[str, str] | None = None
) -> None:
    if config:
        path = adapter / "adapter_config.json"
        path.write_text(json.dumps(json.loads(path.read_text()) | config))
    if rename:
        tensors = load_file(adapter / "adapter_model.safetensors")
        tensors = {key.replace(*rename): value for key, value in tensors.items()}
        save_file(tensors, adapter / "adapter_model.safetensors")


def test_unmergeable_adapters_are_refused_with_the_reason(tmp_path: Path) -> None:
    prompt = _make_adapter(
        TINY_MODEL_DIR, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4), tmp_path / "p"
    )
    with pytest.raises(UnmergeableAdapter, match="peft_type PROMPT_TUNING cannot be merged"):
        merge_adapter_streaming(TINY_MODEL_DIR, prompt, tmp_path / "out-p")

    absent = _make_adapter(TINY_MODEL_DIR, LORA_CASES["lora"](), tmp_path / "absent")
    _edit_adapter(absent, rename=("layers.0.self_attn.q_proj", "layers.0.self_attn.qq_proj"))
    with pytest.raises(UnmergeableAdapter, match=r"the base has no model\.layers\.0\.self_attn\.qq_proj\.weight"):
        merge_adapter_streaming(TINY_MODEL_DIR, absent, tmp_path / "out-absent")

    # Exact names only: a key that merely contains a base module's name is not that module.
    prefixed = _make_adapter(TINY_MODEL_DIR, LORA_CASES["lora"](), tmp_path / "prefixed")
    _edit_adapter(prefixed, rename=("base_model.model.model.", "base_model.model.model.model."))
    with pytest.raises(UnmergeableAdapter, match=r"the base has no model\.model\.layers"):
        merge_adapter_streaming(TINY_MODEL_DIR, prefixed, tmp_path / "out-prefixed")

    conv1d = _make_adapter(TINY_MODEL_DIR, LORA_CASES["lora"](), tmp_path / "conv1d")
    _edit_adapter(conv1d, config={"fan_in_fan_out": True})
    with pytest.raises(UnmergeableAdapter, match="fan_in_fan_out=True: it stores weights transposed"):
        merge_adapter_streaming(TINY_MODEL_DIR, conv1d, tmp_path / "out-conv1d")
    assert not any((tmp_path / name).exists() for name in ("out-p", "out-absent", "out-prefixed", "out-conv1d"))
